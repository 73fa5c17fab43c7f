"""BERT's masking, as a DataLoader collate function (picklable, runs in worker processes).

Of the non-special tokens, each is picked with probability ``mask_rate``; a picked token becomes
[MASK] 80% of the time, a random non-special token 10%, and stays unchanged 10%. Labels are the
original ids at picked positions and -100 (ignored) everywhere else.

Randomness: training batches draw from a generator seeded with ``torch.initial_seed()`` of the
process that collates, i.e. the run seed (``seed_everything``) in the main process and the per-worker
seed that PyTorch/Lightning derive from it in workers, so runs repeat under the same seed. Evaluation
collators get a fixed ``seed`` instead: each sample is masked by a generator seeded from
``(seed, sample index)``, so the validation set is masked identically in every epoch and every run,
whatever the batch size or number of workers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch.utils.data import get_worker_info

IGNORE_INDEX = -100  # cross-entropy's ignore_index: positions that carry no label

Rows = torch.Tensor | Sequence[torch.Tensor]  # [B, T] blocks, or B 1-D sequences of varying length


class MaskingCollator:
    """(sample indices [B], rows) -> {"input_ids" [B, T], "labels" [B, T], "attention_mask" [B, T] if padded}."""

    def __init__(
        self,
        vocab_size: int,
        mask_id: int,
        pad_id: int,
        special_ids: Sequence[int],
        mask_rate: float = 0.15,
        seed: int | None = None,
    ) -> None:
        if not 0.0 < mask_rate < 1.0:
            raise ValueError(f"mask_rate must be in (0, 1), got {mask_rate}")
        self.mask_rate = mask_rate
        self.mask_id, self.pad_id = mask_id, pad_id
        self.special_ids = torch.tensor(sorted(set(special_ids) | {mask_id, pad_id}))
        is_special = torch.zeros(vocab_size, dtype=torch.bool)
        is_special[self.special_ids] = True
        self.random_pool = torch.nonzero(~is_special).squeeze(1)  # ids a random replacement may take
        if len(self.random_pool) == 0:
            raise ValueError(f"vocab_size {vocab_size} leaves no non-special token to draw")
        self.seed = seed
        self._gen: torch.Generator | None = None
        self._gen_owner: tuple[int, int] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_gen": None, "_gen_owner": None}  # generators are per process

    def __call__(self, batch: tuple[torch.Tensor, Rows]) -> dict[str, torch.Tensor]:
        index, rows = batch
        input_ids, attention_mask = self.pad(rows)
        draws = self._uniform(index, input_ids.shape)  # [3, B, T]
        out = self.mask(input_ids, draws)
        if attention_mask is not None:
            out["attention_mask"] = attention_mask
        return out

    def pad(self, rows: Rows) -> tuple[torch.Tensor, torch.Tensor | None]:
        """int64 ids [B, T] and the attention mask [B, T] (True = token), None when nothing is padded."""
        if isinstance(rows, torch.Tensor):
            return rows.long(), None
        lengths = torch.tensor([len(r) for r in rows])
        longest = int(lengths.max())
        ids = torch.full((len(rows), longest), self.pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
        if bool((lengths == longest).all()):
            return ids, None
        return ids, torch.arange(longest)[None, :] < lengths[:, None]

    def mask(self, input_ids: torch.Tensor, draws: torch.Tensor) -> dict[str, torch.Tensor]:
        """Apply 80/10/10 masking to ids [B, T] given uniform draws [3, B, T] in [0, 1)."""
        eligible = ~torch.isin(input_ids, self.special_ids)  # never specials, never pads
        picked = eligible & (draws[0] < self.mask_rate)
        labels = torch.where(picked, input_ids, IGNORE_INDEX)
        to_mask = picked & (draws[1] < 0.8)
        to_random = picked & (draws[1] >= 0.8) & (draws[1] < 0.9)  # the last 10% stay unchanged
        random_ids = self.random_pool[(draws[2] * len(self.random_pool)).long().clamp_(max=len(self.random_pool) - 1)]
        masked = torch.where(to_mask, self.mask_id, input_ids)
        masked = torch.where(to_random, random_ids, masked)
        return {"input_ids": masked, "labels": labels}

    def _uniform(self, index: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        b, t = shape
        if self.seed is None:
            return torch.rand(3, b, t, generator=self._generator())
        # Evaluation: a pure function of (seed, sample index) per row; drawn [T, 3] so that a position's
        # draws do not depend on how far the batch is padded.
        gen = torch.Generator()
        rows = [torch.rand(t, 3, generator=gen.manual_seed(self.seed * 1_000_003 + int(i))).T for i in index]
        return torch.stack(rows, dim=1)

    def _generator(self) -> torch.Generator:
        info = get_worker_info()
        owner = (os.getpid(), info.id if info is not None else -1)
        if self._gen is None or self._gen_owner != owner:  # fresh in each (forked) worker
            self._gen = torch.Generator().manual_seed(torch.initial_seed())
            self._gen_owner = owner
        return self._gen
