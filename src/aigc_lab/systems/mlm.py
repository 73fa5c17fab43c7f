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
from dataclasses import replace
from functools import partial
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_only
from tokenizers import Tokenizer

from aigc_lab.data.masking import IGNORE_INDEX
from aigc_lab.data.tokenizer import MASK, SPECIAL_TOKENS
from aigc_lab.errors import UserError
from aigc_lab.models.mlm import MaskedLM, MLMConfig, layout_of
from aigc_lab.systems.flops import output_flops, stack_flops
from aigc_lab.systems.spec import SystemSpec, register, sub_state_dict
from aigc_lab.systems.token_system import TokenSystem, saved_vocab_size
from aigc_lab.utils.memory import (
    TRAIN_STATE_BYTES,
    VALUE_BYTES,
    Need,
    TransformerShape,
    mlm_params,
    param_count,
    transformer_parts,
)
from aigc_lab.utils.validate import positive

Batch = dict[str, torch.Tensor]  # input_ids [B, T], labels [B, T], attention_mask [B, T] (when padded)


def mlm_tokens(system: MLMSystem, batch: Batch) -> int:
    """Non-pad input tokens."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else batch["input_ids"].numel()


def mlm_train_flops(system: MLMSystem, batch: Batch) -> int:
    """``tokens * (6 N + 12 L d T) + masked * 6 V d`` (systems/flops.py; T: the padded length; the vocabulary
    projection is computed at masked positions only)."""
    model, cfg = system.model, system.cfg
    masked = int((batch["labels"] != IGNORE_INDEX).sum())
    body = stack_flops(param_count(model.encoder), cfg.n_layers, cfg.d_model, batch["input_ids"].shape[1],
                       mlm_tokens(system, batch))
    return body + head_flops(cfg, masked) + output_flops(masked, cfg.vocab_size, cfg.d_model)


def head_flops(cfg: MLMConfig, masked: int) -> int:
    """Training FLOPs of the head transform's D x D dense layer at the masked positions: 2 per multiply-add forward,
    2 for the input's gradient, and 2 for the weight's gradient unless the layer is fixed."""
    if not cfg.head_transform:
        return 0
    return masked * cfg.d_model * cfg.d_model * (6 if cfg.head_dense == "learned" else 4)



SPEC = register(SystemSpec(
    name="mlm", describes="a masked LM (experiment=mlm_*)", data_option="text",
    net_config=MLMConfig, checkpoint_key="mlm_config",
    inference="aigc_lab.fill_mask:run", export={"hf": "aigc_lab.hf_export:export_mlm"},
    count_samples=lambda batch: len(batch["input_ids"]), count_tokens=mlm_tokens, train_flops=mlm_train_flops,
))


class MLMSystem(TokenSystem):
    spec = SPEC
    model_class, special_tokens = MaskedLM, SPECIAL_TOKENS
    length_key, display_name = "block_size", "the masked LM"

    def __init__(
        self,
        net: partial | MLMConfig,
        optimizer: partial,
        # the training options both token systems take (TokenSystem.check_options checks them)
        lr: float = 5e-4, schedule: Literal["cosine", "linear", "constant"] = "cosine", warmup_ratio: float = 0.06,
        min_lr_ratio: float = 0.0, num_examples: int = 3, nonfinite_loss: Literal["stop", "skip"] = "stop",
        example_top_k: int = 3, init_from: str | None = None,
    ) -> None:
        """``net``: a partial ``MLMConfig`` completed with the tokenizer's vocabulary size (or a full
        config, then its vocab_size must match the tokenizer). ``lr`` is the peak learning rate, read
        by the optimizer config through interpolation. The schedule warms up linearly over
        ``warmup_ratio`` of the training steps, then decays (cosine or linear) to ``min_lr_ratio * lr``.
        ``num_examples`` validation sequences are shown with their ``example_top_k`` predictions per
        [MASK] in TensorBoard's TEXT tab. ``nonfinite_loss``: a NaN/inf loss stops the run or skips the step
        (``systems/guards.py``). ``init_from``: a folder written by ``python -m aigc_lab.export format=hf`` whose
        weights a new training run starts from (its network and tokenizer must be the run's)."""
        super().__init__()
        self.check_options(net, optimizer, lr, schedule, ("cosine", "linear", "constant"), warmup_ratio,
                           min_lr_ratio, num_examples, nonfinite_loss)
        positive("model.example_top_k", example_top_k)
        self.save_hyperparameters(logger=False)
        self.init_network(net)
        self._examples: Batch | None = None
        self._initialized = False  # the weights of model.init_from are loaded

    # ---------------------------------------------------------------- building and checkpoints
    def configure_model(self) -> None:
        super().configure_model()
        try:
            trainer = self.trainer
        except RuntimeError:  # no trainer: nothing to start from
            return
        # A new training run only: a resumed one (ckpt_path) continues from its checkpoint's weights.
        if self.hparams.init_from and trainer.state.fn == "fit" and not trainer.ckpt_path and not self._initialized:
            self.init_from_folder(str(self.hparams.init_from))

    def init_from_folder(self, path: str) -> None:
        """Load the weights of an exported folder (hf_export.py) into the model, after checking that its tokenizer
        and network are the run's (a UserError names the overrides that make them so)."""
        from tokenizers import Tokenizer

        from aigc_lab.models.hf_mlm import load_mlm_folder

        net, state, tokenizer_json = load_mlm_folder(path)
        use_its = f"data.tokenizer_path={path.rstrip('/')}/tokenizer.json"
        if tokenizer_json is not None and Tokenizer.from_str(tokenizer_json).get_vocab() != self.tokenizer.get_vocab():
            raise UserError(f"model.init_from={path} was trained with another tokenizer than the data's: set {use_its}")
        if net.vocab_size != self.cfg.vocab_size:
            raise UserError(f"model.init_from={path} has {net.vocab_size} tokens, the data's tokenizer "
                            f"{self.cfg.vocab_size}: set {use_its}")
        fields = ("n_layers", "d_model", "n_heads", "mlp_ratio", "max_len", "layout")
        differ = [f"model.net.{k}={getattr(net, k)}" for k in fields if getattr(net, k) != getattr(self.cfg, k)]
        if differ:
            raise UserError(f"model.init_from={path} is another network than model.net: set {' '.join(differ)}")
        self.model.load_state_dict(state)
        self._initialized = True

    @classmethod
    def saved_config(cls, checkpoint: dict[str, Any]) -> MLMConfig:
        """The saved network config; checkpoints from before ``layout`` existed get the one of their weights, those
        from before ``head_dense`` existed a learned one (the only kind then)."""
        saved = dict(checkpoint[cls.spec.checkpoint_key])
        saved.setdefault("layout", layout_of(sub_state_dict(checkpoint["state_dict"], "model.")))
        saved.setdefault("head_dense", "learned")
        return MLMConfig(**saved)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        # A model built from today's config (eval, a resume) takes the layout and head of the checkpoint's run.
        saved = self.saved_config(checkpoint)
        if (self.cfg.layout, self.cfg.head_dense) != (saved.layout, saved.head_dense):
            self.cfg = replace(self.cfg, layout=saved.layout, head_dense=saved.head_dense)
            self.model = MaskedLM(self.cfg)

    # ---------------------------------------------------------------- sizes (checked before any data work)
    def memory_needs(self, datamodule: Any, stage: str = "fit") -> list[Need]:
        """One training and one validation batch (``stage="fit"``), or one test batch (``"test"``), as functions
        of data.block_size, the batch size and data.vocab_size (utils/memory.py has the formulas). The vocabulary
        is data.vocab_size, the most the tokenizer learns (a saved tokenizer's own size with data.tokenizer_path)."""
        h = getattr(datamodule, "hparams", None)
        if h is None or "block_size" not in h:
            return []
        fixed_vocab = self.cfg.vocab_size if self.cfg is not None else saved_vocab_size(h.get("tokenizer_path"))
        cfg = self.network_config(fixed_vocab or h.vocab_size)
        shape = TransformerShape.of(cfg)
        own_positions = cfg.max_len != h.block_size  # else the table follows data.block_size (${data.block_size})

        def batch(batch_key: str, training: bool, state_bytes: int) -> Need:
            def parts(sizes: dict[str, int]) -> list:
                length, vocab = sizes["data.block_size"], sizes.get("data.vocab_size", fixed_vocab)
                params = mlm_params(shape, vocab, cfg.max_len if own_positions else length, cfg.embedding_norm,
                                    cfg.head_transform)
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
        return self.step_loss(loss)

    # ---------------------------------------------------------------- evaluation
    def reset_totals(self) -> None:
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
