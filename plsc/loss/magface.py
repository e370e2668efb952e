"""MagFace (Meng et al., CVPR 2021): the embedding's magnitude sets the margin and becomes a quality score.

With a = ||x|| clipped to [l_a, u_a] the margin grows linearly from l_m to u_m,
    m(a) = l_m + (u_m - l_m) * (a - l_a) / (u_a - l_a),
the target logit is the ArcFace one with that margin, s * cos(theta_y + m(a)) (monotone past pi),
and the regulariser g(a) = 1/a + a / u_a^2, weighted by lambda_g, pulls magnitudes up so that
confident (easy, high-quality) faces end with large a. Gradients flow into a through both the
margin and g, as in the paper: that interplay is what ties a to quality.

The backbone's output is never normalised before the head in plsc (the class layer normalises
inside its cosine), so nothing changes in the model: the same backbone is evaluated and exported.
Verification and IJB-C L2-normalise embeddings anyway; the un-normalised norm of an exported
embedding is MagFace's quality score.
"""
import paddle

from plsc import distributed
from plsc.errors import PlscError
from plsc.loss.target import additive_angular_target
from plsc.loss.target_softmax import TargetSoftmaxLoss
from plsc.registry import LOSSES


def magnitude_margin(magnitude, l_a, u_a, l_m, u_m):
    """m(a) = l_m + (u_m - l_m) (a - l_a) / (u_a - l_a) for a already clipped to [l_a, u_a]: [...] -> [...]."""
    return l_m + (u_m - l_m) / (u_a - l_a) * (magnitude - l_a)


def magnitude_regularizer(magnitude, u_a):
    """g(a) = 1/a + a / u_a^2 (convex, minimal at a = u_a): [...] -> [...]."""
    return 1.0 / magnitude + magnitude / (u_a * u_a)


@LOSSES.register("MagFace")
class MagFace(TargetSoftmaxLoss):
    """Softmax CE with magnitude-aware margin + lambda_g * mean g(a): scalar.

    inputs: cos_logits [N, S_local], labels_local [N], embedding_norms_global [N] (margin),
    embedding_norms [n] (this rank's rows, for g). Defaults are the paper's (l_a 10, u_a 110,
    l_m 0.45, u_m 0.8, lambda_g 35, s 64) for 512-d embeddings. model_parallel: None follows the class layer.
    """

    inputs = ("cos_logits", "labels_local", "embedding_norms_global", "embedding_norms")

    def __init__(self, l_a=10.0, u_a=110.0, l_m=0.45, u_m=0.8, lambda_g=35.0, s=64.0, model_parallel=None):
        if not 0 < l_a < u_a or not 0 <= l_m <= u_m or lambda_g < 0 or s <= 0:
            raise PlscError(f"MagFace: need 0 < l_a < u_a, 0 <= l_m <= u_m, lambda_g >= 0 and s > 0, got "
                            f"l_a={l_a}, u_a={u_a}, l_m={l_m}, u_m={u_m}, lambda_g={lambda_g}, s={s}")
        self.l_a, self.u_a, self.l_m, self.u_m = float(l_a), float(u_a), float(l_m), float(u_m)
        super().__init__(s, model_parallel)
        self.lambda_g = float(lambda_g)

    def forward(self, cos_logits, labels_local, embedding_norms_global, embedding_norms):
        cos = cos_logits.astype("float32")
        magnitude = paddle.clip(embedding_norms_global.astype("float32"), self.l_a, self.u_a).reshape([-1, 1])
        margin = magnitude_margin(magnitude, self.l_a, self.u_a, self.l_m, self.u_m)
        # Its kept rows (per-group logging) are this softmax part only, not the regulariser g.
        classification = self.cross_entropy(cos, labels_local,
                                            lambda cos_target: additive_angular_target(cos_target, margin))

        # g over this rank's rows, scaled to the global mean and summed over ranks: each rank's
        # backbone gets the gradient of its own rows once (see plsc.loss.inputs).
        local_magnitude = paddle.clip(embedding_norms.astype("float32"), self.l_a, self.u_a)
        regularizer = magnitude_regularizer(local_magnitude, self.u_a).sum() / cos.shape[0]
        return classification + self.lambda_g * distributed.all_reduce_sum_with_grad(regularizer)
