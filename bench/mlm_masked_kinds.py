"""Validation loss of masked-LM runs split by what each masked position shows the model: ``[MASK]`` (80%),
a random token (10%) or the token itself (10%). A copying shortcut would show as a low loss on the last kind.

    AIGC_DATA_DIR=../shared/data python bench/mlm_masked_kinds.py <run dir> [<run dir> ...]

Each run dir's saved config builds its data module (the same validation masks as its training run), its last
checkpoint the model.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from aigc_lab.checkpoints import last_checkpoint
from aigc_lab.data.masking import IGNORE_INDEX
from aigc_lab.data.tokenizer import MASK
from aigc_lab.eval import load_run_config
from aigc_lab.systems.mlm import MLMSystem

KINDS = ("[MASK]", "random", "kept")


def loss_by_kind(run: Path) -> dict[str, tuple[float, float, int]]:
    """kind -> (mean loss, accuracy, positions) over the run's validation set."""
    data = instantiate(load_run_config(run, []).data)
    data.prepare_data()
    data.setup("validate")
    system = MLMSystem.load_from_checkpoint(last_checkpoint(run), map_location="cpu", weights_only=False)
    net = system.model.eval()
    mask_id = data.tokenizer.token_to_id(MASK)
    sums = torch.zeros(len(KINDS), 3)  # per kind: loss sum, hits, positions
    with torch.no_grad():
        for batch in data.val_dataloader():
            masked = batch["labels"] != IGNORE_INDEX  # [B, T]
            logits = net(batch["input_ids"], batch.get("attention_mask"), positions=masked).float()  # [M, V]
            labels, shown = batch["labels"][masked], batch["input_ids"][masked]  # [M]
            loss = F.cross_entropy(logits, labels, reduction="none")
            hits = (logits.argmax(-1) == labels).float()
            kind = torch.where(shown == mask_id, 0, torch.where(shown == labels, 2, 1))  # index into KINDS
            for k in range(len(KINDS)):
                sel = kind == k
                sums[k] += torch.stack([loss[sel].sum(), hits[sel].sum(), sel.sum().float()])
    means = sums[:, :2] / sums[:, 2:]  # a kind with no position: nan
    return {name: (m[0].item(), m[1].item(), int(s[2])) for name, m, s in zip(KINDS, means, sums)}


def main() -> None:
    for run in map(Path, sys.argv[1:]):
        kinds = loss_by_kind(run)
        total = sum(n for _, _, n in kinds.values())
        cells = [f"{name} {n / total:.1%}: loss {loss:.3f} acc {acc:.3f}" for name, (loss, acc, n) in kinds.items()]
        print(f"{run}: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
