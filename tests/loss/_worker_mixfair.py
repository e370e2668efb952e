"""Rank worker for test_mixfair_multirank: two steps of MixFairCosFace (bias + CIFP) on this rank's rows.

Usage (under paddle.distributed.launch): python _worker_mixfair.py OUT_DIR
`run_setting(name, world)` also runs in one process over the whole global batch (the test calls it),
so both sides run the same code. Each rank's permutation mixes its own rows only, as the adapter does;
the one-process run uses the same block-wise permutation.
"""
import sys

import numpy as np

NUM_CLASSES = 11  # odd: the two shards differ in size
DIM = 6
ROWS_PER_RANK = 5
SEED = 3
STEPS = 2
SETTINGS = {  # name: pfc_config
    "sharded": {"model_parallel": True},
    "replicated": {"model_parallel": False},
}
LOSS = {"MixFairCosFace": {"s": 16.0, "m": 0.05, "cifp": True}}


def global_batch(world, step):
    rng = np.random.default_rng(200 + step)
    rows = world * ROWS_PER_RANK
    embeddings = rng.standard_normal((rows, DIM)).astype(np.float32)
    mixed = (embeddings + rng.standard_normal((rows, DIM))).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, size=rows)
    permutation = np.concatenate([start + rng.permutation(ROWS_PER_RANK)
                                  for start in range(0, rows, ROWS_PER_RANK)])
    return embeddings, mixed, labels, permutation


class FakeMixFairBackbone:
    """Stands in for a backbone with a MixFair adapter: its last training forward's outputs."""

    def __init__(self, mixed, permutation):
        self.mixfair_outputs = (mixed, permutation)


def run_setting(name, world):
    import paddle

    from plsc import distributed
    from plsc.config.tree import Config
    from plsc.engine.build import build_head
    from plsc.loss.combined import CombinedLoss
    from plsc.loss.inputs import LossInputs

    rank = distributed.rank()
    model = {"name": "IResNet", "num_features": DIM, "class_num": NUM_CLASSES,
             "pfc_config": {"sample_ratio": 1.0, **SETTINGS[name]}}
    head = build_head(Config(model), SEED)
    loss = CombinedLoss([LOSS])
    loss.attach(head)
    mine = (slice(rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK) if distributed.world_size() > 1
            else slice(None))
    results = []
    for step in range(STEPS):
        embeddings, mixed, labels, permutation = global_batch(world, step)
        local_permutation = permutation[mine] - (mine.start or 0)
        x = paddle.to_tensor(embeddings[mine], stop_gradient=False)
        x_mixed = paddle.to_tensor(mixed[mine], stop_gradient=False)
        label_tensor = paddle.to_tensor(labels[mine])
        cos, local_labels = head(x, label_tensor)
        backbone = FakeMixFairBackbone(x_mixed, paddle.to_tensor(local_permutation, dtype="int64"))
        total, _ = loss(LossInputs(cos, local_labels, x, label_tensor, head, backbone))
        total.backward()
        results.append({"loss": float(total), "grad_x": x.grad.numpy(), "grad_mixed": x_mixed.grad.numpy(),
                        "class_start": head.class_start, "head_grad": head.sampled_weight.grad.numpy(),
                        "head_weight": head.weight.numpy()})
        head.sampled_weight.clear_gradient()
    return results


if __name__ == "__main__":
    from tests.multirank_worker import save_every_setting

    save_every_setting(sys.argv[1], SETTINGS, run_setting)
