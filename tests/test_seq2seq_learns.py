"""The seq2seq model learns the synthetic reversal task in a short CPU run (plain torch loop, tiny model)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from aigc_lab.data.parallel import ParallelDataModule, detokenize
from aigc_lab.data.tokenizer import BOS, EOS, PAD
from aigc_lab.models.decoding import greedy_decode
from aigc_lab.models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer

pytestmark = pytest.mark.usefixtures("single_thread")
MAX_STEPS, EVAL_EVERY, TARGET = 1200, 100, 0.95  # stops as soon as the target is reached


@torch.no_grad()
def exact_match(model: Seq2SeqTransformer, dm: ParallelDataModule, batches: list[dict]) -> float:
    model.eval()
    hits = total = 0
    for batch in batches:
        ids = greedy_decode(model, batch["src"], batch["src_mask"], dm.special_id(BOS), dm.special_id(EOS), 12)
        hits += sum(h == r for h, r in zip(detokenize(dm.tokenizer, ids), batch["reference"]))
        total += len(ids)
    model.train()
    return hits / total


def test_learns_to_reverse():
    torch.manual_seed(0)
    dm = ParallelDataModule(task="synthetic", max_len=10, max_tokens=1024, eval_max_tokens=4096,
                            synthetic_train_size=20000, synthetic_val_size=200, synthetic_test_size=10,
                            synthetic_min_len=2, synthetic_max_len=6, synthetic_symbols=8)
    dm.setup("fit")
    val = list(dm.val_dataloader())
    model = Seq2SeqTransformer(Seq2SeqConfig(vocab_size=dm.vocab_size, n_enc_layers=2, n_dec_layers=2, d_model=64,
                                             n_heads=4, max_len=10, dropout=0.0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.98), weight_decay=0.0)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 50))
    loader = dm.train_dataloader()  # each pass is a new epoch: a new order
    pad, step, best, history = dm.special_id(PAD), 0, 0.0, []
    while step < MAX_STEPS and best < TARGET:
        for batch in loader:
            logits = model(batch["src"], batch["src_mask"], batch["tgt_in"])  # [B, T, V]
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), batch["tgt_out"].view(-1), ignore_index=pad)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            warmup.step()
            step += 1
            if step % EVAL_EVERY == 0:
                best = max(best, exact_match(model, dm, val))
                history.append((step, round(loss.item(), 3), best))
                if best >= TARGET or step >= MAX_STEPS:
                    break
    assert best >= 0.9, history
