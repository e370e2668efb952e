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
from plsc.errors import PlscError
from plsc.heads.partial_fc import PartialFC, cosine_logits
from plsc.registry import HEADS

DEFAULT_NUM_SUBCENTERS = 3  # the paper's K


def subcenter_cosines(embeddings, subcenter_rows, num_subcenters, workspace=None, rows_are_copy=False):
    """Cosines of every embedding with every sub-centre: [N, D] x [S, K*D] -> [N, S, K]."""
    rows, embedding_size = subcenter_rows.shape[0], embeddings.shape[1]
    centers = subcenter_rows.reshape([rows * num_subcenters, embedding_size])
    return cosine_logits(embeddings, centers, workspace, rows_are_copy).reshape([embeddings.shape[0], rows, num_subcenters])


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
        return subcenter_cosines(embeddings_global, sampled_weight, self.num_subcenters, self.workspace,
                                 self.rows_are_copies).max(axis=2)
