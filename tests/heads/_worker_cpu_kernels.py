"""Rank worker of test_cpu_kernels: each pair with the CPU kernels and with the reference, model parallel.

Usage (under paddle.distributed.launch): python _worker_cpu_kernels.py OUT_DIR
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.heads.kernel_cases import run_steps  # noqa: E402
from tests.heads.test_cpu_kernels import TWO_RANK_SETTINGS  # noqa: E402
from tests.multirank_worker import save_every_setting  # noqa: E402


def run_setting(name, world_size):
    from plsc import distributed

    pair, kind = name.rsplit("_", 1)
    return run_steps(pair, reference=kind == "reference", sample_ratio=0.3, model_parallel=True,
                     world=world_size, rank=distributed.rank())


if __name__ == "__main__":
    save_every_setting(sys.argv[1], [f"{pair}_{kind}" for pair in TWO_RANK_SETTINGS
                                     for kind in ("fast", "reference")], run_setting)
