"""Translation from a seq2seq checkpoint alone (it holds the model config and the tokenizer):
``python -m aigc_lab.generate ckpt_path=<seq2seq run> text="..."`` prints one translation, ``input=FILE
[out=FILE]`` translates a file line by line, streamed: ``translate_batch_size x 16`` lines are read, translated
and written (to ``out`` through a temporary file, else to stdout) at a time, with progress. ``beam_size=4``
(1 = greedy, at most the vocabulary) and ``length_penalty=1.0`` steer the search, ``max_len`` (at most the
model's) caps a translation. The memory of one batch of beams is checked first. ``run`` is the seq2seq spec's
inference entry."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig
from tokenizers import Tokenizer

from aigc_lab.callbacks.progress import LoopProgress
from aigc_lab.data.parallel import detokenize, encode_texts
from aigc_lab.data.tokenizer import BOS, EOS, PAD
from aigc_lab.errors import UserError
from aigc_lab.models.decoding import search
from aigc_lab.models.seq2seq import Seq2SeqTransformer
from aigc_lab.systems.seq2seq import Seq2SeqSystem
from aigc_lab.utils.memory import Need, Part, check_memory, memory_limit
from aigc_lab.utils.paths import ensure_dir

load_seq2seq = Seq2SeqSystem.load_for_inference  # (Seq2SeqTransformer, Tokenizer) of a checkpoint


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
    windows = translate_stream(model, tokenizer, sentences, beam_size, length_penalty, max_len, batch_size,
                               window=max(1, len(sentences)))  # one window: sorted by length over all of them
    return [line for block in windows for line in block]


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


def run(cfg: DictConfig, ckpt: dict, ckpt_path: Path) -> Path | None:
    """``generate``'s entry for a seq2seq checkpoint (the module docstring)."""
    text, source = cfg.get("text"), cfg.get("input")
    if (text is None) == (source is None):
        raise UserError('this is a seq2seq checkpoint: it needs text="..." or input=FILE (and optionally out=FILE), '
                        'not both; images need a GAN checkpoint (gan_mnist), fill-mask an mlm_* one')
    path = Path(source).expanduser() if source is not None else None
    if path is not None and not path.is_file():
        raise UserError(f"input file not found: {path}")
    model, tokenizer = load_seq2seq(ckpt)
    check_search(model, cfg.beam_size, cfg.max_len, cfg.translate_batch_size)
    check_memory(translate_needs(model, cfg), memory_limit())
    if path is None:
        lines, total = [str(text)], 1
    else:
        lines, total = _lines(path), sum(1 for _ in _lines(path))
    out = Path(cfg.out).expanduser() if path is not None and cfg.out else None
    if out is not None:
        ensure_dir(out.parent, "the translations (out=)")
    blocks = translate_stream(model, tokenizer, lines, cfg.beam_size, cfg.length_penalty, cfg.max_len,
                              cfg.translate_batch_size)
    with LoopProgress(total, "lines", "translating", cfg.progress_every) as progress:
        blocks = progress.track(blocks, size=len)
        if out is None:
            for block in blocks:
                print("\n".join(block), flush=True)
            return None
        write_lines(blocks, out)
    print(f"translated {total} line(s) from {path} to {out}")
    return out


def _lines(path: Path) -> Iterator[str]:
    """The lines of a UTF-8 file (undecodable bytes replaced), read one at a time."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            yield line.removesuffix("\n")


def write_lines(blocks: Iterator[list[str]], out: Path) -> None:
    """Each block's lines, appended as they come to a temporary file beside ``out`` that replaces it at the end."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for block in blocks:
                f.write("".join(f"{line}\n" for line in block))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def translate_needs(model: torch.nn.Module, cfg: DictConfig) -> list[Need]:
    """Memory of one batch: the encoder over translate_batch_size sources of the model's longest length, and beam
    search over batch x beam hypotheses with their key/value cache (utils/memory.py)."""
    from aigc_lab.utils.memory import VALUE_BYTES, TransformerShape, beam_search_parts, param_count, transformer_parts

    shape, params = TransformerShape.of(model.cfg), param_count(model)
    source = model.cfg.max_len
    target = min(cfg.max_len or source, source)

    def parts(sizes: dict[str, int]) -> list[Part]:
        batch, beam = sizes["translate_batch_size"], sizes["beam_size"]
        rows = batch * beam
        return [*transformer_parts(shape, params, batch, source, training=False, state_bytes=VALUE_BYTES),
                *beam_search_parts(shape, rows, rows * (source + target), model.cfg.vocab_size)]

    return [Need("one batch of translations", {"translate_batch_size": cfg.translate_batch_size,
                                               "beam_size": cfg.beam_size}, parts)]
