"""Rank worker for test_optim_multirank: clipping with a sharded head, and a loss-scaler skip on one rank.

Usage (under paddle.distributed.launch): python _worker_optim.py OUT_DIR
Saves `{scenario}_rank{R}.npz` for every scenario.
"""
import sys
from pathlib import Path

import numpy as np

DENSE_SHAPE = (3, 4)
ROWS, DIM = 6, 4
SAMPLED = [[0, 2, 5], [1, 3]]  # class-centre rows each rank's head uses (its own shard)
CLIP_NORM = 1.0
CLIP_SETTINGS = {"clip_sharded": [], "clip_exempt": ["dist"]}  # scenario: no_clip_list

# the loss-scaler scenario: a tiny backbone + model-parallel PartialFC + MarginLoss
NUM_CLASSES, IN_FEATURES, EMBEDDING, ROWS_PER_RANK = 10, 6, 4, 3
INIT_SCALE = 1024.0


def clip_gradients(rank):
    """(dense grad, head rows grad) of `rank`, each rank different: dense [3, 4], rows [len(SAMPLED[rank]), DIM]."""
    rng = np.random.default_rng(100 + rank)
    return rng.standard_normal(DENSE_SHAPE) * 2.0, rng.standard_normal((len(SAMPLED[rank]), DIM)) * 2.0


def initial_values(rank):
    """Same dense start on every rank, a different shard per rank."""
    shard = np.random.default_rng(200 + rank).standard_normal((ROWS, DIM))
    return np.linspace(-1.0, 1.0, 12).reshape(DENSE_SHAPE), shard


def global_batch(world):
    rng = np.random.default_rng(300)
    rows = world * ROWS_PER_RANK
    return (rng.standard_normal((rows, IN_FEATURES)).astype(np.float32),
            rng.integers(0, NUM_CLASSES, size=rows))


def run_clip(name, no_clip_list, rank, world, out_dir):
    import paddle
    from optim_fakes import FakeHead, give_gradients, parameter

    from plsc.optim import ClipGradByGlobalNorm, build_optimizer

    dense_grad, grad_rows = clip_gradients(rank)
    dense0, shard0 = initial_values(rank)
    dense = parameter(dense0, "clip_dense.w")
    head = FakeHead(shard0, name=f"partialfc_dist_rank_{rank:05d}_0.w", model_parallel=True)
    config = {"name": "Momentum", "momentum": 0.0, "weight_decay": 0.0,
              "grad_clip": {"name": "ClipGradByGlobalNorm", "clip_norm": CLIP_NORM, "no_clip_list": no_clip_list}}
    optimizer = build_optimizer(config, [dense], [head], lr=1.0)
    give_gradients([(dense, dense_grad)])
    head.backward_rows(SAMPLED[rank], grad_rows)
    optimizer.step()

    # The clip object on its own returns the global norm it sees: the summed dense gradient (as the
    # optimizer's all-reduce leaves it on every rank) plus this rank's rows, summed over ranks.
    summed_dense = paddle.to_tensor(sum(clip_gradients(r)[0] for r in range(world)), dtype="float32")
    norm = ClipGradByGlobalNorm(clip_norm=1e9, no_clip_list=no_clip_list)(
        [(("clip_dense.w",), summed_dense)],
        [((head.weight.name,), paddle.to_tensor(grad_rows, dtype="float32"))])
    # (the class-centre rows' gradient is consumed by the sparse update: the test reads it off the shard)
    np.savez(out_dir / f"{name}_rank{rank}.npz", dense_grad_after=dense.grad.numpy(), dense_after=dense.numpy(),
             shard_after=head.weight.numpy(), norm=norm)


def run_scaler_skip(rank, world, out_dir):
    import paddle

    from plsc import distributed
    from plsc.amp import DynamicLossScaler
    from plsc.heads.partial_fc import PartialFC
    from plsc.loss.margin import MarginLoss
    from plsc.optim import build_optimizer

    paddle.seed(0)
    backbone = paddle.nn.Linear(IN_FEATURES, EMBEDDING)
    distributed.broadcast_parameters(backbone.parameters())
    head = PartialFC(NUM_CLASSES, EMBEDDING, sample_ratio=0.5, model_parallel=True, seed=5)
    loss_fn = MarginLoss(m1=1.0, m2=0.5, m3=0.0, s=16.0, model_parallel=True)
    optimizer = build_optimizer({"name": "Momentum", "momentum": 0.9, "weight_decay": 5e-4,
                                 "grad_clip": {"clip_norm": 5.0, "no_clip_list": ["dist"]}},
                                backbone.named_parameters(), [head], lr=0.1)
    scaler = DynamicLossScaler(init_loss_scaling=INIT_SCALE, decr_every_n_nan_or_inf=1)
    inputs, labels = global_batch(world)
    mine = slice(rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK)

    def snapshot():
        return [param.numpy().copy() for param in backbone.parameters()] + [head.weight.numpy().copy()]

    def step(inject_inf):
        cos, local_labels = head(backbone(paddle.to_tensor(inputs[mine])), paddle.to_tensor(labels[mine]))
        scaler.scale(loss_fn(cos, local_labels)).backward()
        if inject_inf:  # only this rank's class-centre rows see the overflow
            with paddle.no_grad():
                head.sampled_weight.grad[0, 0] = float("inf")
        stepped = scaler.step(optimizer)
        optimizer.clear_grad()
        return stepped

    before = snapshot()
    skipped_step_went_through = step(inject_inf=rank == 1)
    after_skip = snapshot()
    scale_after_skip = scaler.loss_scale
    sparse_state_after_skip = sorted(optimizer.sparse_state_dict())
    good_step_went_through = step(inject_inf=False)
    after_good = snapshot()
    names = ["weight", "bias", "shard"]
    np.savez(out_dir / f"scaler_rank{rank}.npz", first_stepped=skipped_step_went_through,
             second_stepped=good_step_went_through, scale_after_skip=scale_after_skip,
             scale_after_good=scaler.loss_scale, sparse_state_after_skip=len(sparse_state_after_skip),
             **{f"before_{n}": v for n, v in zip(names, before)},
             **{f"after_skip_{n}": v for n, v in zip(names, after_skip)},
             **{f"after_good_{n}": v for n, v in zip(names, after_good)})


def main(out_dir):
    from plsc import distributed  # first: plsc sets the CPU thread variables before Paddle loads

    distributed.init()
    rank, world = distributed.rank(), distributed.world_size()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, no_clip_list in CLIP_SETTINGS.items():
        run_clip(name, no_clip_list, rank, world, out_dir)
    run_scaler_skip(rank, world, out_dir)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main(sys.argv[1])
