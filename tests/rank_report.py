"""A test-only callback for tests that run several ranks (tests/test_multinode.py, test_shared_sweeps.py): at the
end of fit, every rank writes what it trained to ``$RANK_REPORT_DIR/rank<global rank>.json`` (outside the run dir,
which rank zero alone may write): its global step, a digest of its model's weights and its system's
hyperparameters, so the test can compare the ranks."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import lightning as L


class RankReport(L.Callback):
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        digest = hashlib.sha256()
        for name, tensor in sorted(pl_module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        hparams = {k: v for k, v in pl_module.hparams.items() if isinstance(v, (int, float, str, bool))}
        report = {"step": trainer.global_step, "digest": digest.hexdigest(), "hparams": hparams}
        (Path(os.environ["RANK_REPORT_DIR"]) / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))
