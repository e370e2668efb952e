"""L2-softmax (Ranjan et al., 2017): softmax over scaled cosines, s * cos(theta_j), with no margin.

Ranjan et al. constrain the feature to an L2 ball of radius alpha (here s) before an ordinary
softmax layer. In a Partial FC class layer the centres are normalised too (NormFace's form), so
the logits are s * cos; the paper's lower bound on the scale for C classes and target
probability p is s >= log(p (C - 2) / (1 - p)), about 14 for 100k classes at p = 0.9.
"""

from plsc.errors import PlscError
from plsc.loss.target_softmax import TargetSoftmaxLoss
from plsc.registry import LOSSES


@LOSSES.register("L2Softmax")
class L2Softmax(TargetSoftmaxLoss):
    """(cos_logits [N, S_local], labels_local [N]) -> scalar softmax CE of s * cos.

    model_parallel: None follows Model.pfc_config.model_parallel.
    """

    def __init__(self, s=64.0, model_parallel=None):
        if s <= 0:
            raise PlscError(f"L2Softmax: s ({s}) must be > 0")
        super().__init__(s, model_parallel)

    def forward(self, cos_logits, labels_local):
        return self.cross_entropy(cos_logits.astype("float32"), labels_local)
