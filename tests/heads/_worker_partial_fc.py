"""Rank worker for test_partial_fc_multirank: one PartialFC + MarginLoss step per setting.

Usage (under paddle.distributed.launch): python _worker_partial_fc.py OUT_DIR
Each rank takes its rows of the same global batch and saves `{setting}_rank{R}.npz`.
"""
import sys
from pathlib import Path

import numpy as np

NUM_CLASSES = 13  # not divisible by 2: the shards differ in size
DIM = 8
ROWS_PER_RANK = 4
SEED = 7
MARGINS = dict(m1=1.0, m2=0.5, m3=0.0, s=64.0)
SETTINGS = {  # name: (sample_ratio, model_parallel)
    "sharded": (1.0, True),
    "replicated": (1.0, False),
    "sharded_half": (0.5, True),
    "replicated_half": (0.5, False),
}


def global_batch(world):
    rng = np.random.default_rng(123)
    rows = world * ROWS_PER_RANK
    return rng.standard_normal((rows, DIM)).astype(np.float32), rng.integers(0, NUM_CLASSES, size=rows)


def main(out_dir):
    from plsc import distributed  # first: plsc sets the CPU thread variables before Paddle loads
    from plsc.heads.partial_fc import PartialFC
    from plsc.loss.margin import MarginLoss, sampled_global_labels
    import paddle

    distributed.init()
    rank = distributed.rank()
    embeddings, labels = global_batch(distributed.world_size())
    mine = slice(rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK)
    for name, (sample_ratio, model_parallel) in SETTINGS.items():
        head = PartialFC(NUM_CLASSES, DIM, sample_ratio=sample_ratio, model_parallel=model_parallel, seed=SEED)
        weight = head.weight.numpy().copy()
        x = paddle.to_tensor(embeddings[mine], stop_gradient=False)
        cos, local_labels = head(x, paddle.to_tensor(labels[mine]))
        loss = MarginLoss(**MARGINS, model_parallel=model_parallel)(cos, local_labels)
        loss.backward()
        global_labels = (sampled_global_labels(local_labels, cos.shape[1]).numpy() if model_parallel
                         else local_labels.numpy())
        np.savez(Path(out_dir) / f"{name}_rank{rank}.npz", loss=float(loss), grad_x=x.grad.numpy(),
                 cos=cos.numpy(), local_labels=local_labels.numpy(), global_labels=global_labels,
                 sampled_index=head.sampled_index.numpy(), sampled_grad=head.sampled_weight.grad.numpy(),
                 weight=weight, class_start=head.class_start, num_local=head.num_local_classes,
                 num_sample=head.num_sample)


if __name__ == "__main__":
    Path(sys.argv[1]).mkdir(parents=True, exist_ok=True)
    main(sys.argv[1])
