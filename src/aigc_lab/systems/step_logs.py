"""Which training steps' logged scalars reach the loggers.

Lightning writes a step's ``self.log`` values to the loggers only every ``trainer.log_every_n_steps`` batches
(and on the last step, and on every step under ``fast_dev_run``); on the other steps a logged value only
refreshes the progress bar. Each ``self.log`` call still costs Lightning its result bookkeeping, a visible share
of a short GAN step per value (BENCHMARKS.md, measured by bench/overhead_paired.py). A system whose steps are
that short logs its per-step scalars on the written steps only; the progress bar then shows the values of the
last written step.
"""

from __future__ import annotations

import lightning as L


def logs_written_this_step(module: L.LightningModule) -> bool:
    """True when the values that ``module`` logs in this training step will be written to its loggers."""
    trainer = module.trainer
    # Lightning's own test (its logger connector's), so the steps chosen here are exactly the written ones.
    return bool(trainer.fast_dev_run) or trainer._logger_connector.should_update_logs
