"""Partial FC: the class-centre table sharded by class across ranks, sampled per step.

Each rank holds the centres of classes [class_start, class_start + num_local_classes) (PLSC's
shard rule), all-gathers the batch's embeddings and labels, keeps every centre of its shard that
is a positive in the global batch plus random negatives (Partial FC, An et al. 2021,
arXiv:2010.05222), and returns the cosine logits of the global batch against those centres.
The centres are not trained by autograd into `weight`: backward fills `sampled_weight.grad`,
and the sparse optimizer writes the update back into the rows `sampled_index` of `weight`.
"""
import math

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle.autograd import PyLayer

from plsc import distributed, fast_cpu
from plsc.errors import PlscError
from plsc.heads.class_table import ClassTable
from plsc.registry import HEADS

# Row chunk of the centres' gradient correction (see CenterCosines.backward and
# plsc/optim/sparse_momentum.py's CHUNK_BYTES).
CHUNK_BYTES = 16 * 2**20
NORM_EPSILON = 1e-12  # F.normalize's: a zero row is divided by this instead of by 0
# The CPU kernel writes the centres' gradient over their gathered copy when the copy is at least
# this big: one [S, D] array fewer at the peak (200 MB at S = 100k), paid for by the optimizer
# reading W_rows from the table again. Below it the extra read costs more than the memory is worth.
OVERWRITE_MIN_BYTES = 64 * 2**20


def num_sampled_classes(sample_ratio, num_local_classes):
    """S = ceil(ratio * C_local), at least 1.

    PLSC uses int(ratio * C_local); ceil differs by at most one row and guarantees the sampled
    fraction is never below the requested ratio, even on tiny shards where int() would give 0.
    The product is rounded first so that e.g. 0.3 * 10 = 3.0000000000000004 gives 3, not 4.
    """
    return max(1, math.ceil(round(sample_ratio * num_local_classes, 6)))


def sample_class_centers(labels_global, class_start, num_local_classes, num_sample, rng):
    """Sorted shard rows to use this step: every positive of the batch, then random negatives up to num_sample.

    labels_global: [N] int64 class ids -> [max(num_sample, num_positives)] int64 rows of the shard.
    """
    shard_labels = np.asarray(labels_global, dtype=np.int64) - class_start
    positives = np.unique(shard_labels[(shard_labels >= 0) & (shard_labels < num_local_classes)])
    num_negatives = num_sample - positives.size
    if num_negatives <= 0:  # all positives are kept even when they outnumber num_sample
        return positives
    is_positive = np.zeros(num_local_classes, dtype=bool)
    is_positive[positives] = True
    negatives = rng.choice(np.flatnonzero(~is_positive), size=num_negatives, replace=False)
    return np.sort(np.concatenate([positives, negatives]))


def remap_labels(labels_global, sampled_index, class_start):
    """Column of each label's class in `sampled_index`, or -1 when it is not among this shard's rows.

    labels_global: [N] int64 class ids, sampled_index: [S] sorted int64 shard rows -> [N] int64.
    """
    shard_labels = labels_global - class_start
    columns = paddle.searchsorted(sampled_index, shard_labels)
    # searchsorted returns S for labels past the last row: clip only to read a row, never to match.
    row_at_column = paddle.gather(sampled_index, columns.clip(max=sampled_index.shape[0] - 1))
    return paddle.where(row_at_column == shard_labels, columns, paddle.full_like(columns, -1))


def row_inverse_norms(rows):
    """1 / max(|row|, NORM_EPSILON) of each row, as F.normalize divides: [S, D] -> [S] float32, no gradient."""
    rows = rows.astype("float32")
    # Each row's squared norm as a batch of [1, D] x [D, 1] products: no [S, D] temporary, and on
    # the 2-core CPU (100k x 512) 0.29 s where paddle.linalg.norm took 0.71 s and (w * w).sum(1)
    # 0.36 s, all measured under the same load (docs/bench_head.md).
    squared = paddle.bmm(rows.unsqueeze(1), rows.unsqueeze(2)).reshape([-1])
    return 1.0 / paddle.sqrt(squared).clip(min=NORM_EPSILON)


