"""The class layer's CPU kernels: numpy on Paddle's own memory, and the switch that selects them.

On CPU the class layer's step (cosine logits, margin softmax, their backward, the sparse update)
is a few large matmuls and passes over [N, S] and [S, D] arrays. Paddle's CPU element-wise kernels
run far below this machine's memory bandwidth and each fresh 200 MB tensor pays page faults, while
numpy (OpenBLAS matmuls, ufuncs with `out=`) on the same memory does the same arithmetic 2-3x
faster (docs/bench_head.md). DLPack shares the memory both ways, so nothing is copied.

Each kernel that uses this has its pure-Paddle reference beside it. The reference runs on GPU
(where Paddle's fused kernels are the fast path), for other dtypes, when the environment sets
PLSC_CPU_KERNELS=0, and inside `reference_only()`, which the tests use to hold the two equal.
"""
import contextlib
import os

import numpy as np
import paddle

ENV_SWITCH = "PLSC_CPU_KERNELS"
# Rows per round where a kernel makes several passes over [rows, D] arrays: ~2 MB per array, so
# the passes after the first run in cache, not memory (each numpy ufunc call is one pass). On the
# 2-core EPYC, 10k x 512 rows: the centres' gradient 15.6 ms in 2 MB chunks vs 18.9 ms in 16 MB.
CACHE_CHUNK_BYTES = 2 * 2**20
_enabled = {"value": os.environ.get(ENV_SWITCH, "1").strip() != "0"}


def applies(*tensors):
    """True when the numpy kernels run on these tensors: switched on, every one float32 on the CPU."""
    if not _enabled["value"]:
        return False
    return all(tensor.dtype == paddle.float32 and tensor.place.is_cpu_place() for tensor in tensors)


@contextlib.contextmanager
def reference_only():
    """Run the pure-Paddle reference kernels inside this block."""
    previous = _enabled["value"]
    _enabled["value"] = False
    try:
        yield
    finally:
        _enabled["value"] = previous


def as_numpy(tensor):
    """A numpy view of a CPU tensor's memory (writes go through): no copy."""
    return np.from_dlpack(tensor.detach())


def as_tensor(array):
    """A Paddle CPU tensor on a numpy array's memory (stop_gradient=True): no copy."""
    return paddle.from_dlpack(np.ascontiguousarray(array))


def same_memory(first, second):
    """True when two CPU tensors start at the same address (one was written over the other)."""
    if not (first.place.is_cpu_place() and second.place.is_cpu_place()):
        return False
    return as_numpy(first).ctypes.data == as_numpy(second).ctypes.data


class Workspace:
    """Named arrays kept across steps, so each step writes into memory it already touched.

    A fresh 200 MB array costs this CPU ~0.15-0.25 s of first-touch page faults, more than the
    arithmetic done on it. An array is handed out again while the requested size fits, so its
    contents are valid only until the next request of the same name: the step that wrote it must
    have used it by then (the optimizer copies what it keeps across micro-batches).
    """

    def __init__(self):
        self._arrays = {}

    def array(self, name, shape, dtype=np.float32):
        """A C-contiguous array of `shape`, the same memory as the last request of `name` when it fits."""
        size = int(np.prod(shape))
        held = self._arrays.get(name)
        if held is None or held.size < size or held.dtype != np.dtype(dtype):
            held = self._arrays[name] = np.empty(max(size, 1), dtype=dtype)
        return held[:size].reshape(shape)

    def __deepcopy__(self, memo):
        return Workspace()  # buffers are scratch: a copy of a layer starts with its own
