"""2 CPU ranks: sharded, sampled class layer trains, checkpoints per rank, and resumes on 1 process."""
import re

import os
import subprocess
import sys

import numpy as np
import pytest

from plsc.checkpoint import checkpoint_prefix
from plsc.config import load_config
from plsc.engine.trainer import Trainer
from plsc.serialization import load_state
from tests.conftest import REPO_ROOT, launch
from tests.engine.tiny_run import record_losses, write_tiny_config, write_tiny_data

LOSS = re.compile(r"global_step: (\d+), .* loss: ([0-9.]+)")


def logged_losses(log):
    return {int(step): float(loss) for step, loss in LOSS.findall(log)}


def rank_files(checkpoint, ranks=(0, 1)):
    """Each rank's class-layer shard {class_start, num_local_classes, weight} and its momentum rows."""
    prefix = checkpoint_prefix(checkpoint)
    shards = [load_state(f"{prefix}_rank{rank}.pdparams")["tables"]["head"] for rank in ranks]
    momenta = [load_state(f"{prefix}_rank{rank}.pdopt")["tables"]["head"]["velocity"] for rank in ranks]
    return shards, momenta


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
    shards, momenta = rank_files(checkpoint)
    assert [shard["num_local_classes"] for shard in shards] == [6, 6]
    assert [shard["class_start"] for shard in shards] == [0, 6]

    # One process, the same global batch of 16: the full class layer is the two shards stacked.
    resumed = Trainer(load_config(str(config), [f"Global.checkpoint={checkpoint}",
                                                "DataLoader.Train.sampler.batch_size=16"]))
    assert resumed.state["global_step"] == 30 and resumed.state["epoch"] == 3
    np.testing.assert_array_equal(resumed.task.head.weight.numpy(),
                                  np.concatenate([shard["weight"] for shard in shards]))
    velocity = resumed.optimizer.sparse_state_dict()["head0"]["velocity"].numpy()
    np.testing.assert_array_equal(velocity, np.concatenate(momenta))
    resumed_losses = record_losses(resumed)
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
    full_weight = first.task.head.weight.numpy()
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
    shards, momenta = rank_files(checkpoint)
    assert [s["class_start"] for s in shards] == [0, 5] and [s["num_local_classes"] for s in shards] == [5, 5]
    np.testing.assert_array_equal(np.concatenate([s["weight"] for s in shards]), full_weight)
    np.testing.assert_array_equal(np.concatenate(momenta), velocity)

    # And training goes on from there on two ranks.
    logs = launch(REPO_ROOT / "tools" / "train.py", two_ranks + ["-o", "Global.max_train_step=6"],
                  log_dir=tmp_path / "launch_train")
    assert sorted(logged_losses(logs[0])) == [5, 6]
    assert load_state(f"{checkpoint_prefix(checkpoint)}_rank1.pdparams")["global_step"] == 6


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_data_error_on_one_rank_stops_both_with_one_message_and_saves_once(tmp_path):
    data_root = tmp_path / "data"
    write_tiny_data(data_root, num_classes=6, images_per_class=8, num_pairs=20)
    config = write_tiny_config(tmp_path, data_root, {"Global.eval_during_train": False, "Global.epochs": 3,
                                                     "DataLoader.Train.sampler.batch_size": 8}, num_classes=6)
    lines = (data_root / "train" / "label.txt").read_text().splitlines()
    relative = lines[30].split()[0]
    (data_root / "train" / relative).write_bytes(b"not an image")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    result = subprocess.run([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node=2",
                             f"--log_dir={tmp_path / 'launch'}", str(REPO_ROOT / "tools" / "train.py"),
                             "-c", str(config)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    errors = []
    for rank in (0, 1):
        log = (tmp_path / "launch" / f"workerlog.{rank}").read_text()
        errors.append([line for line in log.splitlines() if line.startswith("plsc-train: error:")])
        assert "\nTraceback (most recent call last)" not in log, log[-3000:]  # (Paddle's C++ one is not ours)
    assert len(errors[0]) == 1 and errors[0] == errors[1], errors
    assert relative in errors[0][0] and "label.txt:31" in errors[0][0] and "Global.checkpoint=" in errors[0][0]
    # Progress was saved once, by both ranks together: a complete 2-rank checkpoint at the failing step.
    step = int(re.search(r"stopped at global step (\d+)", errors[0][0]).group(1))
    states = load_state(f"{checkpoint_prefix(tmp_path / 'output' / 'IResNet' / 'latest')}.pdstates")
    assert states["global_step"] == step and states["world_size"] == 2
