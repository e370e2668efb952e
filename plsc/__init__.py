"""plsc: large-scale face recognition on PaddlePaddle."""
import contextlib
import io
import sys
import warnings

from plsc.cpu_threads import configure_cpu_threads

# Before anything imports paddle: thread counts are read once, when Paddle loads.
configure_cpu_threads()
# Paddle warns at import that ccache (for compiling C++ extensions) is missing; plsc compiles none.
warnings.filterwarnings("ignore", message="No ccache found")



@contextlib.contextmanager
def _without_thread_warning():
    """Drop the two lines Paddle prints at import whenever OMP_NUM_THREADS > 1.

    They say data parallelism will be slow; here each rank gets its share of the cores
    (cpu_threads.py), which is the setting the warning asks for, so it only misleads.
    """
    captured, original = io.StringIO(), sys.stderr
    sys.stderr = captured
    try:
        yield
    finally:
        sys.stderr = original
        kept = [line for line in captured.getvalue().splitlines(keepends=True)
                if "OMP_NUM_THREADS set to" not in line and "USE OMP_NUM_THREADS WISELY" not in line]
        original.write("".join(kept))


if "paddle" not in sys.modules:
    with _without_thread_warning():
        import paddle  # noqa: F401

__version__ = "3.0.0"
