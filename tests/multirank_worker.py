"""The main of a worker script that paddle.distributed.launch runs on each rank of a 2-rank test."""
from pathlib import Path

import numpy as np


def save_every_setting(out_dir, settings, run_setting):
    """On this rank: run_setting(name, world_size) -> [result dict per step] for each setting, each
    result saved as `{out_dir}/{name}_step{k}_rank{r}.npz` for the test to compare across ranks."""
    from plsc import distributed  # before Paddle: plsc sets the CPU thread variables first

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    distributed.init()
    for name in settings:
        for step, result in enumerate(run_setting(name, distributed.world_size())):
            np.savez(Path(out_dir) / f"{name}_step{step}_rank{distributed.rank()}.npz", **result)


def launch_and_collect(worker, root, settings, steps, world=2):
    """Launch `worker` (a script calling save_every_setting) on `world` ranks; read back what it saved.

    Returns {(setting, step): [rank 0 result, rank 1 result, ...]}.
    """
    from tests.conftest import launch

    launch(worker, [root / "out"], nproc=world, log_dir=root / "log")
    return {(name, step): [dict(np.load(root / "out" / f"{name}_step{step}_rank{rank}.npz")) for rank in range(world)]
            for name in settings for step in range(steps)}


def close(actual, expected, rel=1e-5):
    """Equal to `rel` of the expected values' scale (so entries near 0 are not held to a relative bound)."""
    np.testing.assert_allclose(actual, expected, rtol=rel, atol=rel * max(np.abs(expected).max(), 1e-6))
