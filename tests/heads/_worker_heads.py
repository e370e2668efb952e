"""Rank worker for test_heads_multirank: two steps of every literature head on this rank's rows.

Usage (under paddle.distributed.launch): python _worker_heads.py OUT_DIR
`run_setting(name)` is also called by the test in one process over the whole global batch, so
both sides run the very same code; each saves per step the loss, the gradient of its rows, the
gradient of its shard's sampled rows (class layer and loss tables) and the running statistics.
"""
import sys

import numpy as np

NUM_CLASSES = 13  # odd: the two shards differ in size
DIM = 8
ROWS_PER_RANK = 4
NUM_GROUPS = 3
SEED = 7
STEPS = 2
SETTINGS = {  # name: (head pfc_config, Loss.Train entries)
    "curricular": ({}, [{"CurricularFace": {"m": 0.5, "s": 16.0}}]),
    "adaface": ({}, [{"AdaFace": {"s": 16.0, "h": 1.0}}]),
    "magface": ({}, [{"MagFace": {"l_a": 1.0, "u_a": 10.0, "lambda_g": 5.0, "s": 16.0}}]),
    "magface_replicated": ({"model_parallel": False},
                           [{"MagFace": {"l_a": 1.0, "u_a": 10.0, "lambda_g": 5.0, "s": 16.0}}]),
    "l2softmax": ({}, [{"L2Softmax": {"s": 16.0}}]),
    "subcenter": ({"name": "SubCenterPartialFC", "num_subcenters": 3},
                  [{"MarginLoss": {"m2": 0.5, "s": 16.0, "model_parallel": True}}]),
    "center": ({}, [{"MarginLoss": {"m2": 0.5, "s": 16.0, "model_parallel": True}},
                    {"CenterLoss": {"weight": 0.5}}]),
    "center_replicated": ({"model_parallel": False},
                          [{"MarginLoss": {"m2": 0.5, "s": 16.0, "model_parallel": False}},
                           {"CenterLoss": {"weight": 0.5}}]),
    "group": ({}, [{"L2Softmax": {"s": 16.0}}, {"GroupLoss": {"weight": 0.1}}]),
}


def global_batch(batch_world, step):
    rng = np.random.default_rng(100 + step)
    rows = batch_world * ROWS_PER_RANK
    embeddings = (rng.standard_normal((rows, DIM)) * rng.uniform(0.5, 1.5, (rows, 1))).astype(np.float32)
    group_logits = rng.standard_normal((rows, NUM_GROUPS)).astype(np.float32)
    return embeddings, rng.integers(0, NUM_CLASSES, size=rows), group_logits


class FakeGroupBackbone:
    """Stands in for a GroupFace model: its last training forward's group logits."""

    def __init__(self, group_logits):
        self.group_logits = group_logits


def run_setting(name, batch_world):
    """Run STEPS steps of setting `name` on this process's rows of a `batch_world`-rank global batch.

    Returns a list of per-step dicts.
    """
    import paddle

    from plsc import distributed
    from plsc.config.tree import Config
    from plsc.engine.build import build_head
    from plsc.loss.combined import CombinedLoss
    from plsc.loss.inputs import LossInputs

    pfc, entries = SETTINGS[name]
    rank = distributed.rank()
    model = {"name": "IResNet", "num_features": DIM, "class_num": NUM_CLASSES,
             "pfc_config": {"sample_ratio": 1.0, "model_parallel": True, **pfc}}
    head = build_head(Config(model), SEED)
    loss = CombinedLoss(entries)
    tables = loss.attach(head)
    results = []
    # One process takes the whole global batch; a rank its own rows.
    mine = (slice(rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK) if distributed.world_size() > 1
            else slice(None))
    for step in range(STEPS):
        embeddings, labels, group_logits = global_batch(batch_world, step)
        x = paddle.to_tensor(embeddings[mine], stop_gradient=False)
        groups = paddle.to_tensor(group_logits[mine], stop_gradient=False)
        label_tensor = paddle.to_tensor(labels[mine])
        cos, local_labels = head(x, label_tensor)
        total, _ = loss(LossInputs(cos, local_labels, x, label_tensor, head, FakeGroupBackbone(groups)))
        total.backward()
        result = {"loss": float(total), "grad_x": x.grad.numpy(), "class_start": head.class_start,
                  "head_grad": head.sampled_weight.grad.numpy(), "head_weight": head.weight.numpy()}
        if groups.grad is not None:
            result["grad_groups"] = groups.grad.numpy()
        for position, table in enumerate(tables):
            result[f"table{position}_index"] = table.sampled_index.numpy()
            result[f"table{position}_grad"] = table.sampled_weight.grad.numpy()
        for key, buffers in loss.state_dict().items():
            for buffer_name, value in buffers.items():
                result[f"state_{key}_{buffer_name}"] = value
        results.append(result)
    return results


if __name__ == "__main__":
    from tests.multirank_worker import save_every_setting

    save_every_setting(sys.argv[1], SETTINGS, run_setting)
