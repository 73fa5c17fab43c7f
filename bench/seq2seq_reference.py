"""Translation quality at the same budget: the PyTorch tutorial's ``torch.nn.Transformer`` recipe trained by a
plain loop on the preset's data and tokenizer, beside our trained run, both scored by one routine on the test
split (sacreBLEU BLEU and chrF on detokenized text, as ``systems/seq2seq.py`` logs them).

    AIGC_DATA_DIR=../shared/data .venv/bin/python bench/seq2seq_reference.py --minutes 25 \\
        --ours outputs/seq2seq_en_fr/runs/<time>
    .venv/bin/python bench/seq2seq_reference.py --ours RUN_DIR --skip-reference        # our rows only
    .venv/bin/python bench/seq2seq_reference.py --tiny                                  # seconds, synthetic task

The reference follows the tutorial "Language Translation with nn.Transformer" (pytorch.org/tutorials): token
embedding scaled by sqrt(d_model), sinusoidal positions, ``nn.Transformer`` (post-LayerNorm) with 3+3 layers,
d_model 512, 8 heads, feed-forward 512, dropout 0.1, Xavier-uniform init, a separate output layer, Adam
(lr 1e-4, betas 0.9/0.98, eps 1e-9), batches of 128 random pairs, cross entropy over non-pad targets, greedy
decoding up to source length + 5 tokens. Same as ours: the pairs (the preset's datamodule, the same skipped
lines), the cached joint BPE tokenizer, [BOS]/[EOS]/[PAD], and bf16 autocast when the preset trains in
``bf16-mixed`` (``--fp32`` for the tutorial's fp32). It trains for ``--minutes`` of wall clock (or ``--steps``),
then decodes in fp32.

Our run is scored from its best checkpoint with beam search (the preset's beam size and length penalty) and
greedily, so the table also separates the model from the decoder.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from aigc_lab.data.parallel import ParallelDataModule, detokenize
from aigc_lab.data.tokenizer import BOS, EOS, PAD
from aigc_lab.models.decoding import search
from aigc_lab.systems.seq2seq import corpus_scores
from aigc_lab.translate import load_seq2seq
from aigc_lab.utils.paths import conf_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the preset, e.g. data.test_file=...")
    p.add_argument("--experiment", default=None, help="default seq2seq_en_fr (seq2seq_synthetic with --tiny)")
    p.add_argument("--minutes", type=float, default=None, help="the reference's training budget (default 25)")
    p.add_argument("--steps", type=int, default=None,
                   help="train for exactly N steps instead (a budget measured alone, when the machine is shared)")
    p.add_argument("--save", default=None, help="save the trained reference's state_dict here before decoding")
    p.add_argument("--ours", default=None, help="our run dir (best checkpoint) or .ckpt, scored alike")
    p.add_argument("--skip-reference", action="store_true", help="score --ours only")
    p.add_argument("--fp32", action="store_true", help="train the reference in fp32 even for a bf16-mixed preset")
    p.add_argument("--batch-size", type=int, default=128, help="the reference's pairs per batch (tutorial: 128)")
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--ffn", type=int, default=512)
    p.add_argument("--layers", type=int, default=3, help="encoder and decoder layers each")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--limit-test", type=int, default=None, help="score the first N test pairs only")
    p.add_argument("--tiny", action="store_true", help="synthetic preset, 10 s of training, tiny reference")
    args = p.parse_args(argv)
    args.experiment = args.experiment or ("seq2seq_synthetic" if args.tiny else "seq2seq_en_fr")
    args.minutes = args.minutes if args.minutes is not None else (10 / 60 if args.tiny else 25.0)
    if args.tiny:
        args.d_model, args.heads, args.ffn, args.layers = 64, 4, 128, 2
    if args.skip_reference and not args.ours:
        p.error("--skip-reference needs --ours")
    return args


# ---------------------------------------------------------------- the tutorial's model
class PositionalEncoding(nn.Module):
    """Adds sin/cos positions to x [B, T, D], then dropout (the tutorial's module, batch first)."""

    def __init__(self, d_model: int, dropout: float, max_len: int = 512) -> None:
        super().__init__()
        pos = torch.arange(max_len)[:, None]
        den = torch.exp(-torch.arange(0, d_model, 2) * math.log(10000.0) / d_model)
        table = torch.zeros(max_len, d_model)
        table[:, 0::2], table[:, 1::2] = torch.sin(pos * den), torch.cos(pos * den)
        self.register_buffer("table", table)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(x + self.table[: x.shape[1]])


class TutorialTransformer(nn.Module):
    """src [B, S], tgt_in [B, T] -> logits [B, T, V], with key padding masks from the pad id."""

    def __init__(self, vocab: int, d_model: int, heads: int, ffn: int, layers: int, pad_id: int) -> None:
        super().__init__()
        self.pad_id, self.d_model = pad_id, d_model
        self.src_emb, self.tgt_emb = nn.Embedding(vocab, d_model), nn.Embedding(vocab, d_model)
        self.positions = PositionalEncoding(d_model, 0.1)
        self.transformer = nn.Transformer(d_model, heads, layers, layers, ffn, 0.1, batch_first=True)
        self.generator = nn.Linear(d_model, vocab)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def embed(self, emb: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        return self.positions(emb(ids) * math.sqrt(self.d_model))

    def encode(self, src: torch.Tensor) -> torch.Tensor:
        return self.transformer.encoder(self.embed(self.src_emb, src), src_key_padding_mask=src == self.pad_id)

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        causal = nn.Transformer.generate_square_subsequent_mask(tgt_in.shape[1], dtype=torch.bool)
        h = self.transformer.decoder(self.embed(self.tgt_emb, tgt_in), memory, tgt_mask=causal,
                                     tgt_key_padding_mask=tgt_in == self.pad_id,
                                     memory_key_padding_mask=src == self.pad_id)
        return self.generator(h)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        return self.decode(tgt_in, self.encode(src), src)


@torch.no_grad()
def tutorial_greedy(model: TutorialTransformer, src: torch.Tensor, bos: int, eos: int) -> list[list[int]]:
    """The tutorial's greedy decoding (up to source length + 5 tokens), batched over sentences."""
    memory = model.encode(src)
    tokens = src.new_full((src.shape[0], 1), bos)
    ended = torch.zeros(src.shape[0], dtype=torch.bool)
    for _ in range(src.shape[1] + 5):
        next_ids = model.decode(tokens, memory, src)[:, -1].argmax(dim=-1)
        tokens = torch.cat([tokens, next_ids[:, None]], dim=1)
        ended |= next_ids == eos
        if bool(ended.all()):
            break
    rows = tokens[:, 1:].tolist()
    return [row[: row.index(eos)] if eos in row else row for row in rows]


# ---------------------------------------------------------------- training and scoring
def autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def train_reference(args: argparse.Namespace, dm: ParallelDataModule, bf16: bool, seed: int) -> tuple:
    torch.manual_seed(seed)
    pad, bos, eos = dm.special_id(PAD), dm.special_id(BOS), dm.special_id(EOS)
    model = TutorialTransformer(dm.vocab_size, args.d_model, args.heads, args.ffn, args.layers, pad)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.98), eps=1e-9)
    train = dm.datasets["train"]
    collate = dm.train_dataloader().collate_fn  # the same [BOS]/[EOS]/padding as ours
    loader = torch.utils.data.DataLoader(train, batch_size=args.batch_size, shuffle=True, collate_fn=collate)
    model.train()
    steps, tokens, start = 0, 0, time.perf_counter()
    deadline = start + 60 * args.minutes if args.steps is None else float("inf")

    def done() -> bool:
        return steps >= args.steps if args.steps is not None else time.perf_counter() >= deadline

    while not done():
        for batch in loader:
            with autocast(bf16):
                logits = model(batch["src"], batch["tgt_in"])
            loss = F.cross_entropy(logits.float().flatten(0, 1), batch["tgt_out"].flatten(), ignore_index=pad)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            tokens += int((batch["tgt_out"] != pad).sum())
            if steps % 200 == 0:
                print(f"  reference step {steps}: loss {loss.item():.3f}, {time.perf_counter() - start:.0f} s",
                      flush=True)
            if done():
                break
    seconds = time.perf_counter() - start
    model.eval()
    if args.save:
        torch.save(model.state_dict(), args.save)

    def decode(batch: dict) -> list[list[int]]:
        # fp32, as the tutorial decodes (nn.Transformer's inference fast path has no bf16 autocast on CPU)
        return tutorial_greedy(model, batch["src"], bos, eos)

    return decode, {"steps": steps, "minutes": seconds / 60, "tokens_per_s": tokens / seconds,
                    "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def score(decode, dm: ParallelDataModule, limit: int | None) -> dict[str, float]:
    """One routine for every row: translate the test loader's batches, score the detokenized text."""
    hypotheses, references, start = [], [], time.perf_counter()
    for batch in dm.test_dataloader():
        hypotheses += detokenize(dm.tokenizer, decode(batch))
        references += batch["reference"]
        if limit is not None and len(references) >= limit:
            break
    out = corpus_scores(hypotheses, references)
    out.update(sentences=len(references), decode_s=time.perf_counter() - start)
    return out


def load_ours(path: str, dm: ParallelDataModule, bf16: bool) -> tuple[dict, dict]:
    from aigc_lab.checkpoints import load_checkpoint, resolve_checkpoint

    ckpt = load_checkpoint(resolve_checkpoint(path))
    model, tokenizer = load_seq2seq(ckpt)
    if tokenizer.to_str() != dm.tokenizer.to_str():
        sys.exit("--ours was trained with another tokenizer than the preset's: compare like with like")
    model.eval()
    hp = ckpt.get("hyper_parameters", {})
    beam, alpha = int(hp.get("beam_size", 4)), float(hp.get("length_penalty", 1.0))
    bos, eos = dm.special_id(BOS), dm.special_id(EOS)

    def decoder(beam_size: int):
        def decode(batch: dict) -> list[list[int]]:
            src = batch["src"]
            with autocast(bf16), torch.no_grad():
                cap = min(int(hp.get("max_decode_len", 128)), 2 * src.shape[1] + 10)  # as systems/seq2seq.py
                return search(model, src, batch["src_mask"], bos, eos, cap, beam_size, alpha)
        return decode

    info = {"steps": ckpt.get("global_step"), "params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    return {f"ours, beam {beam}": decoder(beam), "ours, greedy": decoder(1)}, info


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg: DictConfig = compose("train", overrides=[f"experiment={args.experiment}", *args.overrides])
    dm: ParallelDataModule = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    bf16 = cfg.trainer.get("precision") == "bf16-mixed"
    rows: list[tuple[str, dict, dict]] = []
    if args.ours:
        decoders, info = load_ours(args.ours, dm, bf16)
        for name, decode in decoders.items():
            rows.append((name, info, score(decode, dm, args.limit_test)))
            print(name, rows[-1][2], flush=True)
    if not args.skip_reference:
        ref_bf16 = bf16 and not args.fp32
        budget = f"{args.steps} steps" if args.steps is not None else f"{args.minutes:.1f} min"
        print(f"training the reference for {budget} ({'bf16' if ref_bf16 else 'fp32'})", flush=True)
        decode, info = train_reference(args, dm, ref_bf16, int(cfg.seed))
        rows.append(("reference (nn.Transformer, tutorial recipe), greedy", info, score(decode, dm, args.limit_test)))
        print(rows[-1][0], rows[-1][1], rows[-1][2], flush=True)
    print(f"\n{cfg.task_name}: test split, {rows[0][2]['sentences'] if rows else 0} sentences\n")
    print("| model | params | training steps | BLEU | chrF | exact match | decode s |")
    print("|---|---|---|---|---|---|---|")
    for name, info, s in rows:
        print(f"| {name} | {info['params_m']:.1f} M | {info['steps']} | {s['bleu']:.2f} | {s['chrf']:.2f} "
              f"| {s['exact_match']:.3f} | {s['decode_s']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
