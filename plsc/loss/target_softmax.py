"""Softmax cross-entropy of scaled cosines whose target logit is replaced: the core of every margin loss.

    loss = mean_n CE(s * z_n, y_n),  z_ny = f(cos_ny)  (the margined target),
                                      z_nj = cos_nj, or for a hard negative of CurricularFace
                                      (cos_nj > tau_n) cos_nj * (t + cos_nj)

ArcFace / CosFace / combined margins, AdaFace, MagFace, CurricularFace, MixFairCosFace and
L2-softmax differ only in f (and CurricularFace in the negatives). f maps each row's target cosine
[N, 1] to its margined value with Paddle ops, and may also depend on per-row tensors that carry a
gradient (MagFace's margin from the embedding norm); its slope d f / d cos is taken from autograd.

Two implementations, equal to 1e-5 (tests/heads/test_cpu_kernels.py):
- the reference, composed of Paddle ops (target.py's column write and row_softmax_cross_entropy below);
- on float32 CPU tensors with a workspace, one PyLayer in numpy that keeps a single [N, S] array
  (the exponentials, turned into the gradient in place in backward), never builds a one-hot and
  writes the target column by indexing: the composed version makes ~8 [N, S] tensors per step.
The logits may be sharded by class across ranks (model parallel): the row max, the normaliser and
the target logit are then combined with collectives, so no rank holds a full row.
"""
import numpy as np
import paddle
import paddle.nn as nn
from paddle.autograd import PyLayer

from plsc import distributed, fast_cpu
from plsc.loss.per_sample import KeptRows
from plsc.loss.target import target_cosines, write_targets

# Rows of [N, S] handled at once where the backward needs a temporary (CurricularFace's slope).
CHUNK_ROWS = 16


class TargetSoftmaxLoss(nn.Layer):
    """Base of the margin-softmax losses: scale s, model_parallel, the CPU kernel's arrays, the last rows' losses.

    model_parallel: None follows the class layer (set by CombinedLoss.attach). `kept_rows` holds
    each row's cross-entropy of the last call (no gradient) for the per-group training loss.
    """

    def __init__(self, s, model_parallel):
        super().__init__()
        self.s = float(s)
        self.model_parallel = model_parallel
        self.workspace = fast_cpu.Workspace()
        self.kept_rows = KeptRows()

    def cross_entropy(self, cos, labels_local, target_fn=None, hard_negatives=None):
        """target_softmax_cross_entropy with this loss's s, sharding, workspace and row keeper."""
        return target_softmax_cross_entropy(cos, labels_local, self.s, bool(self.model_parallel), target_fn,
                                            hard_negatives, self.workspace, self.kept_rows)


def target_softmax_cross_entropy(cos, labels_local, s, model_parallel, target_fn=None, hard_negatives=None,
                                 workspace=None, kept_rows=None):
    """Mean margin-softmax cross-entropy over the rows: scalar float32, identical on every rank.

    cos: [N, S_local] float32 cosines; labels_local: [N] int64 column of each row's target here or
    -1; target_fn: [N, 1] target cosines -> [N, 1] margined values, elementwise (None: unchanged);
    hard_negatives: None or (tau [N, 1] no gradient, t float or [1] tensor) for CurricularFace;
    workspace: a fast_cpu.Workspace enabling the numpy kernel on CPU; kept_rows: a KeptRows that
    receives each row's loss [N] (no gradient).
    """
    if workspace is None or not fast_cpu.applies(cos):
        rows = reference_target_softmax(cos, labels_local, s, model_parallel, target_fn, hard_negatives)
        if kept_rows is not None:
            kept_rows.keep(rows.detach())
        return rows.mean()
    labels = fast_cpu.as_numpy(labels_local.reshape([-1])).astype(np.int64)
    cos_values = fast_cpu.as_numpy(cos)
    cos_target = paddle.to_tensor(cos_values[np.arange(labels.shape[0]), labels.clip(min=0)].reshape([-1, 1]))
    new_targets, slopes = targets_and_slopes(cos_target, target_fn)
    hard = None
    if hard_negatives is not None:
        tau, t = hard_negatives
        hard = (fast_cpu.as_numpy(tau).reshape([-1]).copy(), float(np.asarray(t).reshape(-1)[0]))
    return TargetSoftmaxCE.apply(cos, new_targets, labels, slopes, float(s), bool(model_parallel), hard, workspace,
                                 kept_rows)


