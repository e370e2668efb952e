"""CPU thread settings that must be in the environment before Paddle is imported.

Paddle computes on one thread unless OMP_NUM_THREADS says otherwise, and MKL takes a slow code
path on AMD CPUs unless MKL_DEBUG_CPU_TYPE=5 is set (measured on a 2-core AMD machine: sgemm
37 -> 187 GFLOP/s). We only fill in what the user (or paddle.distributed.launch)
has not set, so an explicit setting always wins.
"""
import os


def usable_cores():
    """Cores this process may run on (its CPU affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def configure_cpu_threads(environ=os.environ):
    """Set OMP_NUM_THREADS to this process's share of the cores and MKL's AMD fast path, if unset."""
    # Several ranks on one machine share its cores: paddle.distributed.launch tells us how many.
    ranks_on_node = int(environ.get("PADDLE_LOCAL_SIZE", "1") or 1)
    environ.setdefault("OMP_NUM_THREADS", str(max(1, usable_cores() // ranks_on_node)))
    environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")
    return int(environ["OMP_NUM_THREADS"])
