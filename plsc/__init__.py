"""plsc: large-scale face recognition on PaddlePaddle."""
import warnings

from plsc.cpu_threads import configure_cpu_threads

# Before anything imports paddle: thread counts are read once, when Paddle loads.
configure_cpu_threads()
# Paddle warns at import that ccache (for compiling C++ extensions) is missing; plsc compiles none.
warnings.filterwarnings("ignore", message="No ccache found")

__version__ = "3.0.0"