def reference_target_softmax(cos, labels_local, s, model_parallel, target_fn=None, hard_negatives=None):
    """Each row's loss [N] (with gradient) from Paddle ops: the fallback on GPU and the tests' reference."""
    values = cos
    if hard_negatives is not None:
        tau, t = hard_negatives
        hard = (cos > tau).astype(cos.dtype)
        values = cos + hard * cos * (t + cos - 1.0)  # cos * (t + cos) where hard, else cos
    if target_fn is not None:
        cos_target, has_target = target_cosines(cos, labels_local)
        values = write_targets(values, labels_local, target_fn(cos_target), has_target)
    return row_softmax_cross_entropy(s * values, labels_local, model_parallel)


def row_softmax_cross_entropy(logits_local, labels_local, model_parallel):
    """Softmax cross-entropy of each row, whose columns may be sharded across ranks: [N] float32.

    logits_local: [N, S_local], labels_local: [N] int64 column of the target on this rank or -1
    (each row's target lives on exactly one rank). model_parallel=False: plain softmax CE, no
    collectives. The result is identical on every rank.
    """
    labels_local = labels_local.reshape([-1, 1])
    # The loss does not depend on the shift (its gradient through the max cancels), so no grad.
    row_max = logits_local.max(axis=1, keepdim=True).detach()
    if model_parallel:
        distributed.all_reduce(row_max, "max")
    shifted = logits_local - row_max
    sum_exp = paddle.exp(shifted).sum(axis=1, keepdim=True)
    target_here = (labels_local >= 0).astype(shifted.dtype)
    target_shifted = paddle.take_along_axis(shifted, labels_local.clip(min=0), axis=1) * target_here
    if model_parallel:
        sum_exp = distributed.all_reduce_sum_with_grad(sum_exp)
        target_shifted = distributed.all_reduce_sum_with_grad(target_shifted)
    return (paddle.log(sum_exp) - target_shifted).reshape([-1])


def model_parallel_softmax_cross_entropy(logits_local, labels_local, model_parallel):
    """Mean of row_softmax_cross_entropy: scalar, identical on every rank."""
    return row_softmax_cross_entropy(logits_local, labels_local, model_parallel).mean()


def targets_and_slopes(cos_target, target_fn):
    """f(cos_target) with its gradient to f's own tensors, and d f / d cos_target: ([N, 1], [N] numpy).

    cos_target enters as a detached leaf: the kernel routes its gradient into the cosines itself
    (times the slope), and autograd routes the rest (e.g. into MagFace's embedding norms).
    """
    if target_fn is None:
        return cos_target, np.ones(cos_target.shape[0], dtype=np.float32)
    leaf = cos_target.detach()
    leaf.stop_gradient = False
    new_targets = target_fn(leaf)
    if new_targets.stop_gradient:  # no graph (paddle.no_grad): no backward will ask for the slope
        return new_targets, np.zeros(cos_target.shape[0], dtype=np.float32)
    (slope,) = paddle.grad(new_targets, leaf, retain_graph=True, allow_unused=True)
    if slope is None:
        return new_targets, np.zeros(cos_target.shape[0], dtype=np.float32)
    return new_targets, slope.numpy().reshape([-1])


def all_reduce_numpy(values, op, model_parallel):
    """`values` combined over ranks (op "max" or "sum") when the columns are sharded; numpy in, numpy out."""
    if not model_parallel or distributed.world_size() == 1:
        return values
    return distributed.all_reduce(paddle.to_tensor(values), op).numpy()


