"""2 CPU ranks: sharded, sampled class layer trains, checkpoints per rank, and resumes on 1 process."""
import re

import numpy as np
import paddle
import pytest

from plsc.config import load_config
from plsc.engine.trainer import Trainer
from tests.conftest import REPO_ROOT, launch
from tests.engine.tiny_run import write_tiny_config, write_tiny_data

LOSS = re.compile(r"global_step: (\d+), .* loss: ([0-9.]+)")


def logged_losses(log):
    return {int(step): float(loss) for step, loss in LOSS.findall(log)}


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_ranks_partial_fc_train_then_resume_on_one(tmp_path):
    data_root = tmp_path / "data"
    write_tiny_data(data_root, num_classes=12, images_per_class=12, num_pairs=40)
    changes = {"Model.pfc_config.sample_ratio": 0.5, "Model.pfc_config.model_parallel": True,
               "Global.eval_during_train": False, "Global.epochs": 4,
               "DataLoader.Train.sampler.batch_size": 8}
    config = write_tiny_config(tmp_path, data_root, changes)
    # 144 images, global batch 2 x 8 = 16: 9 steps per epoch, 36 in all; stop after 30.
    logs = launch(REPO_ROOT / "tools" / "train.py", ["-c", config, "-o", "Global.max_train_step=30"],
                  log_dir=tmp_path / "launch")
    losses = logged_losses(logs[0])
    assert sorted(losses) == list(range(1, 31))
    assert np.mean([losses[s] for s in (28, 29, 30)]) < 0.8 * np.mean([losses[s] for s in (1, 2, 3)])

    checkpoint = tmp_path / "output" / "IResNet" / "latest"
    shards = [paddle.load(f"{checkpoint}_rank{rank}.pdparams") for rank in (0, 1)]
    assert [shard["num_local_classes"] for shard in shards] == [6, 6]
    assert [shard["class_start"] for shard in shards] == [0, 6]
    momenta = [paddle.load(f"{checkpoint}_rank{rank}.pdopt")["sparse"]["head0"]["velocity"] for rank in (0, 1)]

    # One process, the same global batch of 16: the full class layer is the two shards stacked.
    resumed = Trainer(load_config(str(config), [f"Global.checkpoint={checkpoint}",
                                                "DataLoader.Train.sampler.batch_size=16"]))
    assert resumed.state["global_step"] == 30 and resumed.state["epoch"] == 3
    np.testing.assert_array_equal(resumed.head.weight.numpy(),
                                  np.concatenate([shard["weight"].numpy() for shard in shards]))
    velocity = resumed.optimizer.sparse_state_dict()["head0"]["velocity"].numpy()
    np.testing.assert_array_equal(velocity, np.concatenate([m.numpy() for m in momenta]))
    resumed_losses = []
    step = resumed.train_step
    resumed.train_step = lambda images, labels: (lambda out: (resumed_losses.append(float(out[0])), out)[1])(
        step(images, labels))
    resumed.train()
    assert len(resumed_losses) == 6
    # It continues the trained model rather than restarting: far below the first losses.
    assert np.mean(resumed_losses) < 0.8 * np.mean([losses[s] for s in (1, 2, 3)])


@pytest.mark.slow
@pytest.mark.multiprocess
def test_one_rank_checkpoint_resumes_on_two(tmp_path):
    data_root = tmp_path / "data"
    write_tiny_data(data_root, num_classes=10, images_per_class=8, num_pairs=40)
    changes = {"Model.pfc_config.sample_ratio": 0.5, "Global.eval_during_train": False,
               "DataLoader.Train.sampler.batch_size": 16, "Model.class_num": 10}
    config = write_tiny_config(tmp_path, data_root, changes, num_classes=10)
    first = Trainer(load_config(str(config), ["Global.max_train_step=4"]))
    first.train()
    full_weight = first.head.weight.numpy()
    checkpoint = tmp_path / "output" / "IResNet" / "latest"
    velocity = first.optimizer.sparse_state_dict()["head0"]["velocity"].numpy()
    checkpoint = tmp_path / "output" / "IResNet" / "latest"
    two_ranks = ["-c", config, "-o", f"Global.checkpoint={checkpoint}",
                 "-o", "DataLoader.Train.sampler.batch_size=8"]  # the same global batch: 2 x 8
    # Resume on two ranks with nothing left to train: the re-saved checkpoint is the 1-rank state,
    # resharded (class_num 10 splits 5 + 5).
    logs = launch(REPO_ROOT / "tools" / "train.py", two_ranks + ["-o", "Global.max_train_step=4"],
                  log_dir=tmp_path / "launch_reshard")
    assert "resumed from" in logs[0]
    shards = [paddle.load(f"{checkpoint}_rank{rank}.pdparams") for rank in (0, 1)]
    assert [s["class_start"] for s in shards] == [0, 5] and [s["num_local_classes"] for s in shards] == [5, 5]
    np.testing.assert_array_equal(np.concatenate([s["weight"].numpy() for s in shards]), full_weight)
    momenta = [paddle.load(f"{checkpoint}_rank{rank}.pdopt")["sparse"]["head0"]["velocity"] for rank in (0, 1)]
    np.testing.assert_array_equal(np.concatenate([m.numpy() for m in momenta]), velocity)

    # And training goes on from there on two ranks.
    logs = launch(REPO_ROOT / "tools" / "train.py", two_ranks + ["-o", "Global.max_train_step=6"],
                  log_dir=tmp_path / "launch_train")
    assert sorted(logged_losses(logs[0])) == [5, 6]
    assert paddle.load(f"{checkpoint}_rank1.pdparams")["global_step"] == 6
