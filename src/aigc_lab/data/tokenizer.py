"""Tokenizers trained with Hugging Face ``tokenizers`` on the training split, cached by a hash of their
inputs so that a second run loads them instead of training again.

- The masked LM's WordPiece: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4 (``SPECIAL_TOKENS``).
- The seq2seq model's joint byte-level BPE over source and target text: [PAD]=0 [UNK]=1 [BOS]=2 [EOS]=3
  (``SEQ2SEQ_SPECIAL_TOKENS``); and, for the synthetic task, a fixed symbol-level vocabulary.

Special tokens come first, so their ids are fixed.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Literal

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from aigc_lab.data.shards import Job, decode, line_ranges
from aigc_lab.errors import CorpusError, DataNotFoundError, UserError
from aigc_lab.utils.validate import at_least, at_most, require

log = logging.getLogger(__name__)

PAD, UNK, CLS, SEP, MASK = SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
BOS, EOS = "[BOS]", "[EOS]"
SEQ2SEQ_SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)
MAX_VOCAB = 2**31 - 1  # token ids are int32 tensors (and int32 in the token caches)


class TokenizedData:
    """What the token data modules share: the tokenizer that ``setup`` loads, its size and special ids."""

    tokenizer: Tokenizer | None

    @property
    def vocab_size(self) -> int:
        if self.tokenizer is None:
            raise RuntimeError("the tokenizer is loaded in setup(): call it first")
        return self.tokenizer.get_vocab_size()

    def special_id(self, token: str) -> int:
        return self.tokenizer.token_to_id(token)


def check_tokenizer_options(vocab_size: int, min_frequency: int, num_workers: int, specials: Sequence[str],
                            least: int | None = None, why: str = "") -> None:
    """The tokenizer options both text data modules take (``data.vocab_size``, ``data.min_frequency``, and their
    loader's ``data.num_workers``), checked before any data work. ``least``: a larger lower bound of the
    vocabulary, and ``why`` (a byte-level BPE holds its 256 byte symbols)."""
    n_special = len(specials)
    require(vocab_size > n_special, "data.vocab_size", vocab_size, f"> {n_special} (the special tokens)")
    if least is not None:
        require(vocab_size >= least, "data.vocab_size", vocab_size, f">= {least} {why}")
    at_most("data.vocab_size", vocab_size, MAX_VOCAB, "token ids are cached as int32")
    at_least("data.min_frequency", min_frequency, 0)
    at_least("data.num_workers", num_workers, 0)
TOKENIZER_FORMAT = 1  # part of the cache key: bump when the pipeline below changes meaning


def file_fingerprint(paths: Sequence[Path]) -> list[tuple[str, int, int]]:
    """(absolute path, size, mtime in ns) of each file: what the caches are keyed by."""
    out = []
    for path in paths:
        stat = Path(path).stat()
        out.append((str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns))
    return out


def cache_key(*parts: object) -> str:
    """A short stable hash of JSON-serializable parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def read_text(path: Path) -> str:
    """A UTF-8 text file, whole (small files; corpora are streamed: ``text_chunks``), after ``check_utf8``."""
    check_utf8(path)
    return Path(path).read_bytes().decode("utf-8", errors="replace")


def text_chunks(paths: Sequence[Path]) -> Iterator[str]:
    """The files' text in pieces of whole lines (data/shards.py ``CHUNK_BYTES``), one piece in memory at a time;
    each file passes ``check_utf8`` first."""
    for path in paths:
        check_utf8(path)
        for start, end in line_ranges(path):
            yield decode(Job(str(path), start, end, "").read())[0]


def check_utf8(path: Path) -> None:
    """Is the file UTF-8 text? A few undecodable bytes (stray bytes in a big corpus) become U+FFFD and are counted
    in a warning; a file in another encoding is a CorpusError that names the first bad byte: more than one
    undecodable sequence per 1,000 bytes, a UTF-16 byte-order mark, or NUL bytes near the start. Streamed: the
    file is read one chunk at a time."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4096)
    convert = f"-t utf-8 {path} > {path.with_suffix('.utf8' + path.suffix)}"
    nul = head.find(b"\x00")  # ASCII text in UTF-16/32 has them everywhere
    if nul >= 0 or head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        where = f"a NUL byte at offset {nul}" if nul >= 0 else "a UTF-16 byte-order mark at offset 0"
        raise CorpusError(f"{path} is not UTF-8 text ({where}: UTF-16, UTF-32 or binary?). "
                          f"Convert it: iconv -f utf-16 {convert}")
    replaced, first, first_line, lines_before = 0, -1, 0, 0
    for start, end in line_ranges(path):
        raw = Job(str(path), start, end, "").read()
        _, bad = decode(raw)
        if bad and first < 0:
            offset = _first_bad(raw)
            first, first_line = start + offset, lines_before + raw.count(b"\n", 0, offset) + 1
        replaced += bad
        lines_before += raw.count(b"\n")
    if replaced > path.stat().st_size // 1000:
        with open(path, "rb") as f:
            f.seek(first)
            byte = f.read(1)[0]
        raise CorpusError(f"{path} is not UTF-8 text: byte 0x{byte:02x} at offset {first} (line {first_line}) and "
                          f"{replaced - 1} more cannot be decoded. Convert it: iconv -f <its encoding, e.g. latin1> "
                          f"{convert}")
    if replaced:
        log.warning("%s is not valid UTF-8: %d undecodable byte sequence(s) replaced by U+FFFD (the first at byte %d)",
                    path, replaced, first)


def _first_bad(raw: bytes) -> int:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return err.start
    return -1


def build_wordpiece(lowercase: bool = False) -> Tokenizer:
    """An untrained BERT-style pipeline: BERT normalizer, whitespace/punctuation split, WordPiece."""
    tok = Tokenizer(models.WordPiece(unk_token=UNK))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, lowercase=lowercase, strip_accents=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def train_wordpiece(
    texts: Iterable[str], vocab_size: int, min_frequency: int = 2, lowercase: bool = False
) -> Tokenizer:
    """Train on an iterable of documents; encode() then adds [CLS] ... [SEP] like BERT."""
    tok = build_wordpiece(lowercase)
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    tok.train_from_iterator(_line_batches(texts), trainer=trainer)
    cls_id, sep_id = tok.token_to_id(CLS), tok.token_to_id(SEP)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}", pair=f"{CLS} $A {SEP} $B:1 {SEP}:1", special_tokens=[(CLS, cls_id), (SEP, sep_id)]
    )
    return tok


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2, lowercase: bool = False) -> Tokenizer:
    """Byte-level BPE (GPT-2 style) for translation: any character can be encoded (the 256 byte symbols
    are in the vocabulary, so nothing is [UNK]) and decoding gives the text back, NFC-normalized.
    Special tokens are not added by encode(): the data module puts [BOS]/[EOS] where they belong."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()]) if lowercase \
        else normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)  # "word" at the start = " word" inside
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SEQ2SEQ_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_line_batches(texts), trainer=trainer)
    return tok


