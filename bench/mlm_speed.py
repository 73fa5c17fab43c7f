"""Training throughput of our MaskedLM against Hugging Face BertForMaskedLM of the same shape.

    .venv/bin/python bench/mlm_speed.py           # BERT-mini: 4 layers, width 256, 4 heads, seq 128, vocab 8192,
                                                  # batch 32; fp32 and bf16 (a few minutes on 2 cores)
    .venv/bin/python bench/mlm_speed.py --check   # only: both models' initial losses are near ln(vocab)
    .venv/bin/python bench/mlm_speed.py --profile ours --profile-mode bf16   # where a step's time goes
    .venv/bin/python bench/mlm_speed.py --compile # also ours under torch.compile: tokens/s and compile time
    .venv/bin/python bench/mlm_speed.py --tiny    # seconds: a smoke test

Both models get the same shape (layers, width, heads, MLP width = mlp_ratio * width, position table =
sequence length, vocabulary), the same dropout (embeddings, attention probabilities, both residual
branches), the same optimizer (torch.optim.AdamW, same lr/betas/eps/weight decay on matrices only, same
foreach/fused setting) and the same random batches: token ids uniform in [5, vocab), 15% of positions
picked for prediction with 80/10/10 [MASK]/random/unchanged (the training collator's ``mask``), labels
-100 elsewhere. A step is forward, loss, zero_grad, backward and optimizer step. Our loss is the
cross-entropy at the masked positions (the vocabulary projection only there, as in ``systems/mlm.py``);
the reference's is ``BertForMaskedLM(input_ids, labels=labels).loss``, which projects every position: that
is how the reference really trains.

Protocol, per mode (fp32; bf16 = ``torch.autocast("cpu", torch.bfloat16)`` around forward and loss):
fresh models, ``--warmup`` steps of each (dropped), then ``--rounds`` rounds of ``--steps`` steps of each,
alternating which model goes first (ABBA), each timed alone. Reported: the median tokens/s of the rounds
(tokens = batch * seq per step) and the ratio ours / reference. With ``--compile``, a third model, ours under
``torch.compile`` (same seed, so the same weights), joins the rotation; its compile time is the wall time of a
warm-up pass over all ``--pool`` batches (each masked count is a new shape until dynamic shapes kick in) minus
as many steady steps. Peak memory: the process's peak RSS (CUDA max allocated on a GPU) while a mode ran, all
of its models together.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from hf_bert import attn_implementation, hf_bert, make_adamw, n_params, require_transformers
from step_clock import peak_memory_bytes, reset_peak_memory

from aigc_lab.data.masking import IGNORE_INDEX, MaskingCollator
from aigc_lab.models.mlm import MaskedLM, MLMConfig
from aigc_lab.utils.hardware import machine_line

N_SPECIAL = 5  # [PAD] [UNK] [CLS] [SEP] [MASK] = ids 0-4, as in our tokenizer
PAD_ID, MASK_ID = 0, 4
MODES = ("fp32", "bf16")
TABLE_HEADER = "| mode | ours tok/s | HF tok/s | ratio | ours compiled tok/s | compile s | peak memory MB |"
TINY = dict(layers=2, width=64, heads=2, vocab=512, seq=32, batch=4, rounds=1, steps=2, warmup=1)

Batch = tuple[torch.Tensor, torch.Tensor]  # input_ids [B, T], labels [B, T]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shape = p.add_argument_group("shape (both models)")
    shape.add_argument("--layers", type=int, default=4)
    shape.add_argument("--width", type=int, default=256, help="d_model / hidden_size")
    shape.add_argument("--heads", type=int, default=4)
    shape.add_argument("--mlp-ratio", type=float, default=4.0, help="MLP width = mlp_ratio * width")
    shape.add_argument("--seq", type=int, default=128, help="sequence length (= position table size)")
    shape.add_argument("--vocab", type=int, default=8192)
    shape.add_argument("--batch", type=int, default=32)
    shape.add_argument("--dropout", type=float, default=0.1, help="hidden and attention dropout of both")
    opt = p.add_argument_group("optimizer (both models)")
    opt.add_argument("--lr", type=float, default=1e-3)
    opt.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.98))
    opt.add_argument("--eps", type=float, default=1e-6)
    opt.add_argument("--weight-decay", type=float, default=0.01)
    opt.add_argument("--optim-impl", choices=("default", "foreach", "fused"), default="default",
                     help="AdamW kernel; default = torch's choice (the for-loop one on CPU), as in training")
    proto = p.add_argument_group("protocol")
    proto.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    proto.add_argument("--warmup", type=int, default=5, help="steps per model and mode, not timed")
    proto.add_argument("--rounds", type=int, default=5)
    proto.add_argument("--steps", type=int, default=20, help="timed steps per model per round")
    proto.add_argument("--pool", type=int, default=8, help="distinct random batches, cycled")
    proto.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    proto.add_argument("--seed", type=int, default=0)
    proto.add_argument("--compile", action="store_true", help="also time ours under torch.compile")
    p.add_argument("--tiny", action="store_true",
                   help="2 layers, width 64, vocab 512, seq 32, batch 4, 1 round of 2 steps: a smoke test")
    p.add_argument("--check", action="store_true",
                   help="only check that both models' initial losses are near ln(vocab); exit 1 if not")
    p.add_argument("--profile", choices=("ours", "hf"), default=None,
                   help="instead of timing: torch.profiler over --steps steps of one model, top ops by self CPU time")
    p.add_argument("--profile-mode", choices=MODES, default="bf16")
    args = p.parse_args(argv)
    if args.tiny:
        given = {a.lstrip("-").split("=")[0].replace("-", "_") for a in (argv if argv is not None else sys.argv[1:])}
        for key, value in TINY.items():
            if key not in given:  # an explicit flag still wins over --tiny
                setattr(args, key, value)
    if args.width % args.heads:
        p.error(f"--width {args.width} must be divisible by --heads {args.heads}")
    if args.vocab <= N_SPECIAL + 1:
        p.error(f"--vocab must exceed {N_SPECIAL + 1}")
    return args


# ---------------------------------------------------------------- batches and models
def make_batches(args: argparse.Namespace) -> list[Batch]:
    """``--pool`` batches: ids uniform in [5, vocab), masked 15% with 80/10/10 by the training collator's rule."""
    gen = torch.Generator().manual_seed(args.seed)
    collator = MaskingCollator(args.vocab, MASK_ID, PAD_ID, range(N_SPECIAL), mask_rate=0.15, seed=None)
    batches = []
    for _ in range(args.pool):
        ids = torch.randint(N_SPECIAL, args.vocab, (args.batch, args.seq), generator=gen)
        out = collator.mask(ids, torch.rand(3, args.batch, args.seq, generator=gen))
        batches.append((out["input_ids"], out["labels"]))
    return batches


