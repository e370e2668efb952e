"""CurricularFace (Huang et al., CVPR 2020): ArcFace positives, hard negatives re-weighted by a curriculum.

Target: s * cos(theta_y + m) (ArcFace, kept monotone past theta_y + m = pi). A negative j is hard
when its cosine beats that margined target, cos_j > cos(theta_y + m); its logit becomes
s * cos_j * (t + cos_j) (the paper's N(t, cos_j)), others stay s * cos_j. The curriculum t is an
exponential moving average of the mean target cosine of the global batch, t <- 0.01 * r +
0.99 * t with t = 0 at the start: early on (t ~ 0) hard negatives are down-weighted (easy samples
first), later (t -> 1) up-weighted. As in the paper's implementation, t is updated with the
current batch before it is used, and receives no gradient. A batch whose mean target cosine is not
finite (an fp16 overflow upstream) leaves t as it was: one NaN would otherwise stay in t for good.
"""
import paddle

from plsc.errors import PlscError
from plsc.loss.target import additive_angular_target, ema_update_, shared_target_cosines, target_cosines
from plsc.loss.target_softmax import TargetSoftmaxLoss
from plsc.registry import LOSSES

T_MOMENTUM = 0.01  # the paper's alpha = 0.99 on the old value


@LOSSES.register("CurricularFace")
class CurricularFace(TargetSoftmaxLoss):
    """(cos_logits [N, S_local], labels_local [N]) -> scalar; keeps the curriculum t as a buffer.

    model_parallel: None follows Model.pfc_config.model_parallel (set by CombinedLoss.attach).
    """

    def __init__(self, m=0.5, s=64.0, model_parallel=None):
        if m < 0 or s <= 0:
            raise PlscError(f"CurricularFace: m ({m}) must be >= 0 and s ({s}) > 0")
        super().__init__(s, model_parallel)
        self.m = float(m)
        self.register_buffer("t", paddle.zeros([1], dtype="float32"))

    def forward(self, cos_logits, labels_local):
        cos = cos_logits.astype("float32")
        cos_target, has_target = target_cosines(cos, labels_local)
        shared_target = shared_target_cosines(cos_target, has_target, bool(self.model_parallel))
        if self.training:
            batch_t = shared_target.mean().reshape([1])
            # Decided on the device, no host sync; every rank sees the same shared target cosines.
            batch_t = paddle.where(paddle.isfinite(batch_t), batch_t, self.t)
            ema_update_(self.t, batch_t, T_MOMENTUM)
        target_margined = additive_angular_target(shared_target, self.m)
        # A negative is hard when it beats its row's margined target (shared by all ranks, no gradient).
        return self.cross_entropy(cos, labels_local, lambda cos_target: additive_angular_target(cos_target, self.m),
                                  hard_negatives=(target_margined.detach(), self.t.detach()))