def symbol_tokenizer(symbols: Sequence[str]) -> Tokenizer:
    """A fixed vocabulary of whitespace-separated symbols after the seq2seq special tokens (the synthetic task):
    "3 a 7" -> one id per symbol; decoding joins the symbols with single spaces."""
    vocab = {token: i for i, token in enumerate([*SEQ2SEQ_SPECIAL_TOKENS, *symbols])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins tokens with spaces (no symbol starts with ##)
    tok.add_special_tokens(list(SEQ2SEQ_SPECIAL_TOKENS))  # already in the vocabulary: marks them special
    return tok


def _line_batches(texts: Iterable[str], size: int = 2000) -> Iterator[list[str]]:
    for text in texts:
        lines = text.splitlines()
        for start in range(0, len(lines), size):
            yield lines[start : start + size]


def check_special_tokens(tok: Tokenizer, source: str, specials: Sequence[str] = SPECIAL_TOKENS) -> Tokenizer:
    missing = [t for t in specials if tok.token_to_id(t) is None]
    if missing:
        raise UserError(f"tokenizer {source} lacks the special tokens {missing}: it needs {list(specials)}")
    return tok


def load_tokenizer(path: str | Path, specials: Sequence[str] = SPECIAL_TOKENS) -> Tokenizer:
    """A saved tokenizer.json (e.g. from a run dir), checked for the special tokens."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataNotFoundError(f"tokenizer not found: {path} (data.tokenizer_path: give a saved tokenizer.json)")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises its own Exception type on bad JSON
        raise UserError(f"cannot read tokenizer {path}: {err}") from None
    return check_special_tokens(tok, str(path), specials)


def tokenizer_from_json(text: str, specials: Sequence[str] = SPECIAL_TOKENS) -> Tokenizer:
    return check_special_tokens(Tokenizer.from_str(text), "from the checkpoint", specials)


def load_or_train_tokenizer(
    train_files: Sequence[Path],
    read_corpus: Callable[[], Iterable[str]],
    cache_dir: str | Path,
    vocab_size: int,
    min_frequency: int = 2,
    lowercase: bool = False,
    kind: Literal["wordpiece", "bpe"] = "wordpiece",
) -> Path:
    """The cached tokenizer file for these training files and settings, training it on a miss.

    The key hashes the files' paths, sizes and mtimes with the settings, so an edited corpus or a new
    vocabulary size trains a new tokenizer while a repeated run reuses the old one.
    """
    settings = {"vocab_size": vocab_size, "min_frequency": min_frequency, "lowercase": lowercase,
                "format": TOKENIZER_FORMAT}
    if kind != "wordpiece":  # WordPiece keys stay as they were: existing caches remain valid
        settings["kind"] = kind
    path = Path(cache_dir).expanduser() / "tokenizers" / f"{cache_key(file_fingerprint(train_files), settings)}.json"
    if path.is_file():
        log.info("Reusing the cached tokenizer %s", path)
        return path
    name = {"wordpiece": "WordPiece", "bpe": "byte-level BPE"}[kind]
    log.info("Training a %s tokenizer (vocab %d) on %d file(s)", name, vocab_size, len(train_files))
    train = train_bpe if kind == "bpe" else train_wordpiece
    tok = train(read_corpus(), vocab_size, min_frequency, lowercase)
    atomic_write(path, lambda tmp: tok.save(str(tmp)))
    log.info("Saved the tokenizer (%d tokens) to %s", tok.get_vocab_size(), path)
    return path


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
