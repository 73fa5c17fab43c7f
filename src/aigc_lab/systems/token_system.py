"""What the tokenized systems (the masked LM, the seq2seq model) share: the network is built in
``configure_model`` once the datamodule's tokenizer is known (its vocabulary size completes the partial network
config), the tokenizer travels in checkpoints (``tokenizer_json``) so that inference needs the checkpoint alone,
AdamW parameter groups with and without weight decay, and a warm-up then decay schedule by optimizer step.

A subclass sets its ``spec`` (whose ``net_config`` is the network's config class), ``model_class``,
``special_tokens``, ``length_key`` (the datamodule's sequence-length hyperparameter, which must fit the model's
``max_len``) and ``display_name`` (``the masked LM``, for messages). Both take the same training options
(``check_options``): ``net``, ``optimizer``, ``lr``, ``schedule``, ``warmup_ratio``, ``min_lr_ratio``,
``num_examples`` and ``nonfinite_loss``.
"""

from __future__ import annotations

from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import torch
from tokenizers import Tokenizer
from torch import nn

from aigc_lab.data.tokenizer import tokenizer_from_json
from aigc_lab.errors import UserError
from aigc_lab.systems.guards import check_policy
from aigc_lab.systems.schedule import planned_steps, warmup_then_decay
from aigc_lab.systems.spec import System, sub_state_dict
from aigc_lab.utils.validate import at_least, in_interval, net_config, one_of, optimizer_lr, positive

TOKENIZER_KEY = "tokenizer_json"  # the tokenizer a checkpoint carries (its JSON)


class TokenSystem(System):
    model_class: ClassVar[type[nn.Module]]
    special_tokens: ClassVar[tuple[str, ...]]
    length_key: ClassVar[str]
    display_name: ClassVar[str]

    cfg: Any
    model: nn.Module | None
    tokenizer: Tokenizer | None

    def check_options(self, net: partial | Any, optimizer: partial, lr: float, schedule: str,
                      schedules: tuple[str, ...], warmup_ratio: float, min_lr_ratio: float, num_examples: int,
                      nonfinite_loss: str) -> None:
        """The options both token systems take, checked before any data work (a ConfigError names the key)."""
        positive("model.lr", lr)
        optimizer_lr("model.optimizer", optimizer)
        in_interval("model.warmup_ratio", warmup_ratio, 0, 1, "[)")
        in_interval("model.min_lr_ratio", min_lr_ratio, 0, 1)
        one_of("model.schedule", schedule, schedules)
        at_least("model.num_examples", num_examples, 0)
        check_policy(nonfinite_loss)
        if not isinstance(net, self.spec.net_config):  # the fields but the vocabulary, which the tokenizer gives
            net_config("model.net", net, vocab_size=len(self.special_tokens) + 1)

    def init_network(self, net: partial | Any) -> None:
        """``net``: a full network config (the model is built now) or a partial one (built in
        ``configure_model``, from the tokenizer's vocabulary)."""
        self.cfg = net if isinstance(net, self.spec.net_config) else None
        self.model = self.model_class(self.cfg) if self.cfg is not None else None
        self.tokenizer = None

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
            raise UserError(f"{self.display_name} needs a datamodule with a tokenizer "
                            f"(e.g. data={self.spec.data_option})")
        self.cfg = self.hparams.net(vocab_size=self.tokenizer.get_vocab_size())
        self.model = self.model_class(self.cfg)
        self.check_length(getattr(getattr(datamodule, "hparams", None), self.length_key, 0), self.cfg.max_len)

    def check_bounds(self, datamodule: Any) -> None:
        """The datamodule's sequence length against the model's position table (model.net.max_len)."""
        length = getattr(getattr(datamodule, "hparams", None), self.length_key, 0)
        self.check_length(length, self.network_config(len(self.special_tokens) + 1).max_len)

    def check_length(self, length: int, max_len: int) -> None:
        if length > max_len:
            raise UserError(f"data.{self.length_key} ({length}) exceeds model.net.max_len ({max_len})")

    def network_config(self, vocab_size: int) -> Any:
        """The network config: the built one, else the partial one completed with ``vocab_size``."""
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

    # ---------------------------------------------------------------- evaluation
    def reset_totals(self) -> None:
        """Zero what validation and test sum over the whole set (each system's own totals)."""
        raise NotImplementedError

    def on_validation_epoch_start(self) -> None:
        self.reset_totals()

    def on_test_epoch_start(self) -> None:
        self.reset_totals()

    # ---------------------------------------------------------------- optimization
    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.hparams.optimizer(weight_decay_groups(self))  # curves: lr/decay, lr/no_decay
        factor = warmup_then_decay(planned_steps(self.trainer), self.hparams.warmup_ratio, self.hparams.schedule,
                                   self.hparams.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"}}

    # ---------------------------------------------------------------- checkpoints
    @classmethod
    def load_for_inference(cls, ckpt: dict[str, Any]) -> tuple[nn.Module, Tokenizer]:
        """The network of a checkpoint of this system, in eval mode, and its tokenizer (the spec's ``load``)."""
        key = cls.spec.checkpoint_key
        if key not in ckpt or not ckpt.get(TOKENIZER_KEY):
            raise UserError(f"this checkpoint is not {cls.spec.describes}'s (no {key}/{TOKENIZER_KEY})")
        model = cls.model_class(cls.saved_config(ckpt))
        model.load_state_dict(sub_state_dict(ckpt["state_dict"], "model."))
        return model.eval(), tokenizer_from_json(ckpt[TOKENIZER_KEY], cls.special_tokens)

    @classmethod
    def saved_config(cls, checkpoint: dict[str, Any]) -> Any:
        """The network config a checkpoint of this system was saved with."""
        return cls.spec.net_config(**checkpoint[cls.spec.checkpoint_key])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[self.spec.checkpoint_key] = asdict(self.cfg)  # lets `generate` rebuild the model alone
        checkpoint[TOKENIZER_KEY] = self.tokenizer.to_str() if self.tokenizer is not None else None

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get(TOKENIZER_KEY)
        if self.tokenizer is not None and saved is not None and saved != self.tokenizer.to_str():
            raise UserError(
                "this checkpoint was trained with another tokenizer than the datamodule's: point "
                "data.tokenizer_path at the checkpoint's run dir tokenizer.json"
            )
        if saved is not None and self.tokenizer is None:
            self.tokenizer = tokenizer_from_json(saved, self.special_tokens)
        if self.model is None:  # load_from_checkpoint outside a trainer: build from the saved config
            self.cfg = self.saved_config(checkpoint)
            self.model = self.model_class(self.cfg)


def saved_vocab_size(tokenizer_path: str | None) -> int | None:
    """The vocabulary size of a saved tokenizer.json (data.tokenizer_path), or None (none given, or unreadable:
    the datamodule reports that when it loads it)."""
    if not tokenizer_path:
        return None
    try:
        return Tokenizer.from_file(str(Path(tokenizer_path).expanduser())).get_vocab_size()
    except Exception:  # tokenizers raises its own Exception type
        return None


def weight_decay_groups(module: nn.Module) -> list[dict]:
    """Optimizer parameter groups: every matrix decays, biases and LayerNorm weights (ndim < 2) do not.
    The names label the learning-rate curves (lr/decay, lr/no_decay)."""
    decay = [p for p in module.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in module.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "name": "decay"}, {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
