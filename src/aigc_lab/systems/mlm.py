"""Masked language modelling with Lightning (automatic optimization).

The loss is the cross-entropy at masked positions only (the vocabulary projection is computed there
alone). Validation accumulates the summed loss and the count of masked tokens over the whole set, so
``val/perplexity = exp(total loss / total masked tokens)``, not a mean of per-batch perplexities.

The model is built in ``configure_model`` once the datamodule's tokenizer is known: the vocabulary
size comes from it, so ``net`` is a partial ``MLMConfig`` (every field but ``vocab_size``). Checkpoints
carry ``mlm_config`` and ``tokenizer_json``, so fill-mask works from a checkpoint alone.

Weight decay applies to every matrix (Linear weights, the token embedding that is also the output
layer, and the position table), not to biases or LayerNorm weights.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_only
from tokenizers import Tokenizer

from aigc_lab.data.masking import IGNORE_INDEX
from aigc_lab.data.tokenizer import MASK, SPECIAL_TOKENS, tokenizer_from_json
from aigc_lab.errors import UserError
from aigc_lab.models.mlm import MaskedLM, MLMConfig
from aigc_lab.systems.guards import NonFiniteLossGuard, check_policy
from aigc_lab.systems.schedule import planned_steps, warmup_then_decay
from aigc_lab.utils.memory import TRAIN_STATE_BYTES, VALUE_BYTES, Need, TransformerShape, mlm_params, transformer_parts
from aigc_lab.utils.validate import at_least, in_interval, net_config, one_of, optimizer_lr, positive

Batch = dict[str, torch.Tensor]  # input_ids [B, T], labels [B, T], attention_mask [B, T] (when padded)


class MLMSystem(NonFiniteLossGuard, L.LightningModule):
    checkpoint_key = "mlm_config"  # what on_save_checkpoint adds; checkpoints.check_checkpoint_for reads it
    data_option = "text"  # the conf/data option it trains on; train.check_pairing compares the two

    def __init__(
        self,
        net: partial | MLMConfig,
        optimizer: partial,
        lr: float = 5e-4,
        schedule: Literal["cosine", "linear", "constant"] = "cosine",
        warmup_ratio: float = 0.06,
        min_lr_ratio: float = 0.0,
        num_examples: int = 3,
        example_top_k: int = 3,
        nonfinite_loss: Literal["stop", "skip"] = "stop",
    ) -> None:
        """``net``: a partial ``MLMConfig`` completed with the tokenizer's vocabulary size (or a full
        config, then its vocab_size must match the tokenizer). ``lr`` is the peak learning rate, read
        by the optimizer config through interpolation. The schedule warms up linearly over
        ``warmup_ratio`` of the training steps, then decays (cosine or linear) to ``min_lr_ratio * lr``.
        ``num_examples`` validation sequences are shown with their ``example_top_k`` predictions per
        [MASK] in TensorBoard's TEXT tab. ``nonfinite_loss``: a NaN/inf loss stops the run or skips the step
        (``systems/guards.py``)."""
        super().__init__()
        positive("model.lr", lr)
        optimizer_lr("model.optimizer", optimizer)
        in_interval("model.warmup_ratio", warmup_ratio, 0, 1, "[)")
        in_interval("model.min_lr_ratio", min_lr_ratio, 0, 1)
        one_of("model.schedule", schedule, ("cosine", "linear", "constant"))
        at_least("model.num_examples", num_examples, 0)
        positive("model.example_top_k", example_top_k)
        check_policy(nonfinite_loss)
        if not isinstance(net, MLMConfig):  # checks the other fields now, before any data work
            net_config("model.net", net, vocab_size=len(SPECIAL_TOKENS) + 1)
        self.save_hyperparameters(logger=False)
        self.cfg: MLMConfig | None = net if isinstance(net, MLMConfig) else None
        self.model: MaskedLM | None = MaskedLM(self.cfg) if self.cfg is not None else None
        self.tokenizer: Tokenizer | None = None
        self._examples: Batch | None = None

    # ---------------------------------------------------------------- building
    def configure_model(self) -> None:
        """Build the network for the datamodule's tokenizer (called by the trainer before fit/test)."""
        try:
            datamodule = getattr(self.trainer, "datamodule", None)
        except RuntimeError:  # load_from_checkpoint, no trainer: on_load_checkpoint builds from the checkpoint
            return
        tokenizer = getattr(datamodule, "tokenizer", None)
        if tokenizer is not None and self.tokenizer is None:
            self.set_tokenizer(tokenizer)
        if self.model is not None:
            return
        if self.tokenizer is None:
            raise UserError("the masked LM needs a datamodule with a tokenizer (e.g. data=text)")
        self.cfg = self.hparams.net(vocab_size=self.tokenizer.get_vocab_size())
        self.model = MaskedLM(self.cfg)
        block_size = getattr(getattr(datamodule, "hparams", None), "block_size", 0)
        if block_size > self.cfg.max_len:
            raise UserError(f"data.block_size ({block_size}) exceeds model.net.max_len ({self.cfg.max_len})")

    # ---------------------------------------------------------------- sizes (checked before any data work)
    def check_bounds(self, datamodule: Any) -> None:
        """The datamodule's sizes against the model: a block must fit the position table (model.net.max_len)."""
        block_size = getattr(getattr(datamodule, "hparams", None), "block_size", 0)
        max_len = self._config(len(SPECIAL_TOKENS) + 1).max_len
        if block_size > max_len:
            raise UserError(f"data.block_size ({block_size}) exceeds model.net.max_len ({max_len})")

    def memory_needs(self, datamodule: Any, stage: str = "fit") -> list[Need]:
        """One training and one validation batch (``stage="fit"``), or one test batch (``"test"``), as functions
        of data.block_size, the batch size and data.vocab_size (utils/memory.py has the formulas). The vocabulary
        is data.vocab_size, the most the tokenizer learns (a saved tokenizer's own size with data.tokenizer_path)."""
        h = getattr(datamodule, "hparams", None)
        if h is None or "block_size" not in h:
            return []
        fixed_vocab = self.cfg.vocab_size if self.cfg is not None else _saved_vocab_size(h.get("tokenizer_path"))
        cfg = self._config(fixed_vocab or h.vocab_size)
        shape = TransformerShape.of(cfg)
        own_positions = cfg.max_len != h.block_size  # else the table follows data.block_size (${data.block_size})

        def batch(batch_key: str, training: bool, state_bytes: int) -> Need:
            def parts(sizes: dict[str, int]) -> list:
                length, vocab = sizes["data.block_size"], sizes.get("data.vocab_size", fixed_vocab)
                params = mlm_params(shape, vocab, cfg.max_len if own_positions else length)
                b = sizes[batch_key]
                masked = math.ceil(h.mask_rate * b * length)  # logits only at the masked positions
                return transformer_parts(shape, params, b, length, logit_rows=masked, vocab=vocab,
                                         training=training, state_bytes=state_bytes)

            sizes = {"data.block_size": h.block_size, batch_key: h[batch_key.removeprefix("data.")]}
            if not fixed_vocab:
                sizes["data.vocab_size"] = h.vocab_size
            lowest = {"data.block_size": 3, "data.vocab_size": len(SPECIAL_TOKENS) + 1}
            what = "one training batch" if training else f"one {'validation' if stage == 'fit' else 'test'} batch"
            return Need(what, sizes, parts, lowest)

        if stage == "fit":
            return [batch("data.batch_size", True, TRAIN_STATE_BYTES),
                    batch("data.eval_batch_size", False, TRAIN_STATE_BYTES)]
        return [batch("data.eval_batch_size", False, VALUE_BYTES)]

    def _config(self, vocab_size: int) -> MLMConfig:
        return self.cfg if self.cfg is not None else self.hparams.net(vocab_size=vocab_size)

    def set_tokenizer(self, tokenizer: Tokenizer) -> None:
        vocab = tokenizer.get_vocab_size()
        if self.cfg is not None and self.cfg.vocab_size != vocab:
            raise UserError(f"the model's vocab_size is {self.cfg.vocab_size} but the tokenizer has {vocab} tokens")
        self.tokenizer = tokenizer

    def on_fit_start(self) -> None:
        # The model did not exist when the launcher recorded hyperparameters: add its size now.
        n_params = sum(p.numel() for p in self.parameters())
        for logger in self.loggers:
            logger.log_hyperparams({"params/total": n_params, "params/trainable": n_params})

    # ---------------------------------------------------------------- training
    def masked_loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean loss over masked tokens, summed loss, number of correct top-1 predictions); logits only at masks."""
        labels = batch["labels"]
        masked = labels != IGNORE_INDEX  # [B, T]
        logits = self.model(batch["input_ids"], batch.get("attention_mask"), positions=masked).float()  # [M, V]
        targets = labels[masked]  # [M]
        loss_sum = F.cross_entropy(logits, targets, reduction="sum")
        # top-1 accuracy is an evaluation metric: no argmax over [M, V] in training steps
        correct = targets.new_zeros(()) if self.training else (logits.argmax(dim=-1) == targets).sum()
        return loss_sum / targets.numel() if targets.numel() else loss_sum, loss_sum, correct

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        loss, _, _ = self.masked_loss(batch)
        if not self.loss_is_finite(loss, "train/loss"):
            return None  # model.nonfinite_loss=skip: Lightning takes no optimizer step for this batch
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        optimizer = self.hparams.optimizer(weight_decay_groups(self))  # curves: lr/decay, lr/no_decay
        factor = warmup_then_decay(planned_steps(self.trainer), self.hparams.warmup_ratio, self.hparams.schedule,
                                   self.hparams.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"}}

    # ---------------------------------------------------------------- evaluation
    def on_validation_epoch_start(self) -> None:
        self._reset_totals()

    def on_test_epoch_start(self) -> None:
        self._reset_totals()

    def _reset_totals(self) -> None:
        self._totals = torch.zeros(3, device=self.device, dtype=torch.float64)  # loss sum, masked tokens, correct

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._accumulate(batch)
        if batch_idx == 0:
            self._examples = {k: v[: self.hparams.num_examples] for k, v in batch.items()}

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._accumulate(batch)

    def _accumulate(self, batch: Batch) -> None:
        _, loss_sum, correct = self.masked_loss(batch)
        n = (batch["labels"] != IGNORE_INDEX).sum()
        self._totals += torch.stack([loss_sum.double(), n.double(), correct.double()])

    def on_validation_epoch_end(self) -> None:
        self._log_totals("val")
        if not self.trainer.sanity_checking and self._examples is not None and self.tokenizer is not None:
            self._log_examples()

    def on_test_epoch_end(self) -> None:
        self._log_totals("test")

    def _log_totals(self, stage: str) -> None:
        loss_sum, n, correct = self.trainer.strategy.reduce(self._totals, reduce_op="sum").tolist()
        loss = loss_sum / max(n, 1.0)
        # Sums over all ranks already: sync_dist averages equal numbers (a no-op that marks them global).
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", sync_dist=True)
        self.log(f"{stage}/perplexity", math.exp(min(loss, 50.0)), prog_bar=stage == "val", sync_dist=True)
        self.log(f"{stage}/masked_acc", correct / max(n, 1.0), sync_dist=True)

    @rank_zero_only
    def _log_examples(self) -> None:
        text = fill_mask_report(self.model, self.tokenizer, self._examples, self.hparams.example_top_k)
        for logger in self.loggers:
            if hasattr(logger.experiment, "add_text"):
                logger.experiment.add_text("fill_mask/val_examples", text, self.global_step)

    # ---------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)  # the non-finite step count
        checkpoint["mlm_config"] = asdict(self.cfg)  # lets `generate` rebuild the model alone
        checkpoint["tokenizer_json"] = self.tokenizer.to_str() if self.tokenizer is not None else None

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get("tokenizer_json")
        if self.tokenizer is not None and saved is not None and saved != self.tokenizer.to_str():
            raise UserError(
                "this checkpoint was trained with another tokenizer than the datamodule's: point "
                "data.tokenizer_path at the checkpoint's run dir tokenizer.json"
            )
        if saved is not None and self.tokenizer is None:
            self.tokenizer = tokenizer_from_json(saved)
        if self.model is None:  # load_from_checkpoint outside a trainer: build from the saved config
            self.cfg = MLMConfig(**checkpoint["mlm_config"])
            self.model = MaskedLM(self.cfg)


def _saved_vocab_size(tokenizer_path: str | None) -> int | None:
    """The vocabulary size of a saved tokenizer.json (data.tokenizer_path), or None (none given, or unreadable:
    the datamodule reports that when it loads it)."""
    if not tokenizer_path:
        return None
    try:
        return Tokenizer.from_file(str(Path(tokenizer_path).expanduser())).get_vocab_size()
    except Exception:  # tokenizers raises its own Exception type
        return None


def weight_decay_groups(module: torch.nn.Module) -> list[dict]:
    """Optimizer parameter groups: every matrix decays, biases and LayerNorm weights (ndim < 2) do not.
    The names label the learning-rate curves (lr/decay, lr/no_decay)."""
    decay = [p for p in module.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in module.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "name": "decay"}, {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]


@torch.no_grad()
def fill_mask_report(model: MaskedLM, tokenizer: Tokenizer, batch: Batch, top_k: int = 3) -> str:
    """Markdown: each sequence (with its masks) and, per masked position, the top-k guesses vs. the truth."""
    was_training = model.training
    model.eval()
    logits = model(batch["input_ids"], batch.get("attention_mask")).float()  # [B, T, V]
    model.train(was_training)
    specials = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
    logits[..., specials] = float("-inf")  # guesses are real tokens
    probs = logits.softmax(dim=-1)
    mask_id = tokenizer.token_to_id(MASK)
    parts = []
    lengths = batch["attention_mask"].sum(dim=1).tolist() if "attention_mask" in batch else None
    for i, (ids, labels) in enumerate(zip(batch["input_ids"].tolist(), batch["labels"].tolist())):
        if lengths is not None:  # drop the padding
            ids, labels = ids[: lengths[i]], labels[: lengths[i]]
        lines = [f"**{i + 1}.** `{tokenizer.decode(ids, skip_special_tokens=False)}`", ""]
        for t, (token, label) in enumerate(zip(ids, labels)):
            if label == IGNORE_INDEX:
                continue
            p, idx = probs[i, t].topk(top_k)
            guesses = ", ".join(f"{tokenizer.id_to_token(j)} ({q:.2f})" for j, q in zip(idx.tolist(), p.tolist()))
            shown = "[MASK]" if token == mask_id else tokenizer.id_to_token(token)
            lines.append(f"- {shown} -> {guesses}; truth: {tokenizer.id_to_token(label)}")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)