class TargetSoftmaxCE(PyLayer):
    """The numpy kernel: forward keeps exp(s z - max) in the workspace; backward turns it into the gradient.

    Gradients (mean over N rows, g the incoming scale, p the softmax):
      d/d cos_nj = g s p_nj / N  (a hard negative: times t + 2 cos_nj),
      d/d f_n    = g s (p_ny - 1) / N,   d/d cos_ny = d/d f_n * f'(cos_ny).
    """

    @staticmethod
    def forward(ctx, cos, new_targets, labels, slopes, s, model_parallel, hard, workspace, kept_rows):
        c = fast_cpu.as_numpy(cos)
        rows = np.flatnonzero(labels >= 0)  # rows whose target column is on this rank
        columns = labels[rows]
        targets = fast_cpu.as_numpy(new_targets).reshape([-1])[rows] * s
        logits = workspace.array("softmax", c.shape)
        mask = None
        if hard is None:
            np.multiply(c, s, out=logits)
        else:
            tau, t = hard
            mask = workspace.array("hard_negatives", c.shape, dtype=bool)
            np.greater(c, tau[:, None], out=mask)
            mask[rows, columns] = False  # the target is not a negative
            np.add(c, t - 1.0, out=logits)
            logits *= c
            logits *= mask
            logits += c
            logits *= s
        logits[rows, columns] = targets
        row_max = all_reduce_numpy(logits.max(axis=1), "max", model_parallel)
        logits -= row_max[:, None]
        np.exp(logits, out=logits)
        sum_exp = all_reduce_numpy(logits.sum(axis=1, dtype=np.float64).astype(np.float32), "sum", model_parallel)
        target_shifted = np.zeros(c.shape[0], dtype=np.float32)
        target_shifted[rows] = targets - row_max[rows]
        target_shifted = all_reduce_numpy(target_shifted, "sum", model_parallel)
        row_losses = np.log(sum_exp) - target_shifted
        if kept_rows is not None:
            kept_rows.keep(paddle.to_tensor(row_losses))
        loss = np.mean(row_losses, dtype=np.float64)
        ctx.state = dict(exp=logits, sum_exp=sum_exp, rows=rows, columns=columns, slopes=slopes[rows], s=s,
                         hard=hard, mask=mask, cos=c, workspace=workspace)
        # Paddle wants None, not a gradient, for an input that stops gradients.
        ctx.needs_grad = (not cos.stop_gradient, not new_targets.stop_gradient)
        return paddle.to_tensor(np.float32(loss))

    @staticmethod
    def backward(ctx, grad_loss):
        # An overflowing loss scale makes inf/nan here; the loss scaler detects them and skips the step.
        with np.errstate(all="ignore"):
            return TargetSoftmaxCE._backward(ctx, grad_loss)

    @staticmethod
    def _backward(ctx, grad_loss):
        state = ctx.state
        grad = state["exp"]  # becomes the cosines' gradient, in place
        scale = float(grad_loss) * state["s"] / grad.shape[0]
        grad *= (scale / state["sum_exp"])[:, None]
        if state["hard"] is not None:
            apply_hard_negative_slope(grad, state["cos"], state["mask"], state["hard"][1], state["workspace"])
        rows, columns = state["rows"], state["columns"]
        grad_targets = grad[rows, columns] - scale  # g s (p_ny - 1) / N
        grad[rows, columns] = grad_targets * state["slopes"]
        grad_new_targets = None
        if ctx.needs_grad[1]:
            full = np.zeros([grad.shape[0], 1], dtype=np.float32)
            full[rows, 0] = grad_targets
            grad_new_targets = paddle.to_tensor(full)
        return (fast_cpu.as_tensor(grad) if ctx.needs_grad[0] else None), grad_new_targets


def apply_hard_negative_slope(grad, cos, mask, t, workspace):
    """grad *= t + 2 cos on hard negatives (the derivative of cos (t + cos)), row chunk by row chunk."""
    scratch = workspace.array("hard_slope", [min(CHUNK_ROWS, grad.shape[0]), grad.shape[1]])
    for start in range(0, grad.shape[0], CHUNK_ROWS):
        rows = slice(start, start + CHUNK_ROWS)
        slope = scratch[:len(grad[rows])]
        np.multiply(cos[rows], 2.0, out=slope)
        slope += t - 1.0
        slope *= mask[rows]
        slope += 1.0
        grad[rows] *= slope
