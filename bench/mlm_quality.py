"""Masked-LM quality at the same wall-clock budget: Hugging Face BertForMaskedLM trained by a plain PyTorch
loop on the preset's data, beside our trained model, both evaluated by one routine on the same val loader.

    AIGC_DATA_DIR=../shared/data .venv/bin/python bench/mlm_quality.py --minutes 20 \\
        --ours outputs/mlm_pydocs/runs/<time>
    .venv/bin/python bench/mlm_quality.py --ours RUN_DIR --skip-reference      # our row only
    .venv/bin/python bench/mlm_quality.py --tiny data.train_files=a.txt data.val_files=b.txt   # seconds

The preset (``--experiment``, default ``mlm_pydocs``; ``--tiny``: ``mlm_tiny``) is composed from ``conf/``
like a training run, plus any Hydra overrides given after the options, so the reference gets the same
tokenizer (the cached one), blocks, masking, batch size and model shape (BertConfig: same layers, width,
heads, MLP width, position table = block size, vocabulary, dropout; sdpa attention). The reference's loop:
AdamW with the preset's lr/betas/eps/weight decay (matrices only), the preset's warm-up ratio and decay
shape over the wall-clock budget (the schedule runs on elapsed time, so it ends decayed whatever the
speed), gradient clipping at ``trainer.gradient_clip_val``, bf16 autocast when the preset trains in
``bf16-mixed``, the training loader's fresh masks each batch, the loss ``BertForMaskedLM(..., labels).loss``.

Evaluation (both rows, one routine): the preset's validation loader (masks fixed by ``data.eval_mask_seed``),
logits at the masked positions, perplexity = exp(total masked loss / total masked tokens) and top-1 masked
accuracy, as ``systems/mlm.py`` computes ``val/perplexity`` and ``val/masked_acc``; in the preset's
precision (bf16 autocast for bf16-mixed) unless ``--eval-fp32``. ``--ours`` takes a run dir (its best
checkpoint, by the run's monitor) or a .ckpt; its steps and wall minutes come from the checkpoint (wall:
Lightning's Timer, present when the run had ``trainer.max_time``; it counts validation inside fit too).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import resource
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from hf_bert import (
    attn_implementation,
    bert_masked_logits,
    hf_bert,
    make_adamw,
    n_params,
    our_masked_logits,
    require_transformers,
)
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from aigc_lab.checkpoints import load_checkpoint, resolve_checkpoint
from aigc_lab.data.masking import IGNORE_INDEX
from aigc_lab.data.tokenizer import PAD
from aigc_lab.errors import UserError
from aigc_lab.fill_mask import load_mlm
from aigc_lab.systems.schedule import lr_factor
from aigc_lab.utils.hardware import machine_line, resolve_auto
from aigc_lab.utils.paths import conf_dir

# (model, input_ids [B, T], attention_mask [B, T] or None, positions [B, T] bool) -> logits [M, V]
LogitsFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the preset, e.g. data.val_files=...")
    p.add_argument("--experiment", default=None, help="the preset (default mlm_pydocs; mlm_tiny with --tiny)")
    p.add_argument("--minutes", type=float, default=None, help="the reference's training budget (default 20)")
    p.add_argument("--ours", default=None, help="our run dir (best checkpoint) or .ckpt, evaluated alike")
    p.add_argument("--skip-reference", action="store_true", help="evaluate --ours only")
    p.add_argument("--limit-val-batches", type=int, default=None, help="evaluate on the first N val batches")
    p.add_argument("--eval-fp32", action="store_true", help="evaluate in fp32 even for a bf16-mixed preset")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--log-every", type=int, default=100, help="reference training progress every N steps")
    p.add_argument("--tiny", action="store_true",
                   help="mlm_tiny preset, 3 s of training, 2 val batches: a smoke test (give the corpus as overrides)")
    args = p.parse_args(argv)
    args.experiment = args.experiment or ("mlm_tiny" if args.tiny else "mlm_pydocs")
    args.minutes = args.minutes if args.minutes is not None else (0.05 if args.tiny else 20.0)
    if args.tiny and args.limit_val_batches is None:
        args.limit_val_batches = 2
    if args.skip_reference and not args.ours:
        p.error("--skip-reference needs --ours")
    return args


def compose_preset(experiment: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", *overrides])
    resolve_auto(cfg)  # `auto` precision: as the launcher resolves it on this machine
    return cfg


def autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB


# ---------------------------------------------------------------- evaluation: one routine for both models
@torch.no_grad()
def evaluate(logits_fn: LogitsFn, model: torch.nn.Module, loader: DataLoader, bf16: bool,
             limit: int | None = None) -> dict[str, float]:
    """Masked-token perplexity (exp of summed loss / masked count) and top-1 accuracy, as systems/mlm.py."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, masked tokens, correct
    for i, batch in enumerate(loader):
        if limit is not None and i >= limit:
            break
        labels = batch["labels"]
        masked = labels != IGNORE_INDEX  # [B, T]
        with autocast(bf16):
            logits = logits_fn(model, batch["input_ids"], batch.get("attention_mask"), masked).float()  # [M, V]
            targets = labels[masked]
            loss_sum = F.cross_entropy(logits, targets, reduction="sum")
        correct = (logits.argmax(dim=-1) == targets).sum()
        totals += torch.stack([loss_sum.double(), masked.sum().double(), correct.double()])
    model.train(was_training)
    loss_sum, n, correct = totals.tolist()
    loss = loss_sum / max(n, 1.0)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "masked_acc": correct / max(n, 1.0), "tokens": n}


