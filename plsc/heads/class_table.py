"""A per-class table sharded by class across ranks and updated row-sparsely: the one type behind the
Partial FC centres, the Sub-center centres and CenterLoss's centres.

Layout: with `model_parallel`, rank r holds the rows of classes [class_start, class_start +
num_local_classes) (PLSC's rule: the first C % W ranks hold one extra class); without it every
rank holds all C rows (replicated). Rows are never trained by autograd: each step the owner puts
the rows it used into a fresh leaf (`sampled_weight`, rows `sampled_index` of the shard), backward
fills its gradient, and the sparse optimizer writes the update back into those rows only.

Checkpoints store every table with its `layout()` (class count, width, world size, whether
sharded, each rank's class range). `reshard_pieces` says which saved rows make this rank's rows
under any other layout (1 <-> N ranks, sharded <-> replicated), so a run resumes on any number of
ranks with exactly the saved rows.
"""
import numpy as np
import paddle
import paddle.nn as nn
from paddle.utils import unique_name

from plsc import distributed
from plsc.errors import PlscError

INIT_STD = 0.01  # PLSC and arcface_torch draw class centres from N(0, 0.01)
# Rows generated per seeded block: a shard draws only the blocks it overlaps, so no rank ever
# materialises the full table, and the rows do not depend on the world size.
INIT_BLOCK_ROWS = 4096


def shard_range(num_classes, world_size, rank):
    """(class_start, num_local_classes) of `rank`: the first C % W ranks hold one extra class."""
    base, extra = divmod(num_classes, world_size)
    return base * rank + min(rank, extra), base + (1 if rank < extra else 0)


def class_center_blocks(seed, start, stop, width):
    """Rows [start, stop) of the full N(0, INIT_STD) table of `seed`, in pieces.

    Yields (offset from start, rows [n, width] float32) in order; each piece is at most INIT_BLOCK_ROWS rows.
    """
    for block in range(start // INIT_BLOCK_ROWS, (stop - 1) // INIT_BLOCK_ROWS + 1):
        # spawn_key keeps these streams apart from the sampling generator seeded with `seed + rank`.
        block_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(block,)))
        block_rows = block_rng.standard_normal((INIT_BLOCK_ROWS, width), dtype=np.float32)
        block_start = block * INIT_BLOCK_ROWS
        first, last = max(start, block_start), min(stop, block_start + INIT_BLOCK_ROWS)
        yield first - start, block_rows[first - block_start:last - block_start] * INIT_STD


def init_class_centers(seed, start, stop, width):
    """Rows [start, stop) of the full N(0, INIT_STD) table of `seed`: [stop-start, width] float32."""
    rows = np.empty((stop - start, width), dtype=np.float32)
    for offset, piece in class_center_blocks(seed, start, stop, width):
        rows[offset:offset + len(piece)] = piece
    return rows


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


