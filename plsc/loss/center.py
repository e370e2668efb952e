"""Center loss (Wen et al., ECCV 2016): pull each embedding towards a learned centre of its class.

    L_C = 1 / (2 N) * sum_i || x_i - c_{y_i} ||^2  over the global batch of N samples,
an auxiliary term added to a softmax loss with its own `weight` (the paper's lambda) in Loss.Train.
The centres live in a ClassTable sharded like the class layer; each rank scores the samples
whose class it owns, and the partial sums are added across ranks. The centres are moved by the
training optimizer's row-sparse update (only the classes of the batch), like the class centres
of Partial FC, instead of the paper's separate rate alpha: the gradient w.r.t. c_j is
(c_j - mean of its samples) * n_j / N, so the LR schedule and momentum apply to them too. The
centres get no weight decay (their table says so to the optimizer): with it a centre settles where
the pull of its samples balances the decay, short of the class mean the paper defines.

`normalize` (default True) applies the loss to the L2-normalised embedding: margin softmax losses
train directions on the unit sphere, and a centre term on raw features would fight over the
magnitude instead (Wen et al. used raw features with a plain softmax: normalize: False).
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from plsc import distributed
from plsc.heads.class_table import ClassTable
from plsc.registry import LOSSES


def center_loss_partial_sum(features, centers, columns, global_batch_size):
    """sum over samples with a centre here of ||x_i - c||^2 / (2 N): [N, D], [P, D], [N] -> scalar.

    columns: [N] int64 row of each sample's centre in `centers`, -1 when it lives on another rank.
    """
    if centers.shape[0] == 0:
        # No class of the batch on this shard: contribute 0, but keep the (empty) rows in the graph
        # so every rank hands the optimizer a gradient for this table.
        return 0.0 * (features.sum() + centers.sum())
    owned = (columns >= 0).astype(features.dtype).unsqueeze(1)
    difference = (features - paddle.gather(centers, columns.clip(min=0))) * owned
    return 0.5 * paddle.sum(difference * difference) / global_batch_size


@LOSSES.register("CenterLoss")
class CenterLoss(nn.Layer):
    """(embeddings_global [N, D], labels_global [N]) -> scalar; centres in `table` after `attach(head)`."""

    inputs = ("embeddings_global", "labels_global")

    def __init__(self, normalize=True):
        super().__init__()
        self.normalize = bool(normalize)
        self.table = None

    @property
    def model_parallel(self):
        return self.table is not None and self.table.model_parallel

    def attach(self, head):
        """Create the centre table with the class layer's sharding; returns it (a sparse table for the optimizer)."""
        self.table = ClassTable("centerloss", head.num_classes, head.embedding_size, head.model_parallel,
                                weight_decay=False)
        return [self.table]

    def forward(self, embeddings_global, labels_global):
        if self.table is None:
            raise RuntimeError("CenterLoss.attach(head) must run before the first step")
        features = embeddings_global.astype("float32")
        if self.normalize:
            features = F.normalize(features, axis=1)
        centers, columns = self.table.gather_batch_rows(labels_global)
        partial = center_loss_partial_sum(features, centers, columns, features.shape[0])
        # Sharded: each sample's centre is on one rank, so the partial sums add up to the loss.
        return distributed.all_reduce_sum_with_grad(partial) if self.table.model_parallel else partial