# ---------------------------------------------------------------- the reference's plain training loop
def train_reference(cfg: DictConfig, datamodule, minutes: float, bf16: bool, log_every: int) -> tuple:
    net = cfg.model.net
    torch.manual_seed(cfg.seed)  # model init, and the training collator's masks (torch.initial_seed())
    model = hf_bert(datamodule.vocab_size, net.n_layers, net.d_model, net.n_heads, net.mlp_ratio,
                    datamodule.hparams.block_size, net.dropout, datamodule.special_id(PAD))
    opt_cfg = cfg.model.optimizer
    optimizer = make_adamw(model, float(opt_cfg.lr), tuple(opt_cfg.betas), float(opt_cfg.eps),
                           float(opt_cfg.weight_decay))
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    clip = cfg.trainer.get("gradient_clip_val")
    resolution = 100_000  # lr_factor's step grid over the budget
    warmup = int(cfg.model.warmup_ratio * resolution)
    budget = minutes * 60.0
    loader = datamodule.train_dataloader()
    print(f"reference: BertForMaskedLM {n_params(model):,} params (attention: {attn_implementation(model)}), "
          f"{minutes:g} min budget, {'bf16 autocast' if bf16 else 'fp32'}, clip {clip}, "
          f"{len(loader)} batches per epoch", flush=True)
    model.train()
    steps, loss_value, start = 0, float("nan"), time.perf_counter()
    while True:
        for batch in loader:
            elapsed = time.perf_counter() - start
            if elapsed >= budget:
                break
            factor = lr_factor(int(elapsed / budget * resolution), total=resolution, warmup=warmup,
                               schedule=cfg.model.schedule, floor=cfg.model.min_lr_ratio)
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * factor
            attention_mask = batch.get("attention_mask")
            with autocast(bf16):
                loss = model(input_ids=batch["input_ids"],
                             attention_mask=attention_mask.long() if attention_mask is not None else None,
                             labels=batch["labels"]).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), float(clip))
            optimizer.step()
            steps += 1
            if log_every and steps % log_every == 0:
                loss_value = float(loss)
                print(f"  step {steps}: loss {loss_value:.3f}, lr {optimizer.param_groups[0]['lr']:.2e}, "
                      f"{elapsed / 60:.1f} min", file=sys.stderr, flush=True)
        else:
            continue  # the epoch ended inside the budget: another one
        break
    wall = time.perf_counter() - start
    return model, steps, wall, peak_rss_gb()


