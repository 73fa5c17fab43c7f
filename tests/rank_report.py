"""A test-only callback for tests that run several ranks or jobs (tests/test_multinode.py, test_shared_sweeps.py):
at the end of fit, every process writes what it trained to ``$RANK_REPORT_DIR/<pid>.json`` (outside the run dir,
which rank zero alone may write): its global rank and step, a digest of its model's weights, its system's
hyperparameters, the ``CUDA_VISIBLE_DEVICES`` it saw and when its fit started and ended."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import lightning as L


class RankReport(L.Callback):
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.time()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        digest = hashlib.sha256()
        for name, tensor in sorted(pl_module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        hparams = {k: v for k, v in pl_module.hparams.items() if isinstance(v, (int, float, str, bool))}
        report = {"rank": trainer.global_rank, "step": trainer.global_step, "digest": digest.hexdigest(),
                  "hparams": hparams, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                  "started": self.started, "ended": time.time()}
        (Path(os.environ["RANK_REPORT_DIR"]) / f"{os.getpid()}.json").write_text(json.dumps(report))
