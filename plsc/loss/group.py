"""GroupFace's self-distributed grouping loss (Kim et al., CVPR 2020, section 3.2).

The group decision network gives p(G_k | x) for K latent groups. Trained on its own argmax it
would collapse onto a few groups, so the label of each sample is taken after removing each
group's expected probability over the batch (the paper's expectation-normalised probability,
whose argmax is that of p(G_k | x) - E_x[p(G_k | x)]): a group already over-used by the batch
is less likely to win, which spreads samples evenly over the groups without annotations. The
loss is the softmax cross-entropy of the group logits against those labels; the paper weights it
by lambda = 0.1 (this entry's `weight`).

The backbone is data-parallel: each rank holds the logits of its own rows. The expectation is
taken over the global batch (an all-reduce), and the loss is summed over ranks.
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from plsc import distributed
from plsc.registry import LOSSES


@paddle.no_grad()
def self_distributed_labels(group_logits):
    """argmax_k p(G_k|x) - E[p(G_k|x)] over the global batch: [n, K] -> [n] int64 (no gradient)."""
    probabilities = F.softmax(group_logits.astype("float32"), axis=1)
    totals = distributed.all_reduce(probabilities.sum(axis=0, keepdim=True), "sum")
    count = distributed.all_reduce(paddle.full([1], probabilities.shape[0], dtype="float32"), "sum")
    return paddle.argmax(probabilities - totals / count, axis=1)


@LOSSES.register("GroupLoss")
class GroupLoss(nn.Layer):
    """(group_logits [n, K] of this rank's rows) -> scalar mean CE over the global batch."""

    inputs = ("group_logits",)

    def forward(self, group_logits):
        logits = group_logits.astype("float32")
        labels = self_distributed_labels(logits)
        local_sum = F.cross_entropy(logits, labels.reshape([-1, 1]), reduction="sum")
        global_batch_size = distributed.all_reduce(paddle.full([1], logits.shape[0], dtype="float32"), "sum")
        return distributed.all_reduce_sum_with_grad(local_sum / global_batch_size).reshape([])
