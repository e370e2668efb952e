"""Training steps of every head + loss pair, run with the CPU kernels or with the pure-Paddle reference.

Shared by tests/heads/test_cpu_kernels.py (one process) and its 2-rank worker: a step is head
forward, loss, (scaled) backward, DynamicLossScaler unscale + FaceOptimizer step (sparse Momentum
with weight decay); each step's loss, embedding gradient, class table and momentum table are returned.
"""
import contextlib

import numpy as np

NUM_CLASSES, EMBEDDING, BATCH_PER_RANK = 40, 16, 6
ARCFACE = {"MarginLoss": {"m1": 1.0, "m2": 0.5, "m3": 0.0, "s": 64.0}}
# name -> (head registry name, head keyword arguments, Loss.Train entries)
PAIRS = {
    "arcface": ("PartialFC", {}, [ARCFACE]),
    "combined": ("PartialFC", {}, [{"MarginLoss": {"m1": 1.1, "m2": 0.3, "m3": 0.2, "s": 32.0}}]),
    "cosface": ("PartialFC", {}, [{"MarginLoss": {"m1": 1.0, "m2": 0.0, "m3": 0.4, "s": 64.0}}]),
    "curricularface": ("PartialFC", {}, [{"CurricularFace": {"m": 0.5, "s": 64.0}}]),
    "adaface": ("PartialFC", {}, [{"AdaFace": {}}]),
    "magface": ("PartialFC", {}, [{"MagFace": {}}]),
    "l2softmax": ("PartialFC", {}, [{"L2Softmax": {"s": 30.0}}]),
    "subcenter": ("SubCenterPartialFC", {"num_subcenters": 3}, [ARCFACE]),
    "arcface_centerloss": ("PartialFC", {}, [ARCFACE, {"CenterLoss": {"weight": 0.5}}]),
}


def global_batch(step, world):
    """The step's global batch (embeddings [N, D] with norms around 20, labels [N]); rank r takes rows r*n..."""
    rng = np.random.default_rng(1000 + step)
    rows = world * BATCH_PER_RANK
    embeddings = rng.standard_normal((rows, EMBEDDING)).astype(np.float32) * 5.0
    return embeddings, rng.integers(0, NUM_CLASSES, size=rows)


@contextlib.contextmanager
def overwrite_policy(overwrite_rows):
    """Make the CPU kernel write the centres' gradient over their gathered copy (or never), whatever its size."""
    from plsc.heads import partial_fc

    saved = partial_fc.OVERWRITE_MIN_BYTES
    partial_fc.OVERWRITE_MIN_BYTES = 0 if overwrite_rows else 2**62
    try:
        yield
    finally:
        partial_fc.OVERWRITE_MIN_BYTES = saved


def run_steps(pair, reference, sample_ratio, model_parallel, steps=3, loss_scale=None, world=1, rank=0,
              overwrite_rows=True):
    """[{loss, grad_embeddings, weight, velocity, stepped}] per step of `pair` on this rank.

    overwrite_rows: whether the CPU kernel writes the centres' gradient over their gathered copy
    (plsc.heads.partial_fc.OVERWRITE_MIN_BYTES decides by size in training).
    """
    with overwrite_policy(overwrite_rows):
        return _run_steps(pair, reference, sample_ratio, model_parallel, steps, loss_scale, world, rank)


def _run_steps(pair, reference, sample_ratio, model_parallel, steps, loss_scale, world, rank):
    import paddle

    import plsc.heads  # noqa: F401  (fills HEADS)
    from plsc import fast_cpu
    from plsc.amp import DynamicLossScaler
    from plsc.loss.combined import CombinedLoss
    from plsc.loss.inputs import LossInputs
    from plsc.optim import build_optimizer
    from plsc.registry import HEADS

    head_name, head_kwargs, losses = PAIRS[pair]
    head = HEADS.build(head_name, num_classes=NUM_CLASSES, embedding_size=EMBEDDING, sample_ratio=sample_ratio,
                       model_parallel=model_parallel, seed=7, **head_kwargs)
    # MarginLoss states its model_parallel; the other losses follow the head's.
    loss_fn = CombinedLoss([{name: dict(kwargs, model_parallel=model_parallel) if name == "MarginLoss" else kwargs
                             for name, kwargs in entry.items()} for entry in losses])
    optimizer = build_optimizer({"name": "Momentum", "momentum": 0.9, "weight_decay": 5e-4}, [],
                                [head, *loss_fn.attach(head)], lr=0.1)
    scaler = DynamicLossScaler(init_loss_scaling=loss_scale or 1.0, max_loss_scaling=max(2.0 ** 32, loss_scale or 1.0),
                               enable=loss_scale is not None)
    results = []
    for step in range(steps):
        embeddings, labels = global_batch(step, world)
        mine = slice(rank * BATCH_PER_RANK, (rank + 1) * BATCH_PER_RANK)
        x = paddle.to_tensor(embeddings[mine], stop_gradient=False)
        y = paddle.to_tensor(labels[mine])
        with (fast_cpu.reference_only() if reference else contextlib.nullcontext()):
            cos, labels_local = head(x, y)
            loss, _ = loss_fn(LossInputs(cos, labels_local, x, y, head))
            scaler.scale(loss).backward()
            grad_embeddings = x.grad.numpy() / scaler.loss_scale
            stepped = scaler.step(optimizer)
            optimizer.clear_grad()
        # Every sparse state table (the head's and CenterLoss's momentum), in a fixed order.
        velocity = [table.numpy().reshape(-1) for key in sorted(optimizer.sparse_state)
                    for _, table in sorted(optimizer.sparse_state[key].items())]
        results.append({"loss": np.float64(loss.numpy()), "grad_embeddings": grad_embeddings,
                        "weight": head.weight.numpy().copy(), "stepped": np.bool_(stepped),
                        "velocity": np.concatenate(velocity) if velocity else np.zeros(0)})
    return results
