"""Seq2seq speed: training throughput (target tokens/s, fp32 and bf16) and beam-search decoding with and
without the key/value cache (sentences/s, same outputs).

    AIGC_DATA_DIR=../shared/data .venv/bin/python bench/seq2seq_speed.py --ours outputs/seq2seq_en_fr/runs/<time>
    AIGC_DATA_DIR=../shared/data .venv/bin/python bench/seq2seq_speed.py --skip-decode --compile --optim-impl fused
    .venv/bin/python bench/seq2seq_speed.py --tiny          # seconds: synthetic preset, a smoke test

Training: the preset's model (``conf/experiment/<experiment>``) and its first ``--batches`` real training
batches (token budget ``data.max_tokens``), AdamW with the preset's settings, label-smoothed cross entropy,
gradient clipping; a step is forward, loss, zero_grad, backward, clip, optimizer step. Beside it the PyTorch
tutorial's ``nn.Transformer`` model (``seq2seq_reference.py``) at the same shape (layers, width, heads, MLP
width) on the same batches, as a ratio. Per precision: ``--warmup`` steps of each (dropped), then ``--rounds``
rounds of ``--steps`` steps, alternating which model goes first; median target tokens/s (non-pad targets).
``--compile``: our model under ``torch.compile(dynamic=True)`` (every batch has its own source and target
lengths) joins the rotation; its compile time is a warm-up pass over the ``--batches`` batches minus a steady
pass. ``--optim-impl foreach|fused`` picks AdamW's kernel for every model (default: torch's choice, the
for-loop kernel on CPU, as in training). Peak memory: the process's peak RSS (CUDA max allocated on a GPU)
while a precision ran, all of its models together.

Decoding: our trained model (``--ours``: run dir or .ckpt; without it the preset's model at init, whose
hypotheses run to the length cap) translates the first ``--sentences`` test pairs in batches of
``--decode-batch`` sorted by length, beam ``--beam`` with the cache and without it (each step re-runs the
decoder over the whole prefix), in the preset's precision; ``--rounds`` alternating rounds, median
sentences/s. The script checks that both give the same tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig
from seq2seq_reference import TutorialTransformer
from step_clock import peak_memory_bytes, reset_peak_memory

from aigc_lab.data.parallel import ParallelDataModule
from aigc_lab.data.tokenizer import BOS, EOS, PAD
from aigc_lab.models.decoding import beam_search
from aigc_lab.models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer
from aigc_lab.systems.token_system import weight_decay_groups
from aigc_lab.utils.hardware import machine_line
from aigc_lab.utils.paths import conf_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the preset")
    p.add_argument("--experiment", default=None, help="default seq2seq_en_fr (seq2seq_synthetic with --tiny)")
    p.add_argument("--ours", default=None, help="trained run dir or .ckpt for the decoding part")
    p.add_argument("--batches", type=int, default=8, help="distinct training batches cycled through")
    p.add_argument("--steps", type=int, default=10, help="training steps per timed round")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--sentences", type=int, default=256)
    p.add_argument("--decode-batch", type=int, default=64)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-decode", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--compile", action="store_true", help="also time our model under torch.compile")
    p.add_argument("--optim-impl", choices=("default", "foreach", "fused"), default="default",
                   help="AdamW kernel of every model (default: torch's choice)")
    p.add_argument("--tiny", action="store_true", help="synthetic preset, 1 round of 2 steps, 32 sentences")
    args = p.parse_args(argv)
    args.experiment = args.experiment or ("seq2seq_synthetic" if args.tiny else "seq2seq_en_fr")
    if args.tiny:
        args.batches, args.steps, args.warmup, args.rounds, args.sentences = 2, 2, 1, 1, 32
    return args


def autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


# ---------------------------------------------------------------- training throughput
def build(kind: str, cfg: DictConfig, vocab: int, pad: int) -> torch.nn.Module:
    torch.manual_seed(0)
    net = cfg.model.net
    if kind == "ours":
        return Seq2SeqTransformer(Seq2SeqConfig(vocab, net.n_enc_layers, net.n_dec_layers, net.d_model, net.n_heads,
                                                net.mlp_ratio, net.max_len, net.dropout))
    ffn = int(net.mlp_ratio * net.d_model)
    return TutorialTransformer(vocab, net.d_model, net.n_heads, ffn, net.n_enc_layers, pad)


TRAIN_HEADER = ("| precision | ours tokens/s | nn.Transformer tokens/s | ours / reference | ours compiled tokens/s "
                "| compile s | peak memory MB |")
OPTIM_IMPL = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def make_step(kind: str, model: torch.nn.Module, cfg: DictConfig, pad: int, bf16: bool, optim_impl: str = "default"):
    opt = cfg.model.optimizer
    optimizer = torch.optim.AdamW(weight_decay_groups(model), lr=float(opt.lr), weight_decay=float(opt.weight_decay),
                                  betas=tuple(opt.betas), eps=float(opt.eps), **OPTIM_IMPL[optim_impl])
    smoothing, clip = float(cfg.model.label_smoothing), float(cfg.trainer.get("gradient_clip_val") or 1.0)

    def step(batch: dict) -> None:
        with autocast(bf16):
            if kind != "reference":
                logits = model(batch["src"], batch["src_mask"], batch["tgt_in"])
            else:
                logits = model(batch["src"], batch["tgt_in"])
            loss = F.cross_entropy(logits.flatten(0, 1).float(), batch["tgt_out"].flatten(), ignore_index=pad,
                                   label_smoothing=smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()

    return step


def bench_train(args: argparse.Namespace, cfg: DictConfig, dm: ParallelDataModule) -> None:
    pad = dm.special_id(PAD)
    batches = []
    for batch in dm.train_dataloader():
        batches.append(batch)
        if len(batches) == args.batches:
            break
    tokens = [int((b["tgt_out"] != pad).sum()) for b in batches]
    print(f"\ntraining: {len(batches)} batches, {statistics.mean(tokens):.0f} target tokens per batch on average")
    print(TRAIN_HEADER)
    print("|---" * (TRAIN_HEADER.count(" | ") + 1) + "|")
    for bf16 in (False, True):
        reset_peak_memory("cpu")
        models = {kind: build(kind, cfg, dm.vocab_size, pad) for kind in ("ours", "reference")}
        if args.compile:
            models["ours compiled"] = torch.compile(build("ours", cfg, dm.vocab_size, pad), dynamic=True)
        steps = {kind: make_step(kind, model, cfg, pad, bf16, args.optim_impl) for kind, model in models.items()}
        compile_s = None
        if args.compile:  # every batch shape compiles (or hits the dynamic graph) once, outside the timed rounds
            first = run_steps(steps["ours compiled"], batches, len(batches))
            compile_s = max(0.0, first - run_steps(steps["ours compiled"], batches, len(batches)))
        rates: dict[str, list[float]] = {kind: [] for kind in steps}
        for kind in ("ours", "reference"):
            run_steps(steps[kind], batches, args.warmup)
        for r in range(args.rounds):
            for kind in (list(steps) if r % 2 == 0 else list(reversed(steps))):
                seconds = run_steps(steps[kind], batches, args.steps)
                rates[kind].append(sum(tokens[i % len(batches)] for i in range(args.steps)) / seconds)
        ours, ref = statistics.median(rates["ours"]), statistics.median(rates["reference"])
        compiled = f"{statistics.median(rates['ours compiled']):,.0f}" if args.compile else "—"
        compile_cell = f"{compile_s:.1f}" if compile_s is not None else "—"
        print(f"| {'bf16-mixed' if bf16 else 'fp32'} | {ours:,.0f} | {ref:,.0f} | {ours / ref:.2f} | {compiled} "
              f"| {compile_cell} | {peak_memory_bytes('cpu') / 2**20:,.0f} |", flush=True)


def run_steps(step, batches: list[dict], n: int) -> float:
    """Seconds for ``n`` training steps over the cycled batches."""
    start = time.perf_counter()
    for i in range(n):
        step(batches[i % len(batches)])
    return time.perf_counter() - start


# ---------------------------------------------------------------- decoding with and without the cache
def bench_decode(args: argparse.Namespace, cfg: DictConfig, dm: ParallelDataModule) -> None:
    if args.ours:
        from aigc_lab.checkpoints import load_checkpoint, resolve_checkpoint
        from aigc_lab.translate import load_seq2seq

        model, _ = load_seq2seq(load_checkpoint(resolve_checkpoint(args.ours)))
    else:
        model = build("ours", cfg, dm.vocab_size, dm.special_id(PAD))
    model.eval()
    bf16 = cfg.trainer.get("precision") == "bf16-mixed"
    test = dm.datasets["test"]
    n = min(args.sentences, len(test))
    collate = dm.test_dataloader().collate_fn
    order = sorted(range(n), key=lambda i: test.src_lengths[i])
    batches = [collate([test[i] for i in order[s : s + args.decode_batch]]) for s in range(0, n, args.decode_batch)]
    bos, eos = dm.special_id(BOS), dm.special_id(EOS)
    alpha = float(cfg.model.length_penalty)

    def run(use_cache: bool) -> tuple[float, list[list[int]]]:
        out, start = [], time.perf_counter()
        for b in batches:
            cap = min(int(cfg.model.max_decode_len), 2 * b["src"].shape[1] + 10)
            with autocast(bf16):
                out += beam_search(model, b["src"], b["src_mask"], bos, eos, args.beam, cap, alpha, use_cache)
        return n / (time.perf_counter() - start), out

    rates: dict[bool, list[float]] = {True: [], False: []}
    outputs: dict[bool, list[list[int]]] = {}
    for r in range(args.rounds):
        for use_cache in ((True, False) if r % 2 == 0 else (False, True)):
            rate, outputs[use_cache] = run(use_cache)
            rates[use_cache].append(rate)
    same = sum(a == b for a, b in zip(outputs[True], outputs[False]))
    cached, uncached = statistics.median(rates[True]), statistics.median(rates[False])
    mean_len = statistics.mean(len(x) for x in outputs[True])
    print(f"\ndecoding: beam {args.beam}, {n} test sentences, batches of {args.decode_batch}, "
          f"{'bf16' if bf16 else 'fp32'}, {mean_len:.1f} tokens per hypothesis on average")
    print("| decoder | sentences/s | speed-up | identical outputs |")
    print("|---|---|---|---|")
    print(f"| beam {args.beam}, no cache | {uncached:.1f} | 1.00 | |")
    print(f"| beam {args.beam}, KV cache | {cached:.1f} | {cached / uncached:.2f} | {same}/{n} |")
    if same != n:
        print(f"WARNING: {n - same} hypotheses differ between cached and uncached decoding", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={args.experiment}", *args.overrides])
    dm: ParallelDataModule = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    print(f"{args.experiment}: {machine_line()}")
    if not args.skip_train:
        bench_train(args, cfg, dm)
    if not args.skip_decode:
        bench_decode(args, cfg, dm)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
