"""A test-only callback for the multi-node tests (tests/test_multinode.py): at the end of fit, every rank writes a
digest of its model's weights to ``$WEIGHTS_DIGEST_DIR/rank<global rank>.txt`` (outside the run dir, which rank
zero alone may write), so the test can compare the ranks."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import lightning as L


class WeightsDigest(L.Callback):
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        digest = hashlib.sha256()
        for name, tensor in sorted(pl_module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        out = Path(os.environ["WEIGHTS_DIGEST_DIR"]) / f"rank{trainer.global_rank}.txt"
        out.write_text(f"{trainer.global_step} {digest.hexdigest()}\n")
