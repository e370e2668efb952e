"""Row-sparse updates of the class-centre shard: only the rows sampled this step move.

Each function updates `weight` and its state tables in place on the rows `index` and leaves every
other row, and its state, untouched bit for bit (sparse momentum: v_I = mu * v_I + g_I, W_I -= lr * v_I). `index` must hold unique
rows (the head's sampled index is sorted and unique): an overwriting scatter with repeated rows
would keep an arbitrary one of them.

Speed at the shard sizes Glint360K / WebFace42M give one GPU (C_local ~ 1M rows, D = 512,
|index| ~ 100k): nothing the size of the table is allocated, and no [S, D] temporary either. On
this 2-core CPU a fresh 200 MB tensor costs ~0.15-0.25 s of first-touch page faults, more than the
arithmetic on it (docs/bench_head.md), so the Momentum update works on row chunks of ~16 MB (which
malloc hands out again from memory it holds), computes in place with the spent gradient as
scratch, takes the weight rows from the head's sampled copy instead of gathering them again, and
at sample ratio 1.0 updates the tables directly without any gather or scatter. Rows are written
back with an overwriting `paddle.scatter_`: measured (1M x 512, 100k rows) ~50 ms per table, where
index_put_ took ~1.1 s and put_along_axis_ ~1.2 s; index_add_ of the difference is as fast but not
bit-exact (v + (v_new - v) != v_new).
"""
import numpy as np
import paddle

from plsc import fast_cpu


# Rows gathered, updated and scattered back per round: ~16 MB per temporary. glibc's malloc hands
# out blocks this size again from memory it already holds, while each block of the whole [S, D]
# (200 MB at S = 100k) would be a fresh mapping, page-faulted anew every step; and the update
# holds only a chunk of extra rows at a time instead of two [S, D] copies.
CHUNK_BYTES = 16 * 2**20


