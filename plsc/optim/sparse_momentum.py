"""Row-sparse updates of the class-centre shard: only the rows sampled this step move.

Each function updates `weight` and its state tables in place on the rows `index` and leaves every
other row, and its state, untouched bit for bit (DESIGN.md section 4). `index` must hold unique
rows (the head's sampled index is sorted and unique): an overwriting scatter with repeated rows
would keep an arbitrary one of them.

Speed at the shard sizes Glint360K / WebFace42M give one GPU (C_local ~ 1M rows, D = 512,
|index| ~ 100k): nothing the size of the table is allocated. The rows are gathered, combined with
in-place arithmetic, and written back with an overwriting `paddle.scatter_`. Measured on the
2-core CPU (1M x 512, 100k rows, OMP_NUM_THREADS=1, shared machine, so roughly): writing rows back
with scatter_ ~50 ms per table, index_put_ ~1.1 s, put_along_axis_ ~1.2 s, index_add_ of the
difference ~50 ms (but not bit-exact: v + (v_new - v) != v_new). Most of the remaining ~1 s per
update is first-touch page faulting of each freshly allocated [100k, 512] temporary (~170 ms each
on this VM), so the update allocates as few temporaries as the formula allows.
"""
import paddle


@paddle.no_grad()
def sparse_momentum_update(weight, velocity, index, grad_rows, lr, momentum, weight_decay):
    """Momentum SGD with L2 weight decay on rows `index` only, in place.

    g = grad_rows + wd * W_I;  v_I = mu * v_I + g;  W_I -= lr * v_I.
    weight, velocity: [C, D] float32; index: [S] int64, unique; grad_rows: [S, D].
    """
    weight_rows = paddle.gather(weight, index)
    velocity_rows = paddle.gather(velocity, index)
    velocity_rows.scale_(momentum).add_(grad_rows.astype(weight.dtype))
    if weight_decay:
        velocity_rows.add_(paddle.scale(weight_rows, weight_decay))
    weight_rows.subtract_(paddle.scale(velocity_rows, lr))
    paddle.scatter_(velocity, index, velocity_rows, overwrite=True)
    paddle.scatter_(weight, index, weight_rows, overwrite=True)


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