class CenterCosines(PyLayer):
    """cos(x_n, w_s) of unit-norm embeddings and raw (unnormalised) centres, with a hand-written backward.

    Autograd through F.normalize(centers) creates several [S, D] temporaries (the normalised copy,
    and in backward the gradients of the division and of the norm); at S = 100k rows each is 200 MB
    of fresh memory, and Paddle's CPU p_norm backward alone took ~40 % of the step
    (docs/bench_head.md). Here the centres are never normalised: cos = (x w^T) * inv_s with
    inv_s = 1/|w_s|, and since d cos_ns / d w_s = inv_s * x_n - cos_ns * inv_s^2 * w_s, the only
    [S, D] tensor the backward creates is the centres' gradient.
    The [-1, 1] clip (for acos) is applied in place and passes the gradient through: it only
    removes rounding error, where the true derivative is that of the unclipped cosine.
    With a `workspace` and float32 CPU tensors the numpy kernels below do the same arithmetic in
    the workspace's arrays (plsc.fast_cpu); otherwise Paddle's ops, the reference.
    """

    @staticmethod
    def forward(ctx, unit_embeddings, centers, workspace=None, centers_are_copy=False):
        # Paddle wants None, not a gradient, for an input that stops gradients.
        ctx.needs_grad = (not unit_embeddings.stop_gradient, not centers.stop_gradient)
        ctx.centers_are_copy = centers_are_copy
        ctx.workspace = workspace if workspace is not None and fast_cpu.applies(unit_embeddings, centers) else None
        if ctx.workspace is not None:
            cosines, inverse_norms = numpy_cosines(unit_embeddings, centers, ctx.workspace)
            ctx.save_for_backward(unit_embeddings, centers, inverse_norms)
            return cosines
        inverse_norms = row_inverse_norms(centers)
        cosines = paddle.matmul(unit_embeddings, centers, transpose_y=True)
        if cosines.dtype != paddle.float32:  # fp16 under AMP on GPU; the margin loss needs float32
            cosines = cosines.astype("float32")
        cosines.multiply_(inverse_norms.unsqueeze(0)).clip_(-1.0, 1.0)
        ctx.save_for_backward(unit_embeddings, centers, inverse_norms, cosines)
        return cosines

    @staticmethod
    def backward(ctx, grad_cosines):
        if ctx.workspace is not None:
            # inf/nan from an overflowing loss scale are the loss scaler's to detect (it skips the step).
            with np.errstate(all="ignore"):
                return numpy_cosines_backward(grad_cosines, *ctx.saved_tensor(), ctx.workspace, ctx.needs_grad,
                                              ctx.centers_are_copy)
        unit_embeddings, centers, inverse_norms, cosines = ctx.saved_tensor()
        embeddings_need_grad, centers_need_grad = ctx.needs_grad
        centers_float = centers.astype("float32")  # the same tensor unless fp16
        # d loss / d (x_n . w_s): the cosine's gradient divided by the centre's norm, [N, S].
        grad_dots = grad_cosines * inverse_norms.unsqueeze(0)
        grad_embeddings = grad_centers = None
        if embeddings_need_grad:
            grad_embeddings = paddle.matmul(grad_dots, centers_float).astype(unit_embeddings.dtype)
        if centers_need_grad:
            grad_centers = paddle.matmul(grad_dots, unit_embeddings.astype("float32"), transpose_x=True)
            # Remove the radial part: sum_n g_ns cos_ns inv_s^2 w_s = (sum_n grad_dots_ns cos_ns) inv_s w_s.
            radial = ((grad_dots * cosines).sum(axis=0) * inverse_norms).unsqueeze(1)
            # Row chunks of views, written through: small temporaries that malloc hands out again,
            # instead of one fresh [S, D] product.
            step = max(1, CHUNK_BYTES // (4 * centers.shape[1]))
            for start in range(0, centers.shape[0], step):
                rows = slice(start, start + step)
                grad_centers[rows].subtract_(centers_float[rows] * radial[rows])
            grad_centers = grad_centers.astype(centers.dtype)
        return grad_embeddings, grad_centers


def numpy_cosines(unit_embeddings, centers, workspace):
    """CenterCosines' forward in numpy: ([N, S] cosines in the workspace, [S] 1/|w_s| tensor)."""
    x, w = fast_cpu.as_numpy(unit_embeddings), fast_cpu.as_numpy(centers)
    inverse_norms = workspace.array("inverse_norms", [w.shape[0]])
    np.einsum("sd,sd->s", w, w, out=inverse_norms)  # squared row norms without an [S, D] temporary
    np.sqrt(inverse_norms, out=inverse_norms)
    np.reciprocal(np.maximum(inverse_norms, NORM_EPSILON, out=inverse_norms), out=inverse_norms)
    cosines = workspace.array("cosines", [x.shape[0], w.shape[0]])
    np.matmul(x, w.T, out=cosines)
    cosines *= inverse_norms
    np.clip(cosines, -1.0, 1.0, out=cosines)
    return fast_cpu.as_tensor(cosines), fast_cpu.as_tensor(inverse_norms)


def numpy_cosines_backward(grad_cosines, unit_embeddings, centers, inverse_norms, workspace, needs_grad,
                           centers_are_copy):
    """CenterCosines' backward in numpy; the incoming gradient is used as scratch (nothing else reads it).

    The centres' gradient is made in row chunks: raw_s = sum_n g_ns x_n, then the radial part,
    whose coefficient sum_n g_ns cos_ns = inv_s (w_s . raw_s) needs no cosines. When the centres
    are a gathered copy (`centers_are_copy`), their gradient is written over them: one [S, D]
    array fewer at the peak (200 MB at 100k rows), and the optimizer reads W_rows from the table
    (its gather of the velocity rows brings them along at little cost).
    """
    grad_dots = fast_cpu.as_numpy(grad_cosines)
    x, w, inverse = (fast_cpu.as_numpy(t) for t in (unit_embeddings, centers, inverse_norms))
    grad_dots *= inverse  # d loss / d (x_n . w_s), [N, S]
    grad_embeddings = grad_centers = None
    if needs_grad[0]:
        grad_embeddings = fast_cpu.as_tensor(np.matmul(grad_dots, w))
    if needs_grad[1]:
        out = w if centers_are_copy else workspace.array("center_grad", w.shape)
        step = max(1, fast_cpu.CACHE_CHUNK_BYTES // (4 * w.shape[1]))
        scratch = workspace.array("center_grad_chunk", [min(step, w.shape[0]), w.shape[1]])
        for start in range(0, w.shape[0], step):
            rows = slice(start, start + step)
            raw = scratch[:len(w[rows])]
            np.matmul(grad_dots[:, rows].T, x, out=raw)
            radial = np.einsum("sd,sd->s", w[rows], raw)
            radial *= inverse[rows] * inverse[rows]
            np.multiply(w[rows], radial[:, None], out=out[rows])  # in place when out is w: read first
            np.subtract(raw, out[rows], out=out[rows])
        grad_centers = fast_cpu.as_tensor(out)
    return grad_embeddings, grad_centers


def cosine_logits(embeddings, centers, workspace=None, centers_are_copy=False):
    """Cosine of every embedding with every centre: [N, D] x [S, D] -> [N, S] float32 in [-1, 1].

    workspace: a fast_cpu.Workspace that owns the arrays of the CPU kernels (None: Paddle's ops);
    centers_are_copy: the centres are a gathered copy, not the table, so the CPU kernel may write
    their gradient over them.
    """
    return CenterCosines.apply(F.normalize(embeddings, axis=1), centers, workspace, centers_are_copy)


@HEADS.register("PartialFC")
class PartialFC(ClassTable):
    """Class-centre shard of this rank with per-step sampling; returns cosine logits of the global batch.

    forward(embeddings [n_local, D], labels [n_local] int64)
      -> (cos_logits [N_global, S_local] float32, local_labels [N_global] int64, -1 = not on this rank)
    """

    def __init__(self, num_classes, embedding_size, sample_ratio=1.0, model_parallel=False, seed=2022):
        if not 0.0 < sample_ratio <= 1.0:
            raise PlscError(f"Model.pfc_config.sample_ratio must be in (0, 1], got {sample_ratio}")
        if embedding_size < 1:
            raise PlscError(f"Model.num_features must be >= 1, got {embedding_size}")
        # Replicated: every rank holds all classes and runs the identical step (same samples).
        super().__init__("partialfc", num_classes, embedding_size, model_parallel, init_seed=seed)
        self.embedding_size = embedding_size
        self.sample_ratio = sample_ratio
        self.seed = seed
        self.num_sample = num_sampled_classes(sample_ratio, self.num_local_classes)
        self._rng = np.random.default_rng(seed + distributed.rank() if model_parallel else seed)
        # The CPU kernels' arrays (sampled rows, cosines, gradients), reused step after step.
        self.workspace = fast_cpu.Workspace()

    @property
    def use_fused_ops(self):
        """Paddle's fused class_center_sample is used on GPU only; the numpy path is the reference."""
        return paddle.device.get_device().startswith("gpu")

    @property
    def rows_are_copies(self):
        """The CPU kernel may write the centres' gradient over sampled_weight: a gathered copy (below
        ratio 1.0, not the table's own memory) of at least OVERWRITE_MIN_BYTES."""
        return self.sample_ratio < 1.0 and self.num_sample * self.weight.shape[1] * 4 >= OVERWRITE_MIN_BYTES

    def rng_state(self):
        """State of the negative-sampling generator (a picklable dict) for exact resume."""
        return self._rng.bit_generator.state

    def set_rng_state(self, state):
        self._rng.bit_generator.state = state

    def forward(self, embeddings, labels):
        # Sharded: each rank's rows reach the loss only through its shard, so their gradients are
        # summed over ranks. Replicated: every rank already has the full gradient.
        embeddings_global = distributed.all_gather_with_grad(embeddings, sum_grads=self.model_parallel)
        labels_global = distributed.all_gather(labels.reshape([-1]).astype("int64"))
        sampled_index = self._sample(labels_global)
        sampled_weight = self._gather_centers(sampled_index)
        self.remember_step(sampled_index, sampled_weight)
        local_labels = remap_labels(labels_global, sampled_index, self.class_start)
        return self.class_logits(embeddings_global, sampled_weight), local_labels

    def class_logits(self, embeddings_global, sampled_weight):
        """Score of each gathered embedding for each sampled class: [N, D] x [S, D] -> [N, S] cosines.

        The hook a head with several centres per class (SubCenterPartialFC) overrides.
        """
        return cosine_logits(embeddings_global, sampled_weight, self.workspace, self.rows_are_copies)

    def _sample(self, labels_global):
        """Sorted rows of the shard used this step: [S] int64."""
        if self.sample_ratio >= 1.0:
            return paddle.arange(self.num_local_classes, dtype="int64")
        if self.use_fused_ops and self.model_parallel:
            return self._fused_sample(labels_global)
        index = sample_class_centers(labels_global.numpy(), self.class_start, self.num_local_classes,
                                     self.num_sample, self._rng)
        return paddle.to_tensor(index, dtype="int64")

    def _fused_sample(self, labels_global):
        # Paddle's kernel draws from Paddle's global RNG (checkpointed by the trainer), not self._rng.
        # Its remapped labels index the concatenation of all ranks' samples and its index is not
        # sorted (positives first), so only the rows are taken and remapped like the basic path.
        # group=False: a single process has no communicator; None: the default (all ranks) group.
        group = None if distributed.world_size() > 1 else False
        _, index = F.class_center_sample(labels_global, self.num_local_classes, self.num_sample, group=group)
        return paddle.sort(index)

    def _gather_centers(self, sampled_index):
        """A fresh leaf [S, D] of the sampled rows for the sparse optimizer (a view of the shard at ratio 1.0)."""
        if self.sample_ratio >= 1.0:
            centers = self.weight.detach()  # all rows: share the storage instead of copying it
        elif fast_cpu.applies(self.weight):
            index = fast_cpu.as_numpy(sampled_index)
            rows = self.workspace.array("sampled_rows", [index.shape[0], self.weight.shape[1]])
            # mode="clip" writes straight into `out`; numpy's default "raise" fills a temporary copy first.
            np.take(fast_cpu.as_numpy(self.weight), index, axis=0, out=rows, mode="clip")
            centers = fast_cpu.as_tensor(rows)
        else:
            centers = paddle.gather(self.weight, sampled_index)
        centers.stop_gradient = False
        return centers
