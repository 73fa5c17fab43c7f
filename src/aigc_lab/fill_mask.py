"""Fill-mask inference from a masked-LM checkpoint alone (it holds the config and the tokenizer):
``python -m aigc_lab.generate ckpt_path=<mlm run> text="The [MASK] module" top_k=5`` (the masked LM spec's
inference entry, ``run``)."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig
from tokenizers import Tokenizer

from aigc_lab.data.tokenizer import MASK, SPECIAL_TOKENS
from aigc_lab.errors import UserError
from aigc_lab.models.mlm import MaskedLM
from aigc_lab.systems.mlm import MLMSystem

load_mlm = MLMSystem.load_for_inference  # (MaskedLM, Tokenizer) of a checkpoint
Prediction = list[tuple[str, float]]  # (token, probability), best first


@torch.no_grad()
def fill_mask(model: MaskedLM, tokenizer: Tokenizer, text: str, top_k: int = 5) -> list[Prediction]:
    """Top-k (token, probability) for each [MASK] in ``text``, left to right; special tokens are never proposed."""
    if top_k <= 0:
        raise UserError(f"top_k must be positive, got {top_k}")
    ids = tokenizer.encode(text).ids  # [CLS] ... [SEP]
    mask_id = tokenizer.token_to_id(MASK)
    if mask_id not in ids:
        raise UserError(f"text has no {MASK} token to fill: {text!r}")
    if len(ids) > model.cfg.max_len:
        raise UserError(f"text is {len(ids)} tokens long; this model reads at most {model.cfg.max_len}")
    input_ids = torch.tensor([ids])  # [1, T]
    logits = model(input_ids, positions=input_ids == mask_id).float()  # [masks, V]
    logits[:, [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]] = float("-inf")
    probs, idx = logits.softmax(dim=-1).topk(min(top_k, logits.shape[-1] - len(SPECIAL_TOKENS)), dim=-1)
    return [
        [(tokenizer.id_to_token(j), p) for j, p in zip(row_idx, row_p)]
        for row_idx, row_p in zip(idx.tolist(), probs.tolist())
    ]


def format_predictions(text: str, predictions: list[Prediction]) -> str:
    lines = [text]
    for n, candidates in enumerate(predictions, start=1):
        lines.append(f"{MASK} {n}:")
        lines += [f"  {rank}. {token:<20} {p:.4f}" for rank, (token, p) in enumerate(candidates, start=1)]
    return "\n".join(lines)


def run(cfg: DictConfig, ckpt: dict, ckpt_path: Path) -> None:
    """``generate``'s entry for a masked-LM checkpoint: the top-k tokens of each [MASK] of ``text``, printed."""
    if not cfg.get("text"):
        raise UserError('this is a masked-LM checkpoint: it needs text="... [MASK] ..." (and optionally top_k=5); '
                        'images need a GAN checkpoint (gan_mnist), translations a seq2seq one')
    model, tokenizer = load_mlm(ckpt)
    print(format_predictions(cfg.text, fill_mask(model, tokenizer, cfg.text, cfg.top_k)))
