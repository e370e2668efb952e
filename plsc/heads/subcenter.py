"""Sub-center Partial FC: K centres per class, a class scores by its closest one (Deng et al., ECCV 2020).

Sub-center ArcFace ("Boosting Face Recognition by Large-Scale Noisy Web Faces") gives every class
K sub-centres; a sample's cosine to a class is the maximum over that class's sub-centres, and the
margin loss (ArcFace, MarginLoss) is applied to that cosine unchanged. Clean faces of a class
gather around one dominant sub-centre, noisy ones drift to the others (see subcenter_clean.py).

Storage: row r of this rank's shard holds class r's K sub-centres side by side, [C_local, K*D].
So everything that works per class row works unchanged: Partial FC samples classes and takes all
K centres of a sampled class together, the sparse optimizer updates whole rows, and checkpoints
slice and reshard rows by class exactly as for PartialFC.
"""
import numpy as np
from paddle.autograd import PyLayer

from plsc import fast_cpu
from plsc.errors import PlscError
from plsc.heads.partial_fc import PartialFC, cosine_logits
from plsc.registry import HEADS

DEFAULT_NUM_SUBCENTERS = 3  # the paper's K


def subcenter_cosines(embeddings, subcenter_rows, num_subcenters, workspace=None, rows_are_copy=False):
    """Cosines of every embedding with every sub-centre: [N, D] x [S, K*D] -> [N, S*K] (class-major)."""
    rows, embedding_size = subcenter_rows.shape[0], embeddings.shape[1]
    centers = subcenter_rows.reshape([rows * num_subcenters, embedding_size])
    return cosine_logits(embeddings, centers, workspace, rows_are_copy)


def best_subcenter(cosines, num_subcenters, workspace=None):
    """Each class's best sub-centre cosine: [N, S*K] -> [N, S]; the gradient reaches that sub-centre only."""
    if workspace is not None and fast_cpu.applies(cosines):
        return BestSubcenter.apply(cosines, num_subcenters, workspace)
    return cosines.reshape([cosines.shape[0], -1, num_subcenters]).max(axis=2)


class BestSubcenter(PyLayer):
    """best_subcenter's CPU kernel (plsc.fast_cpu): Paddle's max backward over [N, S, K] makes several
    [N, S, K] masks; here the backward writes each gradient into its argmax's slot of one array."""

    @staticmethod
    def forward(ctx, cosines, num_subcenters, workspace):
        values = fast_cpu.as_numpy(cosines)
        per_class = values.reshape([values.shape[0], -1, num_subcenters])
        # K elementwise passes over [N, S] views: numpy's argmax / max over a length-K last axis
        # loop per element and took ~0.7 s at 128 x 100k x 3.
        best_values = workspace.array("best_cosines", per_class.shape[:2])
        best = workspace.array("best_subcenter", per_class.shape[:2], dtype=np.int8)
        np.copyto(best_values, per_class[..., 0])
        best.fill(0)
        for k in range(1, num_subcenters):
            better = per_class[..., k] > best_values
            np.copyto(best_values, per_class[..., k], where=better)
            best[better] = k
        ctx.state = (best, values.shape, num_subcenters, workspace)
        return fast_cpu.as_tensor(best_values)

    @staticmethod
    def backward(ctx, grad_best):
        best, shape, num_subcenters, workspace = ctx.state
        incoming = fast_cpu.as_numpy(grad_best)
        grad = workspace.array("subcenter_grad", shape)
        per_class = grad.reshape([shape[0], -1, num_subcenters])
        for k in range(num_subcenters):
            np.multiply(incoming, best == k, out=per_class[..., k])
        return fast_cpu.as_tensor(grad)


@HEADS.register("SubCenterPartialFC")
class SubCenterPartialFC(PartialFC):
    """PartialFC whose classes have `num_subcenters` centres each; a class's logit is its best cosine.

    forward(embeddings [n_local, D], labels [n_local]) -> (cos_logits [N_global, S_local], local_labels)
    as PartialFC; `weight` is [C_local, K*D] (sub-centres of a class side by side).
    """

    def __init__(self, num_classes, embedding_size, sample_ratio=1.0, model_parallel=False, seed=2022,
                 num_subcenters=DEFAULT_NUM_SUBCENTERS):
        if num_subcenters < 1:
            raise PlscError(f"Model.pfc_config.num_subcenters must be >= 1, got {num_subcenters}")
        if embedding_size < 1:
            raise PlscError(f"Model.num_features must be >= 1, got {embedding_size}")
        # The table is drawn as C rows of K*D values from N(0, 0.01): the same distribution as K*C
        # separate centres, and independent of the world size like PartialFC's.
        super().__init__(num_classes, num_subcenters * embedding_size, sample_ratio=sample_ratio,
                         model_parallel=model_parallel, seed=seed)
        self.embedding_size = embedding_size
        self.num_subcenters = num_subcenters

    def class_logits(self, embeddings_global, sampled_weight):
        """Max over each sampled class's sub-centres: [N, D] x [S, K*D] -> [N, S]."""
        # The max routes each sample's gradient to its closest sub-centre only, as in the paper.
        cosines = subcenter_cosines(embeddings_global, sampled_weight, self.num_subcenters, self.workspace,
                                    self.rows_are_copies)
        return best_subcenter(cosines, self.num_subcenters, self.workspace)
