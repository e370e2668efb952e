"""Global.accum_steps: K micro-batches of b make exactly the update of one batch of K x b when no
layer depends on the batch (1 and 2 ranks), and the row-sparse gradients of the micro-batches merge
into one update of the union of their rows."""
import numpy as np
import paddle
import pytest
import yaml

import tests.engine.linear_backbone  # noqa: F401  (registers LinearFace)
from plsc.checkpoint import checkpoint_prefix, read_global_table
from plsc.config import load_config
from plsc.engine.trainer import Trainer
from plsc.optim.optimizer import merge_row_gradients
from plsc.serialization import load_state
from tests.conftest import REPO_ROOT, launch
from tests.multirank_worker import close
from tests.engine.tiny_run import record_losses, write_tiny_config, write_tiny_data

LINEAR = {"Model.name": "LinearFace", "Global.eval_during_train": False, "Global.epochs": 1,
          "Model.pfc_config.model_parallel": True, "Optimizer.momentum": 0.9}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    write_tiny_data(root)  # 12 identities x 10 images
    return root


def linear_config(directory, data_root, batch_size, accum_steps):
    """The tiny config with LinearFace (the IResNet's depth and width keys removed)."""
    config = write_tiny_config(directory, data_root, {
        **LINEAR, "DataLoader.Train.sampler.batch_size": batch_size, "Global.accum_steps": accum_steps})
    tree = yaml.safe_load(config.read_text())
    del tree["Model"]["layers"], tree["Model"]["widths"]
    config.write_text(yaml.safe_dump(tree, sort_keys=False))
    return config


def run(directory, data_root, batch_size, accum_steps, steps=5):
    config = linear_config(directory, data_root, batch_size, accum_steps)
    trainer = Trainer(load_config(str(config), [f"Global.max_train_step={steps}"]))
    losses = record_losses(trainer)
    trainer.train()
    return trainer, losses, config


def test_micro_batches_make_the_update_of_the_whole_batch(tmp_path, data_root):
    whole, whole_losses, _ = run(tmp_path / "whole", data_root, 16, 1)
    split, split_losses, _ = run(tmp_path / "split", data_root, 8, 2)
    assert whole.steps_per_epoch == split.steps_per_epoch == 7  # 120 images: 7 steps of 16
    np.testing.assert_allclose(split_losses, whole_losses, rtol=1e-5, atol=1e-5)
    # To 1e-5 of each table's scale: the centres reach |w| ~ 40 here, where one float32 ulp is 4e-6,
    # and summing two micro-batches' gradients rounds differently from one batch's.
    close(split.backbone.fc.weight.numpy(), whole.backbone.fc.weight.numpy())
    close(split.task.head.weight.numpy(), whole.task.head.weight.numpy())
    velocity = {name: run_.optimizer.sparse_state_dict()["head0"]["velocity"].numpy() for name, run_ in
                (("whole", whole), ("split", split))}
    close(velocity["split"], velocity["whole"])


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_ranks_with_micro_batches_equal_one_rank_with_the_whole_batch(tmp_path, data_root):
    whole, _, _ = run(tmp_path / "whole", data_root, 16, 1)
    config = linear_config(tmp_path / "ranks", data_root, 4, 2)
    launch(REPO_ROOT / "tests" / "engine" / "_worker_accum.py", [config, "Global.max_train_step=5"],
           log_dir=tmp_path / "launch")
    checkpoint = tmp_path / "ranks" / "output" / "LinearFace" / "latest"
    weights = load_state(f"{checkpoint_prefix(checkpoint)}.pdparams")
    np.testing.assert_allclose(weights["backbone.fc.weight"], whole.backbone.fc.weight.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(read_global_table(checkpoint), whole.task.head.weight.numpy(), rtol=1e-5, atol=1e-5)
    assert load_state(f"{checkpoint_prefix(checkpoint)}.pdstates")["global_step"] == 5


def test_row_gradients_of_micro_batches_merge_over_the_union():
    rng = np.random.default_rng(0)
    parts = [(np.array([1, 4, 7]), rng.standard_normal((3, 2))), (np.array([0, 4]), rng.standard_normal((2, 2))),
             (np.array([7]), rng.standard_normal((1, 2)))]
    union, merged, _ = merge_row_gradients([(paddle.to_tensor(rows), paddle.to_tensor(grad.astype(np.float32)), None)
                                            for rows, grad in parts])
    expected = np.zeros((8, 2))
    for rows, grad in parts:
        expected[rows] += grad
    np.testing.assert_array_equal(union.numpy(), [0, 1, 4, 7])
    np.testing.assert_allclose(merged.numpy(), expected[[0, 1, 4, 7]], rtol=1e-6)
