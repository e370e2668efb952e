"""plsc: large-scale face recognition on PaddlePaddle."""
from plsc.cpu_threads import configure_cpu_threads

# Before anything imports paddle: thread counts are read once, when Paddle loads.
configure_cpu_threads()

__version__ = "3.0.0"