class ClassTable(nn.Layer):
    """[C_local, width] float32 rows of this rank's classes with sparse-update bookkeeping.

    init_seed: None for zeros (CenterLoss), else rows drawn from N(0, INIT_STD) by `class_center_blocks`.
    weight_decay: False exempts the rows from the optimizer's weight decay (CenterLoss: a centre is
    its class mean, which decay would pull towards 0).
    """

    def __init__(self, name, num_classes, width, model_parallel, init_seed=None, weight_decay=True):
        super().__init__()
        self.weight_decay = bool(weight_decay)
        world, rank = distributed.world_size(), distributed.rank()
        if num_classes < 1 or width < 1:
            raise PlscError(f"Model.class_num ({num_classes}) and the table width ({width}) must be >= 1")
        if model_parallel and num_classes < world:
            raise PlscError(f"Model.class_num ({num_classes}) is smaller than the number of ranks ({world}); "
                            "every rank needs at least one class with model_parallel")
        self.num_classes = num_classes
        self.width = width
        self.model_parallel = bool(model_parallel)
        self.class_start, self.num_local_classes = (
            shard_range(num_classes, world, rank) if model_parallel else (0, num_classes))
        # PLSC's gradient clipping skips parameters whose name contains 'dist' (no_clip_list).
        parameter_name = f"{name}_dist_rank_{rank:05d}" if model_parallel else name
        self.weight = self.create_parameter(
            [self.num_local_classes, width], attr=paddle.ParamAttr(name=unique_name.generate(parameter_name) + ".w"),
            default_initializer=nn.initializer.Constant(0.0))
        # Updated only by the sparse optimizer through sampled_weight.grad; never all-reduced.
        self.weight.stop_gradient = True
        self.weight.is_distributed = self.model_parallel and world > 1
        if init_seed is not None:
            # Written block by block: building the whole shard in numpy first and copying it in would
            # hold it twice (plus a converted copy) at start-up, 4-6 GB for 1M x 512 instead of 2.
            with paddle.no_grad():
                for offset, piece in class_center_blocks(init_seed, self.class_start,
                                                         self.class_start + self.num_local_classes, width):
                    self.weight[offset:offset + len(piece)] = paddle.to_tensor(piece)
        # Kept in a plain dict: a Tensor attribute of a Layer would be registered as a buffer.
        self._last_step = {"sampled_index": None, "sampled_weight": None}

    @property
    def replicated(self):
        """True when every rank holds the whole table (model_parallel=False)."""
        return not self.model_parallel

    @property
    def sampled_index(self):
        """Rows of this rank's shard used by the last step: [S] int64, sorted and unique (possibly empty)."""
        return self._last_step["sampled_index"]

    @property
    def sampled_weight(self):
        """Leaf copy of those rows from the last step, [S, width]; backward fills its .grad."""
        return self._last_step["sampled_weight"]

    def remember_step(self, sampled_index, sampled_weight):
        self._last_step.update(sampled_index=sampled_index, sampled_weight=sampled_weight)

    def gather_batch_rows(self, labels_global):
        """This step's rows of the batch's classes as a leaf with gradient, and each sample's column.

        labels_global: [N] int64 -> (rows [P, width] float32, columns [N] int64, -1 = class on another rank).
        """
        index, columns = batch_rows(labels_global.numpy(), self.class_start, self.num_local_classes)
        index = paddle.to_tensor(index, dtype="int64")
        rows = paddle.gather(self.weight, index)
        rows.stop_gradient = False
        self.remember_step(index, rows)
        return rows, paddle.to_tensor(columns, dtype="int64")

    def layout(self):
        """What a checkpoint needs to rebuild the global table from the shards of all ranks."""
        world = distributed.world_size()
        ranges = ([list(shard_range(self.num_classes, world, rank)) for rank in range(world)]
                  if self.model_parallel else [[0, self.num_classes]] * world)
        return {"num_classes": self.num_classes, "width": self.width, "model_parallel": self.model_parallel,
                "world_size": world, "ranges": ranges}


def check_layout(saved, table, where):
    """PlscError naming `where` when a saved layout cannot fill `table` (other class count or width)."""
    if int(saved["num_classes"]) != table.num_classes:
        raise PlscError(f"{where}: the checkpoint has {saved['num_classes']} classes, Model.class_num is "
                        f"{table.num_classes}; a checkpoint resumes only with the class count it was trained with")
    if int(saved["width"]) != table.width:
        raise PlscError(f"{where}: the checkpoint's rows have width {saved['width']}, this run's have {table.width} "
                        "(another Model.num_features or number of sub-centres?)")


def reshard_pieces(saved, class_start, num_local_classes):
    """Where rows [class_start, class_start + num_local_classes) lie in a saved table.

    saved: a `layout()` dict -> [(saved rank, slice of that rank's rows, slice of the target rows)],
    covering the target rows in order. A replicated table is read from rank 0 alone.
    """
    ranges = saved["ranges"] if saved["model_parallel"] else saved["ranges"][:1]
    pieces, stop = [], class_start + num_local_classes
    for rank, (start, count) in enumerate(ranges):
        low, high = max(class_start, start), min(stop, start + count)
        if low < high:
            pieces.append((rank, slice(low - start, high - start), slice(low - class_start, high - class_start)))
    covered = sum(piece[2].stop - piece[2].start for piece in pieces)
    if covered != num_local_classes:
        raise PlscError(f"the saved table layout covers {covered} of the {num_local_classes} rows this rank needs")
    return pieces
