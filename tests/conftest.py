"""Shared test helpers: a 2-rank CPU launcher for model-parallel tests."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds (still runs in CI)")
    config.addinivalue_line("markers", "multiprocess: spawns ranks with paddle.distributed.launch")


def launch(script, args=(), nproc=2, log_dir=None, timeout=600):
    """Run `script` under paddle.distributed.launch on CPU (gloo); fail with the rank logs on error.

    Returns the text of every rank's log, rank order.
    """
    log_dir = Path(log_dir)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    # An empty CUDA_VISIBLE_DEVICES makes the launcher see one GPU with a blank id; unset it instead.
    env.pop("CUDA_VISIBLE_DEVICES", None)
    command = [sys.executable, "-m", "paddle.distributed.launch", f"--nproc_per_node={nproc}",
               f"--log_dir={log_dir}", str(script), *map(str, args)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    logs = [(log_dir / f"workerlog.{r}").read_text() if (log_dir / f"workerlog.{r}").exists() else ""
            for r in range(nproc)]
    if result.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited {result.returncode}\n"
                    + "\n".join(f"--- rank {r}\n{log[-4000:]}" for r, log in enumerate(logs))
                    + f"\n--- launcher\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return logs