def row_chunks(num_rows, row_length, itemsize=4, chunk_bytes=CHUNK_BYTES):
    """[(start, stop)] covering range(num_rows) in chunks of about `chunk_bytes`."""
    step = max(1, chunk_bytes // (row_length * itemsize))
    return [(start, min(start + step, num_rows)) for start in range(0, num_rows, step)]


def covers_every_row(index, num_rows):
    """True when `index` is 0, 1, ..., num_rows - 1 in order (Partial FC at sample ratio 1.0)."""
    if index.shape[0] != num_rows:
        return False
    return bool(paddle.equal_all(index, paddle.arange(num_rows, dtype=index.dtype)))


def momentum_in_place(weight, velocity, grad, lr, momentum, weight_decay):
    """v = mu * v + grad + wd * w;  w -= lr * v, on whole tensors in place; `grad` is used as scratch.

    weight, velocity, grad: [S, D] of one dtype. Writing the products into `grad` instead of into
    fresh tensors saves a [S, D] allocation each (page faulting a fresh 200 MB costs more than
    the arithmetic on this CPU); the gradient is spent once the velocity holds it.
    """
    velocity.scale_(momentum).add_(grad)
    if weight_decay:
        paddle.assign(weight, output=grad)
        velocity.add_(grad.scale_(weight_decay))
    paddle.assign(velocity, output=grad)
    weight.subtract_(grad.scale_(lr))


@paddle.no_grad()
def sparse_momentum_update(weight, velocity, index, grad_rows, lr, momentum, weight_decay, weight_rows=None):
    """Momentum SGD with L2 weight decay on rows `index` only, in place; `grad_rows` is consumed (scratch).

    g = grad_rows + wd * W_I;  v_I = mu * v_I + g;  W_I -= lr * v_I.
    weight, velocity: [C, D] float32; index: [S] int64, unique; grad_rows: [S, D].
    weight_rows: optional [S, D] holding the current W_I (the head's sampled copy), used instead of
    gathering the rows again and updated in place along with `weight`.
    """
    if grad_rows.dtype != weight.dtype:
        grad_rows = grad_rows.astype(weight.dtype)
    tensors = [weight, velocity, grad_rows] + ([] if weight_rows is None else [weight_rows])
    update = numpy_momentum_rows if fast_cpu.applies(*tensors) else paddle_momentum_rows
    if covers_every_row(index, weight.shape[0]):
        # Every row moves: update the tables themselves, no gather and no scatter.
        update(weight, velocity, None, grad_rows, lr, momentum, weight_decay, weight)
        return
    update(weight, velocity, index, grad_rows, lr, momentum, weight_decay, weight_rows)


def paddle_momentum_rows(weight, velocity, index, grad_rows, lr, momentum, weight_decay, weight_rows):
    """The reference: Paddle's gather, in-place arithmetic and overwriting scatter, chunk by chunk.

    index None: weight_rows and velocity are the tables themselves (every row moves).
    """
    if index is None:
        momentum_in_place(weight_rows, velocity, grad_rows, lr, momentum, weight_decay)
        return
    for start, stop in row_chunks(index.shape[0], weight.shape[1]):
        rows = index[start:stop]
        # A slice of weight_rows is a view: updating it updates the caller's copy too.
        weight_chunk = paddle.gather(weight, rows) if weight_rows is None else weight_rows[start:stop]
        velocity_chunk = paddle.gather(velocity, rows)
        momentum_in_place(weight_chunk, velocity_chunk, grad_rows[start:stop], lr, momentum, weight_decay)
        paddle.scatter_(velocity, rows, velocity_chunk, overwrite=True)
        paddle.scatter_(weight, rows, weight_chunk, overwrite=True)


def numpy_momentum_rows(weight, velocity, index, grad_rows, lr, momentum, weight_decay, weight_rows):
    """The same update in numpy on the tensors' memory (plsc.fast_cpu): one gather and one write-back per table.

    numpy's `take(out=)` and fancy-index assignment move the rows 2-4x faster than Paddle's
    gather / scatter_ on this CPU; the chunks keep the gathered rows in cache for the arithmetic.
    """
    table, moments, grads = (fast_cpu.as_numpy(t) for t in (weight, velocity, grad_rows))
    if index is None:
        for start, stop in row_chunks(table.shape[0], table.shape[1], chunk_bytes=fast_cpu.CACHE_CHUNK_BYTES):
            part = slice(start, stop)
            numpy_momentum_in_place(table[part], moments[part], grads[part], lr, momentum, weight_decay)
        return
    rows = fast_cpu.as_numpy(index)
    if rows.shape[0] == 0:  # a shard none of whose rows the batch used (CenterLoss, model parallel)
        return
    current = None if weight_rows is None else fast_cpu.as_numpy(weight_rows)
    chunks = row_chunks(rows.shape[0], table.shape[1], chunk_bytes=fast_cpu.CACHE_CHUNK_BYTES)
    velocity_scratch = np.empty([chunks[0][1] - chunks[0][0], table.shape[1]], dtype=table.dtype)
    weight_scratch = np.empty_like(velocity_scratch) if current is None else None
    for start, stop in chunks:
        chunk_rows = rows[start:stop]
        velocity_chunk = np.take(moments, chunk_rows, axis=0, out=velocity_scratch[:stop - start], mode="clip")
        if current is None:
            weight_chunk = np.take(table, chunk_rows, axis=0, out=weight_scratch[:stop - start], mode="clip")
        else:
            weight_chunk = current[start:stop]
        numpy_momentum_in_place(weight_chunk, velocity_chunk, grads[start:stop], lr, momentum, weight_decay)
        moments[chunk_rows] = velocity_chunk
        table[chunk_rows] = weight_chunk


def numpy_momentum_in_place(weight, velocity, grad, lr, momentum, weight_decay):
    """momentum_in_place on numpy arrays: v = mu * v + grad + wd * w;  w -= lr * v; `grad` is scratch."""
    velocity *= momentum
    velocity += grad
    if weight_decay:
        np.multiply(weight, weight_decay, out=grad)
        velocity += grad
    np.multiply(velocity, lr, out=grad)
    weight -= grad


@paddle.no_grad()
def sparse_adamw_update(weight, moment1, moment2, row_steps, index, grad_rows, lr, beta1, beta2, epsilon,
                        weight_decay):
    """AdamW (decoupled weight decay, Paddle's order) on rows `index` only, in place.

    W_I *= 1 - lr * wd;  m_I = b1 m_I + (1 - b1) g;  v_I = b2 v_I + (1 - b2) g^2;  t_I += 1;
    W_I -= lr * (m_I / (1 - b1^t_I)) / (sqrt(v_I / (1 - b2^t_I)) + eps).
    Bias correction uses each row's own update count t_I: a class centre sampled for the first time
    at global step 1000 has had one update, and correcting it with b^1000 would leave its first
    moments almost unscaled (too small a step) instead of the unbiased estimate Adam intends.
    weight, moment1, moment2: [C, D] float32; row_steps: [C] int64; index: [S] int64, unique;
    grad_rows: [S, D].
    """
    grad_rows = grad_rows.astype(weight.dtype)
    weight_rows = paddle.gather(weight, index)
    moment1_rows = paddle.gather(moment1, index)
    moment2_rows = paddle.gather(moment2, index)
    steps = paddle.gather(row_steps, index) + 1
    weight_rows.scale_(1.0 - lr * weight_decay)
    moment1_rows.scale_(beta1).add_(paddle.scale(grad_rows, 1.0 - beta1))
    moment2_rows.scale_(beta2).add_(paddle.scale(grad_rows * grad_rows, 1.0 - beta2))
    steps_float = steps.astype(weight.dtype).unsqueeze(1)
    bias1 = 1.0 - paddle.pow(paddle.full_like(steps_float, beta1), steps_float)
    bias2 = 1.0 - paddle.pow(paddle.full_like(steps_float, beta2), steps_float)
    denominator = paddle.sqrt(moment2_rows / bias2) + epsilon
    weight_rows.subtract_(lr * (moment1_rows / bias1) / denominator)
    paddle.scatter_(moment1, index, moment1_rows, overwrite=True)
    paddle.scatter_(moment2, index, moment2_rows, overwrite=True)
    paddle.scatter_(row_steps, index, steps, overwrite=True)
    paddle.scatter_(weight, index, weight_rows, overwrite=True)
