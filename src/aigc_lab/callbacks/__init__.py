from aigc_lab.callbacks.checkpoint import ModelCheckpoint
from aigc_lab.callbacks.memory import ReleaseFreedMemory
from aigc_lab.callbacks.preemption import Preemption
from aigc_lab.callbacks.progress import LogProgress, progress_bar
from aigc_lab.callbacks.rng_state import RNGState
from aigc_lab.callbacks.startup import StartupTimer
from aigc_lab.callbacks.throughput import Throughput
from aigc_lab.callbacks.time_budget import TimeBudget

__all__ = ["LogProgress", "ModelCheckpoint", "Preemption", "progress_bar", "ReleaseFreedMemory", "RNGState",
           "StartupTimer", "Throughput", "TimeBudget"]
