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
