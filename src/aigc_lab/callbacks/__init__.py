from aigc_lab.callbacks.rng_state import RNGState
from aigc_lab.callbacks.startup import StartupTimer
from aigc_lab.callbacks.throughput import Throughput

__all__ = ["RNGState", "StartupTimer", "Throughput"]
