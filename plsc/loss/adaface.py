"""AdaFace (Kim et al., CVPR 2022): the margin adapts to image quality, read from the feature norm.

With ||z|| the embedding norm (clipped to [0.001, 100]; no gradient) and mu, sigma running
averages of the batch's norm mean and standard deviation (t_alpha = 0.01, starting from the
paper code's 20 and 100), the normalised quality is
    z_hat = clip(h * (||z|| - mu) / (sigma + eps), -1, 1),
and the target logit
    s * (cos(clip(theta_y + g_angle, eps, pi - eps)) - g_add),  g_angle = -m * z_hat,  g_add = m + m * z_hat.
Low-quality images (z_hat -> -1) get an ArcFace-like angular margin m, high-quality ones
(z_hat -> 1) a CosFace-like additive 2m with a negative angular shift. Non-target logits are s * cos.
The statistics are of the global batch: every rank sees all norms, so all ranks agree. They are
updated with the current batch before use, as in the paper's implementation; a batch with a
non-finite norm (an fp16 overflow) leaves both as they were, since one NaN would stay in them for good.
"""
import math

import paddle

from plsc.errors import PlscError
from plsc.loss.target import ema_update_
from plsc.loss.target_softmax import TargetSoftmaxLoss
from plsc.registry import LOSSES

NORM_CLIP = (0.001, 100.0)  # the paper's safe range of feature norms
EPS = 1e-3  # the paper's eps: keeps cos off +-1 before acos, theta off 0 and pi, sigma off 0
INITIAL_NORM_MEAN = 20.0  # running statistics' starting values in the paper's implementation
INITIAL_NORM_STD = 100.0


def batch_norm_statistics(norms):
    """Mean and (unbiased, as the paper's torch.std) standard deviation of the norms: [N] -> ([1], [1])."""
    count = norms.shape[0]
    mean = norms.mean().reshape([1])
    if count < 2:
        return mean, paddle.zeros([1], dtype=norms.dtype)
    # Written out: paddle.std promotes dtypes internally and logs a warning every step.
    centered = norms - mean
    return mean, paddle.sqrt(paddle.sum(centered * centered) / (count - 1)).reshape([1])


def margin_scaler(norms, norm_mean, norm_std, h):
    """z_hat = clip(h * (norm - mu) / (sigma + eps), -1, 1): [N], [1], [1] -> [N]."""
    return paddle.clip(h * (norms - norm_mean) / (norm_std + EPS), -1.0, 1.0)


def adaface_target(cos_target, scaler, m):
    """cos(clip(theta + g_angle, eps, pi - eps)) - g_add of each row: [N, 1], [N, 1] -> [N, 1]."""
    theta = paddle.acos(paddle.clip(cos_target, -1.0 + EPS, 1.0 - EPS))
    theta_shifted = paddle.clip(theta - m * scaler, EPS, math.pi - EPS)
    return paddle.cos(theta_shifted) - (m + m * scaler)


@LOSSES.register("AdaFace")
class AdaFace(TargetSoftmaxLoss):
    """(cos_logits [N, S_local], labels_local [N], embedding_norms_global [N]) -> scalar.

    Keeps the running norm mean and std as buffers. model_parallel: None follows the class layer.
    """

    inputs = ("cos_logits", "labels_local", "embedding_norms_global")

    def __init__(self, m=0.4, h=0.333, s=64.0, t_alpha=0.01, model_parallel=None):
        if m < 0 or s <= 0 or h < 0 or not 0.0 < t_alpha <= 1.0:
            raise PlscError(f"AdaFace: need m >= 0, h >= 0, s > 0 and t_alpha in (0, 1], got "
                            f"m={m}, h={h}, s={s}, t_alpha={t_alpha}")
        super().__init__(s, model_parallel)
        self.m, self.h, self.t_alpha = float(m), float(h), float(t_alpha)
        self.register_buffer("norm_mean", paddle.full([1], INITIAL_NORM_MEAN, dtype="float32"))
        self.register_buffer("norm_std", paddle.full([1], INITIAL_NORM_STD, dtype="float32"))

    def forward(self, cos_logits, labels_local, embedding_norms_global):
        cos = cos_logits.astype("float32")
        # The margin reads the norm as a quality signal only: no gradient through it (paper).
        norms = paddle.clip(embedding_norms_global.detach().astype("float32"), *NORM_CLIP)
        if self.training:
            batch_mean, batch_std = batch_norm_statistics(norms)
            finite = paddle.isfinite(batch_mean) & paddle.isfinite(batch_std)
            batch_mean = paddle.where(finite, batch_mean, self.norm_mean)
            batch_std = paddle.where(finite, batch_std, self.norm_std)
            ema_update_(self.norm_mean, batch_mean, self.t_alpha)
            ema_update_(self.norm_std, batch_std, self.t_alpha)
        scaler = margin_scaler(norms, self.norm_mean, self.norm_std, self.h).reshape([-1, 1])
        return self.cross_entropy(cos, labels_local, lambda cos_target: adaface_target(cos_target, scaler, self.m))
