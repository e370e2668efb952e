"""SIGKILL at every file-system step of a save, then resume: the run finds the last complete
checkpoint and continues with exactly the losses of an uninterrupted run."""
import json
import os
import re
import subprocess
import sys

import pytest

from tests.engine.tiny_run import REPO_ROOT, write_tiny_config, write_tiny_data

STEPS_PER_EPOCH, EPOCHS = 3, 3  # 120 images, global batch 40; a `latest` save after every epoch
SAVE_INDEX = 2  # the save at step 6: step 3's checkpoint is the previous complete one


def run(config, losses, kill_at, *overrides):
    command = [sys.executable, "-m", "tests.engine._kill_during_save", str(config), str(losses),
               "--save", str(SAVE_INDEX), "--kill-at", str(kill_at)]
    for override in overrides:
        command += ["-o", override]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300)


@pytest.mark.slow
def test_a_killed_save_never_loses_the_last_checkpoint(tmp_path):
    data_root = tmp_path / "data"
    write_tiny_data(data_root)
    changes = {"Global.epochs": EPOCHS, "Global.eval_during_train": False,
               "DataLoader.Train.sampler.batch_size": 40, "LRScheduler.warmup_steps": 1}
    reference_config = write_tiny_config(tmp_path / "reference", data_root, changes)
    counted = run(reference_config, tmp_path / "reference.json", -1)
    assert counted.returncode == 0, counted.stderr[-3000:]
    reference = {int(step): loss for step, loss in json.loads((tmp_path / "reference.json").read_text()).items()}
    assert sorted(reference) == list(range(1, STEPS_PER_EPOCH * EPOCHS + 1))
    (steps,) = map(int, re.findall(r"^STEPS (\d+)$", counted.stdout, re.M))
    assert steps >= 10  # staging dir, 5 files (open, fsync, rename, directory fsync each), rename, link

    for kill_at in range(steps):
        work = tmp_path / f"kill{kill_at}"
        config = write_tiny_config(work, data_root, changes)
        killed = run(config, work / "unused.json", kill_at)
        assert killed.returncode == -9, (kill_at, killed.stderr[-3000:])
        output = work / "output" / "IResNet"
        latest = output / "latest"
        # The save being written never replaced the previous checkpoint before it was complete.
        assert latest.is_dir(), (kill_at, sorted(os.listdir(output)))
        resumed = run(config, work / "resumed.json", -1, f"Global.checkpoint={latest}")
        assert resumed.returncode == 0, (kill_at, resumed.stderr[-3000:])
        losses = {int(step): loss for step, loss in json.loads((work / "resumed.json").read_text()).items()}
        first = min(losses)
        assert first in (STEPS_PER_EPOCH + 1, 2 * STEPS_PER_EPOCH + 1), (kill_at, first)
        assert losses == pytest.approx({step: reference[step] for step in losses}, rel=1e-6, abs=1e-6), kill_at
        assert max(losses) == STEPS_PER_EPOCH * EPOCHS
        # The resumed run removed what the killed save left behind.
        leftovers = [name for name in os.listdir(output) if name.endswith(".tmp") or re.search(r"\.tmp\d+$", name)]
        assert not leftovers, (kill_at, leftovers)
        names = sorted(os.listdir(output))
        assert names == ["latest", os.readlink(latest), "train.log"], (kill_at, names)
