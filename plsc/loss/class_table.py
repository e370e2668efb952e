"""A per-class table that a loss owns, sharded by class like the class layer and updated row-sparsely.

Rank r holds the rows of the classes [class_start, class_start + num_local_classes) of the head,
so a table and the class layer always agree on which rank owns a class. Each step the loss
gathers the rows of the classes present in the global batch into a fresh leaf
(`sampled_weight`); backward fills its gradient and the training optimizer updates those rows
only (`FaceOptimizer` treats the table as one more sparse head: `weight`, `sampled_index`,
`sampled_weight`, `model_parallel`). Used by CenterLoss for its class centres.
"""
import numpy as np
import paddle
import paddle.nn as nn
from paddle.utils import unique_name

from plsc import distributed


def batch_rows(labels_global, class_start, num_local_classes):
    """Rows of this shard used by the batch and each sample's position among them.

    labels_global: [N] int64 class ids -> (rows [P] sorted unique int64, columns [N] int64 index into
    rows, or -1 when the sample's class is on another rank).
    """
    shard_labels = np.asarray(labels_global, dtype=np.int64) - class_start
    here = (shard_labels >= 0) & (shard_labels < num_local_classes)
    rows = np.unique(shard_labels[here])
    columns = np.full(shard_labels.shape, -1, dtype=np.int64)
    columns[here] = np.searchsorted(rows, shard_labels[here])
    return rows, columns


class ClassRowTable:
    """[C_local, width] float32 rows of this rank's classes, zero-initialised, with sparse-update bookkeeping."""

    def __init__(self, name, num_classes, class_start, num_local_classes, width, model_parallel):
        world, rank = distributed.world_size(), distributed.rank()
        self.num_classes = num_classes
        self.class_start = class_start
        self.num_local_classes = num_local_classes
        self.model_parallel = model_parallel
        # 'dist' in the name: PLSC's no_clip_list ['dist'] treats it like the sharded class layer.
        parameter_name = f"{name}_dist_rank_{rank:05d}" if model_parallel else name
        self.weight = paddle.create_parameter(
            [num_local_classes, width], "float32", name=unique_name.generate(parameter_name) + ".w",
            default_initializer=nn.initializer.Constant(0.0))
        self.weight.stop_gradient = True  # moved by the sparse optimizer, never by autograd
        self.weight.is_distributed = model_parallel and world > 1
        self._last_step = {"sampled_index": None, "sampled_weight": None}

    @property
    def sampled_index(self):
        """Rows used by the last step: [P] int64, sorted and unique (possibly empty)."""
        return self._last_step["sampled_index"]

    @property
    def sampled_weight(self):
        """Leaf copy of those rows, [P, width]; backward fills its .grad."""
        return self._last_step["sampled_weight"]

    def gather_batch_rows(self, labels_global):
        """This step's rows of the batch's classes as a leaf with gradient, and each sample's column.

        labels_global: [N] int64 -> (rows [P, width] float32, columns [N] int64, -1 = class on another rank).
        """
        index, columns = batch_rows(labels_global.numpy(), self.class_start, self.num_local_classes)
        index = paddle.to_tensor(index, dtype="int64")
        rows = paddle.gather(self.weight, index)
        rows.stop_gradient = False
        self._last_step.update(sampled_index=index, sampled_weight=rows)
        return rows, paddle.to_tensor(columns, dtype="int64")
