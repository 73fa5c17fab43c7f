"""Fill-mask inference from a masked-LM checkpoint alone (it holds the config and the tokenizer)."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer

from aigc_lab.checkpoints import sub_state_dict
from aigc_lab.data.tokenizer import MASK, SPECIAL_TOKENS, tokenizer_from_json
from aigc_lab.errors import UserError
from aigc_lab.models.mlm import MaskedLM, MLMConfig

Prediction = list[tuple[str, float]]  # (token, probability), best first


def load_mlm(ckpt: dict) -> tuple[MaskedLM, Tokenizer]:
    """The masked LM of a checkpoint, in eval mode, and its tokenizer."""
    if "mlm_config" not in ckpt or not ckpt.get("tokenizer_json"):
        raise UserError("this checkpoint is not a masked LM's (no mlm_config/tokenizer_json): give an mlm_* checkpoint")
    model = MaskedLM(MLMConfig(**ckpt["mlm_config"]))
    model.load_state_dict(sub_state_dict(ckpt["state_dict"], "model."))
    return model.eval(), tokenizer_from_json(ckpt["tokenizer_json"])


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
