"""Every private name of Lightning, Hydra or torch that the package relies on, with where and why: an upgrade
that renames or drops one fails ``tests/test_private_apis.py`` by name instead of breaking a run.

Each entry: (module, attribute path or None for the module itself, where it is used, why no public API does).
"""

from __future__ import annotations

PRIVATE_APIS: tuple[tuple[str, str | None, str, str], ...] = (
    ("lightning.pytorch.strategies.launchers.subprocess_script", "_hydra_subprocess_cmd", "utils/ddp.py",
     "Lightning's DDP launcher starts ranks 1..N-1 by re-running the Hydra command line, which under --multirun "
     "re-runs the whole sweep; replacing this function is the only way to start one rank of this job"),
    ("lightning.pytorch.trainer.connectors.logger_connector.logger_connector", "_LoggerConnector.should_update_logs",
     "systems/step_logs.py", "whether this step's logs are written (log_every_n_steps): the GAN skips its "
     "per-step metrics otherwise, since each self.log costs a share of its small step"),
    ("lightning.fabric.utilities.seed", "_collect_rng_states", "callbacks/rng_state.py",
     "the torch, CUDA, numpy and python random states that Lightning restores for its own loops but not in "
     "checkpoints; the same helper keeps the format Lightning uses"),
    ("lightning.fabric.utilities.seed", "_set_rng_states", "callbacks/rng_state.py", "their restore on resume"),
    ("lightning.pytorch.callbacks.throughput_monitor", "ThroughputMonitor.setup", "callbacks/throughput.py",
     "the monitor keeps one Throughput per stage in ``_throughputs`` (set in setup), whose available_flops must "
     "take a device peak that Lightning's table lacks (dense H200)"),
    ("hydra._internal.utils", "get_args_parser", "resume.py",
     "the parser @hydra.main reads the command line with: a resume rewrites that command line before Hydra "
     "starts, and must split it exactly as Hydra will"),
    ("lightning.pytorch.trainer.connectors.checkpoint_connector", None, "utils/signals.py",
     "a signal's message names the stage 'restoring the checkpoint' by the module Lightning restores in"),
)