def build(kind: str, args: argparse.Namespace) -> torch.nn.Module:
    torch.manual_seed(args.seed)
    if kind == "ours":
        cfg = MLMConfig(vocab_size=args.vocab, n_layers=args.layers, d_model=args.width, n_heads=args.heads,
                        mlp_ratio=args.mlp_ratio, max_len=args.seq, dropout=args.dropout)
        return MaskedLM(cfg)
    return hf_bert(args.vocab, args.layers, args.width, args.heads, args.mlp_ratio, args.seq, args.dropout, PAD_ID)


def loss_of(kind: str, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    input_ids, labels = batch
    if kind == "ours":  # as systems/mlm.py: logits at the masked positions only, in fp32 for the loss
        masked = labels != IGNORE_INDEX
        return F.cross_entropy(model(input_ids, positions=masked).float(), labels[masked])
    return model(input_ids=input_ids, labels=labels).loss  # the reference: projects every position


def autocast(mode: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if mode == "bf16" else contextlib.nullcontext()


def make_step(kind: str, model: torch.nn.Module, args: argparse.Namespace, mode: str) -> Callable[[Batch], float]:
    optimizer = make_adamw(model, args.lr, tuple(args.betas), args.eps, args.weight_decay, args.optim_impl)
    model.train()

    def step(batch: Batch) -> torch.Tensor:
        with autocast(mode):
            loss = loss_of(kind, model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    return step


def timed(step: Callable[[Batch], torch.Tensor], batches: list[Batch], n: int) -> tuple[float, float]:
    """(seconds for n steps, the last loss)."""
    gc.collect()
    start = time.perf_counter()
    for i in range(n):
        loss = step(batches[i % len(batches)])
    seconds = time.perf_counter() - start
    return seconds, float(loss.detach())


# ---------------------------------------------------------------- the three jobs
def initial_losses(args: argparse.Namespace, batch: Batch) -> dict[str, float]:
    """fp32 loss of each freshly initialised model (eval mode: no dropout) on one batch."""
    out = {}
    for kind in ("ours", "hf"):
        model = build(kind, args).eval()
        with torch.no_grad():
            out[kind] = float(loss_of(kind, model, batch))
    return out


def check(args: argparse.Namespace, batch: Batch, tolerance: float = 0.5) -> bool:
    expected = math.log(args.vocab)
    ok = True
    for kind, loss in initial_losses(args, batch).items():
        good = math.isfinite(loss) and abs(loss - expected) <= tolerance
        ok &= good
        print(f"check {kind:>4}: initial loss {loss:.4f} vs ln(vocab) = {expected:.4f} "
              f"(|diff| <= {tolerance}): {'ok' if good else 'FAIL'}")
    return ok


def profile(args: argparse.Namespace, batches: list[Batch]) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    model = build(args.profile, args)
    step = make_step(args.profile, model, args, args.profile_mode)
    timed(step, batches, args.warmup)
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        seconds, _ = timed(step, batches, args.steps)
    tokens = args.steps * args.batch * args.seq
    print(f"profile of {args.profile}, {args.profile_mode}: {args.steps} steps, {tokens / seconds:,.0f} tok/s "
          "under the profiler (slower than unprofiled)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=20))


def compile_warmup(step: Callable[[Batch], torch.Tensor], batches: list[Batch], warmup: int) -> float:
    """Seconds of compilation: one pass over every batch (new shapes compile), minus as many steady steps."""
    first, _ = timed(step, batches, len(batches))
    timed(step, batches, warmup)  # later recompiles (dynamic shapes) land here, not in the timed rounds
    steady, _ = timed(step, batches, len(batches))
    return max(0.0, first - steady)


def bench_mode(args: argparse.Namespace, mode: str, batches: list[Batch]) -> dict[str, list[float]]:
    """tokens/s per round of each model in one mode (+ "compile_s" and "peak_bytes")."""
    reset_peak_memory("cpu")
    steps = {kind: make_step(kind, build(kind, args), args, mode) for kind in ("ours", "hf")}
    compile_s = None
    if args.compile:
        steps["ours compiled"] = make_step("ours", torch.compile(build("ours", args)), args, mode)
        compile_s = compile_warmup(steps["ours compiled"], batches, args.warmup)
    for kind in ("ours", "hf"):
        if args.warmup:
            timed(steps[kind], batches, args.warmup)
    tokens = args.steps * args.batch * args.seq
    rates: dict[str, list[float]] = {kind: [] for kind in steps}
    for r in range(args.rounds):
        order = list(steps) if r % 2 == 0 else list(reversed(steps))  # ABBA: drift hits every model alike
        for kind in order:
            seconds, loss = timed(steps[kind], batches, args.steps)
            rates[kind].append(tokens / seconds)
            if not math.isfinite(loss):
                raise RuntimeError(f"{kind} {mode}: loss {loss} after round {r + 1}")
        latest = ", ".join(f"{k} {v[-1]:,.0f} tok/s" for k, v in rates.items())
        print(f"  {mode} round {r + 1}/{args.rounds}: {latest}", file=sys.stderr, flush=True)
    return {**rates, "compile_s": compile_s, "peak_bytes": peak_memory_bytes("cpu")}


def header(args: argparse.Namespace, batch: Batch) -> None:
    transformers = require_transformers()
    env = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ)
    print(f"command: {(env + ' ') if env else ''}{shlex.join([sys.executable, *sys.argv])}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}, "
          f"threads {torch.get_num_threads()}, {os.cpu_count()} logical CPUs")
    print(machine_line())
    ours, theirs = build("ours", args), build("hf", args)
    mlp = int(args.mlp_ratio * args.width)
    print(f"shape: {args.layers} layers, width {args.width}, {args.heads} heads, MLP {mlp}, "
          f"seq {args.seq}, vocab {args.vocab}, batch {args.batch}, dropout {args.dropout}; "
          f"params ours {n_params(ours):,}, HF {n_params(theirs):,} (attention: {attn_implementation(theirs)})")
    print(f"optimizer: AdamW lr {args.lr}, betas {tuple(args.betas)}, eps {args.eps}, weight decay "
          f"{args.weight_decay} (matrices), impl {args.optim_impl}; protocol: {args.warmup} warm-up steps, "
          f"{args.rounds} rounds x {args.steps} steps per model and mode, median")
    losses = initial_losses(args, batch)
    print(f"initial loss (fp32, eval): ours {losses['ours']:.3f}, HF {losses['hf']:.3f}, "
          f"ln(vocab) {math.log(args.vocab):.3f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_transformers()
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = make_batches(args)
    if args.check:
        return 0 if check(args, batches[0]) else 1
    if args.profile:
        profile(args, batches)
        return 0
    header(args, batches[0])
    results = {mode: bench_mode(args, mode, batches) for mode in args.modes}
    print()
    print(TABLE_HEADER)
    print("|---" * (TABLE_HEADER.count(" | ") + 1) + "|")
    ratios = []
    for mode, rates in results.items():
        ours, theirs = statistics.median(rates["ours"]), statistics.median(rates["hf"])
        ratios.append(ours / theirs)
        compiled = f"{statistics.median(rates['ours compiled']):,.0f}" if "ours compiled" in rates else "—"
        compile_s = f"{rates['compile_s']:.1f}" if rates["compile_s"] is not None else "—"
        print(f"| {mode} | {ours:,.0f} | {theirs:,.0f} | {ours / theirs:.2f} | {compiled} | {compile_s} "
              f"| {rates['peak_bytes'] / 2**20:,.0f} |")
    print()
    for mode, rates in results.items():
        for kind in ("ours", "hf", "ours compiled"):
            if kind in rates:
                spread = ", ".join(f"{r:,.0f}" for r in rates[kind])
                print(f"{mode} {kind} per round: {spread}")
    print(f"ours >= 1.5x HF in every mode: {'yes' if min(ratios) >= 1.5 else 'no'} (min ratio {min(ratios):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