# ---------------------------------------------------------------- our model from a run
def load_ours(path: str, datamodule) -> tuple[torch.nn.Module, dict]:
    ckpt_path = resolve_checkpoint(path)
    ckpt = load_checkpoint(ckpt_path)
    model, tokenizer = load_mlm(ckpt)
    if tokenizer.to_str() != datamodule.tokenizer.to_str():
        raise UserError(f"{ckpt_path} was trained with another tokenizer than this preset's: its val ids and "
                        "masks would differ. Pass the run's data settings as overrides (or "
                        "data.tokenizer_path=<run dir>/tokenizer.json)")
    if model.cfg.max_len < datamodule.hparams.block_size:
        raise UserError(f"our model reads {model.cfg.max_len} tokens, the preset's blocks are "
                        f"{datamodule.hparams.block_size}")
    timer = next((v for k, v in ckpt.get("callbacks", {}).items() if k.startswith("Timer")), None)
    wall = timer.get("time_elapsed", {}).get("train") if isinstance(timer, dict) else None
    info = {"path": ckpt_path, "steps": ckpt.get("global_step"), "wall": wall, "cfg": model.cfg}
    return model, info


def fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    transformers = require_transformers()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = compose_preset(args.experiment, args.overrides)
    train_bf16 = cfg.trainer.precision in ("bf16-mixed", "bf16")
    eval_bf16 = train_bf16 and not args.eval_fp32
    env = " ".join(f"{k}={os.environ[k]}" for k in ("AIGC_DATA_DIR", "AIGC_CACHE_DIR", "OMP_NUM_THREADS")
                   if k in os.environ)
    print(f"command: {(env + ' ') if env else ''}{shlex.join([sys.executable, *sys.argv])}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}, "
          f"threads {torch.get_num_threads()}")
    print(machine_line())
    net = {k: v for k, v in OmegaConf.to_container(cfg.model.net, resolve=True).items() if not k.startswith("_")}
    print(f"preset {args.experiment}: model.net {net}, "
          f"lr {cfg.model.lr}, data {cfg.data.train_files} (vocab {cfg.data.vocab_size}, block {cfg.data.block_size}, "
          f"batch {cfg.data.batch_size}), precision {cfg.trainer.precision}")

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()  # the cached tokenizer and token ids (or trains/tokenizes them once)
    datamodule.setup("fit")
    val_loader = datamodule.val_dataloader()
    print(f"data: vocab {datamodule.vocab_size}, {len(datamodule.datasets['train'])} train / "
          f"{len(datamodule.datasets['val'])} val sequences; eval on "
          f"{'all' if args.limit_val_batches is None else args.limit_val_batches} val batches of "
          f"{datamodule.hparams.eval_batch_size}, {'bf16 autocast' if eval_bf16 else 'fp32'}", flush=True)

    rows = []
    if not args.skip_reference:
        model, steps, wall, rss = train_reference(cfg, datamodule, args.minutes, train_bf16, args.log_every)
        metrics = evaluate(bert_masked_logits, model, val_loader, eval_bf16, args.limit_val_batches)
        rows.append(("HF BertForMaskedLM, plain loop", steps, wall / 60, metrics, rss))
        del model
    if args.ours:
        model, info = load_ours(args.ours, datamodule)
        print(f"ours: {info['path']} ({n_params(model):,} params, {info['cfg']})")
        metrics = evaluate(our_masked_logits, model, val_loader, eval_bf16, args.limit_val_batches)
        wall = info["wall"] / 60 if info["wall"] is not None else None
        rows.append((f"ours ({Path(args.ours).name})", info["steps"], wall, metrics, None))

    print(f"\nval masked tokens: {int(rows[0][3]['tokens']):,}")
    print("| model | steps | wall min | val perplexity | val masked acc | peak RSS GB |")
    print("|---|---|---|---|---|---|")
    for name, steps, wall, m, rss in rows:
        print(f"| {name} | {fmt(steps, ',')} | {fmt(wall, '.2f')} | {m['perplexity']:.2f} | "
              f"{m['masked_acc']:.4f} | {fmt(rss, '.2f')} |")
    if not args.skip_reference:
        print("peak RSS: of this process up to the end of the reference's training (data setup included)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as err:
        sys.exit(f"error: {err}")
