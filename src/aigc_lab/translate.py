"""Translation from a seq2seq checkpoint alone (it holds the model config and the tokenizer)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence

import torch
from tokenizers import Tokenizer

from aigc_lab.checkpoints import sub_state_dict
from aigc_lab.data.parallel import detokenize, encode_texts
from aigc_lab.data.tokenizer import BOS, EOS, PAD, SEQ2SEQ_SPECIAL_TOKENS, tokenizer_from_json
from aigc_lab.errors import UserError
from aigc_lab.models.decoding import search
from aigc_lab.models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer


def load_seq2seq(ckpt: dict) -> tuple[Seq2SeqTransformer, Tokenizer]:
    """The seq2seq model of a checkpoint, in eval mode, and its tokenizer."""
    if "seq2seq_config" not in ckpt or not ckpt.get("tokenizer_json"):
        raise UserError("this checkpoint is not a seq2seq model's (no seq2seq_config/tokenizer_json): "
                        "give a seq2seq_* checkpoint")
    model = Seq2SeqTransformer(Seq2SeqConfig(**ckpt["seq2seq_config"]))
    model.load_state_dict(sub_state_dict(ckpt["state_dict"], "model."))
    return model.eval(), tokenizer_from_json(ckpt["tokenizer_json"], SEQ2SEQ_SPECIAL_TOKENS)


def check_search(model: Seq2SeqTransformer, beam_size: int, max_len: int | None, batch_size: int) -> None:
    """The search settings against the model: a beam of 1 to vocabulary-size hypotheses, at least one sentence per
    batch, a length cap of at most the model's position table."""
    vocab = model.cfg.vocab_size
    if beam_size < 1:
        raise UserError(f"beam_size must be >= 1, got {beam_size}")
    if beam_size > vocab:
        raise UserError(f"beam_size must be <= this model's vocabulary ({vocab} tokens), got {beam_size}: "
                        f"a beam of 4 or 5 is usual")
    if batch_size < 1:
        raise UserError(f"translate_batch_size must be >= 1, got {batch_size}")
    if max_len is not None and not 1 <= max_len <= model.cfg.max_len:
        raise UserError(f"max_len must be in [1, {model.cfg.max_len}] (this model's longest target) or null, "
                        f"got {max_len}")


@torch.no_grad()
def translate(
    model: Seq2SeqTransformer,
    tokenizer: Tokenizer,
    sentences: Sequence[str],
    beam_size: int = 4,
    length_penalty: float = 1.0,
    max_len: int | None = None,
    batch_size: int = 64,
) -> list[str]:
    """One translation per sentence, in order (an empty line stays empty). Sources longer than the model's
    ``max_len`` are cut (with a note on stderr); hypotheses have at most ``max_len`` tokens (default: the
    model's), and at most 2 x the source length + 10."""
    check_search(model, beam_size, max_len, batch_size)
    out, cut = _translate_block(model, tokenizer, sentences, beam_size, length_penalty, max_len, batch_size)
    _note_cut(cut, model)
    return out


def translate_stream(
    model: Seq2SeqTransformer,
    tokenizer: Tokenizer,
    lines: Iterable[str],
    beam_size: int = 4,
    length_penalty: float = 1.0,
    max_len: int | None = None,
    batch_size: int = 64,
    window: int | None = None,
) -> Iterator[list[str]]:
    """``translate`` over an iterable of lines, read and answered ``window`` lines at a time (default: 16
    batches, sorted by length within it): yields each window's translations, in order, so memory holds one
    window whatever the input's length. One note on stderr at the end counts the sources that were cut."""
    check_search(model, beam_size, max_len, batch_size)
    window = window or 16 * batch_size
    cut = 0
    for block in _windows(lines, window):
        out, n = _translate_block(model, tokenizer, block, beam_size, length_penalty, max_len, batch_size)
        cut += n
        yield out
    _note_cut(cut, model)


def _windows(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    block: list[str] = []
    for line in lines:
        block.append(line)
        if len(block) == size:
            yield block
            block = []
    if block:
        yield block


def _note_cut(cut: int, model: Seq2SeqTransformer) -> None:
    if cut:
        print(f"note: {cut} sentence(s) longer than {model.cfg.max_len - 1} tokens were cut to fit the model",
              file=sys.stderr)


def _translate_block(model: Seq2SeqTransformer, tokenizer: Tokenizer, sentences: Sequence[str], beam_size: int,
                     length_penalty: float, max_len: int | None, batch_size: int) -> tuple[list[str], int]:
    """(the translations of ``sentences``, in order; how many sources were cut to the model's length)."""
    pad, bos, eos = (tokenizer.token_to_id(t) for t in (PAD, BOS, EOS))
    limit = model.cfg.max_len - 1  # room for [EOS]
    ids = encode_texts(tokenizer, [s.strip() for s in sentences])
    cut = sum(len(x) > limit for x in ids)
    ids = [x[:limit] + [eos] for x in ids]
    out = [""] * len(sentences)
    todo = sorted((i for i, s in enumerate(sentences) if s.strip()), key=lambda i: len(ids[i]))  # similar lengths
    for start in range(0, len(todo), batch_size):
        rows = todo[start : start + batch_size]
        s = max(len(ids[i]) for i in rows)
        src = torch.full((len(rows), s), pad, dtype=torch.long)  # [B, S]
        src_mask = torch.zeros(len(rows), s, dtype=torch.bool)
        for r, i in enumerate(rows):
            src[r, : len(ids[i])] = torch.tensor(ids[i])
            src_mask[r, : len(ids[i])] = True
        cap = min(max_len or model.cfg.max_len, 2 * s + 10)
        hyps = search(model, src, src_mask, bos, eos, cap, beam_size, length_penalty)
        for i, text in zip(rows, detokenize(tokenizer, hyps)):
            out[i] = text
    return out, cut
