"""Combined margin softmax cross-entropy (SphereFace m1, ArcFace m2, CosFace m3, scale s).

The logits may be sharded by class across ranks (model parallel): the softmax normaliser and
the target logit are then assembled with collectives, so no rank ever holds a full row.
"""
import math

import paddle
import paddle.nn.functional as F

from plsc import distributed
from plsc.errors import PlscError
from plsc.loss.target import target_cosines, write_targets
from plsc.loss.target_softmax import TargetSoftmaxLoss
from plsc.registry import LOSSES

# acos has an infinite derivative at +-1; clipping keeps the target gradient finite.
ACOS_CLIP_EPS = 1e-7


def margined_target_cosine(cos_target, m1, m2, m3):
    """cos(m1*theta + m2) - m3 elementwise, kept monotone beyond m1*theta + m2 = pi: [...] -> [...].

    Past theta_max = (pi - m2) / m1 the cosine of the margined angle would rise again and reward
    a worse target. There we continue linearly in cos(theta): cos(theta) - (1 + cos(theta_max)),
    which meets the arc at -1 (continuous), keeps decreasing in theta and has slope 1 in
    cos(theta). This is the ArcFace paper's `cos(theta) - m2*sin(m2)` fallback (insightface
    arcface_torch) shifted so that it does not jump down at the threshold (by ~0.12 for m2 = 0.5).
    Monotone for m1 > 0 and m2 >= 0.
    """
    if m1 == 1.0 and m2 == 0.0:
        # CosFace needs no angle: exact value and gradient even at |cos| = 1.
        return cos_target - m3
    theta = paddle.acos(paddle.clip(cos_target, -1.0 + ACOS_CLIP_EPS, 1.0 - ACOS_CLIP_EPS))
    margined = paddle.cos(m1 * theta + m2)
    theta_max = (math.pi - m2) / m1
    if theta_max < math.pi:
        fallback = cos_target - (1.0 + math.cos(theta_max))
        margined = paddle.where(theta <= theta_max, margined, fallback)
    return margined - m3


def margin_logits(cos, labels, m1, m2, m3, s):
    """Scaled logits with the combined margin on each row's target column.

    cos: [N, S] float cosines, labels: [N] int64 column of the target, -1 when the row's target is
    not among these columns -> [N, S]: s * (cos(m1*theta + m2) - m3) on the target, s * cos elsewhere.
    """
    cos_target, has_target = target_cosines(cos, labels)
    return s * write_targets(cos, labels, margined_target_cosine(cos_target, m1, m2, m3), has_target)


def sampled_global_labels(labels_local, num_local_columns):
    """Labels as columns of the concatenation of all ranks' logits (rank order): [N] int64 -> [N] int64.

    labels_local: [N] column on this rank or -1; every row's target is on exactly one rank.
    """
    offsets = distributed.all_gather(paddle.to_tensor([num_local_columns], dtype="int64")).numpy()
    offset = int(offsets[:distributed.rank()].sum())
    labels_local = labels_local.reshape([-1])
    global_labels = paddle.where(labels_local >= 0, labels_local + offset, paddle.full_like(labels_local, -1))
    return distributed.all_reduce(global_labels, "max")


@LOSSES.register("MarginLoss")
class MarginLoss(TargetSoftmaxLoss):
    """Combined margin softmax CE: (cos_logits [N, S_local], labels_local [N] int64) -> scalar float32."""

    def __init__(self, m1=1.0, m2=0.5, m3=0.0, s=64.0, model_parallel=False):
        if m1 <= 0 or s <= 0:
            raise PlscError(f"MarginLoss: m1 ({m1}) and s ({s}) must be > 0")
        if m2 < 0:
            raise PlscError(f"MarginLoss: m2 ({m2}) must be >= 0 (a negative angular margin is not monotone)")
        super().__init__(s, model_parallel)
        self.m1, self.m2, self.m3 = float(m1), float(m2), float(m3)

    @property
    def use_fused_ops(self):
        """Paddle's fused margin_cross_entropy has GPU kernels only; the composed path is the reference."""
        return paddle.device.get_device().startswith("gpu")

    def forward(self, cos_logits, labels_local):
        cos = cos_logits if cos_logits.dtype == paddle.float32 else cos_logits.astype("float32")
        if self.use_fused_ops and self.model_parallel:
            return self._fused_loss(cos, labels_local)
        return self.cross_entropy(
            cos, labels_local, lambda cos_target: margined_target_cosine(cos_target, self.m1, self.m2, self.m3))

    def _fused_loss(self, cos, labels_local):
        # Paddle's kernel applies cos(m1*theta + m2) without the monotone continuation above, so
        # it differs from the reference only for targets with m1*theta + m2 > pi (rare, and only
        # early in training). It wants each row's label as a column of all ranks' logits.
        # group=False: a single process has no communicator; None: the default (all ranks) group.
        group = None if distributed.world_size() > 1 else False
        labels = sampled_global_labels(labels_local, cos.shape[1])
        rows = F.margin_cross_entropy(cos, labels, margin1=self.m1, margin2=self.m2, margin3=self.m3,
                                      scale=self.s, group=group, reduction=None).reshape([-1])
        self.kept_rows.keep(rows.detach())
        return rows.mean()
