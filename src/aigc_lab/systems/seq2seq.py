"""Seq2seq translation with Lightning (automatic optimization).

Training: teacher forcing ([BOS] y_1 .. y_{T-1} -> y_1 .. y_T [EOS]) with label-smoothed cross-entropy
over the non-pad target tokens; AdamW with weight decay on matrices only, linear warm-up then
inverse-sqrt, cosine, linear or no decay (``systems.schedule.lr_factor``); gradient clipping by
``trainer.gradient_clip_val``.

Validation and test: ``{stage}/loss`` is the plain (unsmoothed) token cross-entropy summed over the whole
set and all ranks, divided by the token count. Sentences are translated by beam search (greedy for
``beam_size: 1``) and scored with sacreBLEU on detokenized text against the raw references:
``{stage}/bleu``, ``{stage}/chrf``, and ``{stage}/exact_match`` (the share of hypotheses equal to their
reference: the synthetic task's measure). Validation translates only its first ``val_decode_batches``
batches (null: all) to stay cheap; the test translates everything. Under DDP, every rank's
(source, reference, hypothesis) triples are gathered (``all_gather_object``) before scoring, so every
rank computes the same corpus-level scores from all sentences. A few validation translations go to
TensorBoard's TEXT tab.

The model is built in ``configure_model`` from the datamodule's tokenizer (``net`` is a partial
``Seq2SeqConfig``, every field but ``vocab_size``). Checkpoints carry ``seq2seq_config`` and
``tokenizer_json``, so translation works from a checkpoint alone.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_only
from tokenizers import Tokenizer

from aigc_lab.data.parallel import Batch, detokenize
from aigc_lab.data.tokenizer import BOS, EOS, PAD, SEQ2SEQ_SPECIAL_TOKENS
from aigc_lab.errors import ConfigError
from aigc_lab.models.decoding import search
from aigc_lab.models.linear_ce import linear_cross_entropy
from aigc_lab.models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer
from aigc_lab.systems.flops import output_flops, stack_flops
from aigc_lab.systems.spec import SystemSpec, register
from aigc_lab.systems.token_system import TokenSystem
from aigc_lab.utils.memory import (
    TRAIN_STATE_BYTES,
    VALUE_BYTES,
    Need,
    Part,
    TransformerShape,
    beam_search_parts,
    param_count,
    seq2seq_params,
    transformer_parts,
)
from aigc_lab.utils.validate import at_least, in_interval, positive

Triple = tuple[str, str, str]  # (source, reference, hypothesis)


def target_tokens(system: Seq2SeqSystem, batch: Batch) -> int:
    """Non-pad target tokens."""
    return int((batch["tgt_out"] != system.pad_id).sum())


def seq2seq_train_flops(system: Seq2SeqSystem, batch: Batch) -> int:
    """``src_tokens * (6 N_enc + 12 L_enc d S) + tgt_tokens * (6 N_dec + 12 L_dec d (T + S) + 6 V d)``
    (systems/flops.py; decoder self-attention over T, cross-attention over S)."""
    model, cfg = system.model, system.cfg
    src_len, tgt_len = batch["src"].shape[1], batch["tgt_out"].shape[1]
    src_tokens, tgt_tokens = int(batch["src_mask"].sum()), target_tokens(system, batch)
    encoder = stack_flops(param_count(model.encoder), cfg.n_enc_layers, cfg.d_model, src_len, src_tokens)
    decoder = stack_flops(param_count(model.decoder, model.dec_ln), cfg.n_dec_layers, cfg.d_model,
                          tgt_len + src_len, tgt_tokens)
    return encoder + decoder + output_flops(tgt_tokens, cfg.vocab_size, cfg.d_model)



SPEC = register(SystemSpec(
    name="seq2seq", describes="a seq2seq model (experiment=seq2seq_*)", data_option="parallel",
    net_config=Seq2SeqConfig, checkpoint_key="seq2seq_config",
    inference="aigc_lab.translate:run", export={"hf": "aigc_lab.hf_seq2seq:export_seq2seq"},
    count_samples=lambda batch: len(batch["src"]), count_tokens=target_tokens, train_flops=seq2seq_train_flops,
))


class Seq2SeqSystem(TokenSystem):
    spec = SPEC
    model_class, special_tokens = Seq2SeqTransformer, SEQ2SEQ_SPECIAL_TOKENS
    length_key, display_name = "max_len", "the seq2seq model"

    def __init__(
        self,
        net: partial | Seq2SeqConfig,
        optimizer: partial,
        # the training options both token systems take (TokenSystem.check_options checks them)
        lr: float = 5e-4, schedule: Literal["inverse_sqrt", "cosine", "linear", "constant"] = "inverse_sqrt",
        warmup_ratio: float = 0.05, min_lr_ratio: float = 0.0, num_examples: int = 4,
        nonfinite_loss: Literal["stop", "skip"] = "stop",
        label_smoothing: float = 0.1,
        # decoding (validation and test)
        beam_size: int = 4, length_penalty: float = 1.0, max_decode_len: int = 128, val_decode_batches: int | None = 4,
    ) -> None:
        """``net``: a partial ``Seq2SeqConfig`` completed with the tokenizer's vocabulary size (or a full
        config, then its vocab_size must match the tokenizer). ``lr`` is the peak learning rate, read by the
        optimizer config through interpolation; the warm-up lasts ``warmup_ratio`` of the training steps.
        Decoding: ``beam_size`` (1 = greedy), GNMT ``length_penalty`` alpha, at most ``max_decode_len``
        tokens and at most 2 x the batch's source length + 10. ``nonfinite_loss``: a NaN/inf loss stops the run
        or skips the step (``systems/guards.py``)."""
        super().__init__()
        self.check_options(net, optimizer, lr, schedule, ("inverse_sqrt", "cosine", "linear", "constant"),
                           warmup_ratio, min_lr_ratio, num_examples, nonfinite_loss)
        in_interval("model.label_smoothing", label_smoothing, 0, 1, "[)")
        at_least("model.beam_size", beam_size, 1)
        at_least("model.max_decode_len", max_decode_len, 1)
        positive("model.val_decode_batches", val_decode_batches, optional=True)  # null: all
        self.save_hyperparameters(logger=False)
        self.init_network(net)
        self._outputs: list[Triple] = []

    # ---------------------------------------------------------------- sizes (checked before any data work)
    def check_bounds(self, datamodule: Any) -> None:
        """The datamodule's sizes against the model: pairs must fit the position tables (model.net.max_len), and
        a beam cannot keep more hypotheses than the vocabulary has tokens."""
        h = getattr(datamodule, "hparams", None)
        if h is None or "max_len" not in h:
            return
        super().check_bounds(datamodule)
        vocab = _vocab_bound(h)
        if self.hparams.beam_size > vocab:
            raise ConfigError(f"model.beam_size must be <= the vocabulary ({vocab} tokens, {_vocab_source(h)}), "
                              f"got {self.hparams.beam_size}: a beam of 4 or 5 is usual")

    def memory_needs(self, datamodule: Any, stage: str = "fit") -> list[Need]:
        """One training and one validation batch (``stage="fit"``), or one test batch (``"test"``), as functions
        of the token budget, data.max_len, the beam and the vocabulary (formulas: utils/memory.py). A budget of N
        tokens is counted as N / (2 x max_len) pairs of max_len tokens a side; beam search as if the batch held
        the shortest pairs (4 tokens, so N / 4 sentences) decoding 2 x the source + 10 tokens: its worst case."""
        h = getattr(datamodule, "hparams", None)
        if h is None or "max_tokens" not in h:
            return []
        vocab_key = h.task == "tsv" and not h.tokenizer_path and self.cfg is None
        fixed_vocab = self.cfg.vocab_size if self.cfg is not None else _vocab_bound(h)
        cfg = self.network_config(fixed_vocab)
        shape = TransformerShape.of(cfg)
        own_positions = cfg.max_len != h.max_len  # else the tables follow data.max_len (${data.max_len})

        def common(sizes: dict[str, int], budget_key: str) -> tuple[int, int, int, int]:
            length, vocab = sizes["data.max_len"], sizes.get("data.vocab_size", fixed_vocab)
            params = seq2seq_params(shape, vocab, cfg.max_len if own_positions else length, cfg.tie_embeddings)
            return length, vocab, params, max(1, sizes[budget_key] // (2 * length))

        def training(sizes: dict[str, int]) -> list[Part]:
            length, vocab, params, pairs = common(sizes, "data.max_tokens")
            return transformer_parts(shape, params, pairs, length, length, pairs * length, vocab)

        def evaluation(state_bytes: int) -> Callable[[dict[str, int]], list[Part]]:
            def parts(sizes: dict[str, int]) -> list[Part]:
                length, vocab, params, pairs = common(sizes, "data.eval_max_tokens")
                budget, beam = sizes["data.eval_max_tokens"], sizes["model.beam_size"]
                sentences = max(1, budget // 4)
                decoded = min(4.5 * budget, sentences * min(self.hparams.max_decode_len, cfg.max_len))
                return [*transformer_parts(shape, params, pairs, length, length, pairs * length, vocab,
                                           training=False, state_bytes=state_bytes),
                        *beam_search_parts(shape, beam * sentences, int(beam * (budget + decoded)), vocab)]
            return parts

        lowest = {"data.max_len": 2, "data.vocab_size": len(SEQ2SEQ_SPECIAL_TOKENS) + 1}
        eval_sizes = {"data.eval_max_tokens": h.eval_max_tokens, "data.max_len": h.max_len,
                      "model.beam_size": self.hparams.beam_size}
        train_sizes = {"data.max_tokens": h.max_tokens, "data.max_len": h.max_len}
        if vocab_key:
            train_sizes["data.vocab_size"] = eval_sizes["data.vocab_size"] = h.vocab_size
        for key in ("data.max_tokens", "data.eval_max_tokens"):
            lowest[key] = 2 * h.max_len  # the longest pair must fit a batch
        if stage == "fit":
            return [Need("one training batch", train_sizes, training, lowest),
                    Need("one validation batch", eval_sizes, evaluation(TRAIN_STATE_BYTES), lowest)]
        return [Need("one test batch", eval_sizes, evaluation(VALUE_BYTES), lowest)]

    @property
    def pad_id(self) -> int:
        return self.tokenizer.token_to_id(PAD)

    # ---------------------------------------------------------------- training
    def teacher_forced_loss(self, batch: Batch, label_smoothing: float = 0.0, reduction: str = "mean") -> \
            tuple[torch.Tensor, int]:
        """Teacher-forced cross-entropy over the non-pad target positions, and their number. The output layer and the
        loss run a chunk of positions at a time (models/linear_ce.py): the [M, V] logits never exist whole."""
        positions = batch["tgt_out"] != self.pad_id  # [B, T]
        states = self.model.target_states(batch["src"], batch["src_mask"], batch["tgt_in"], positions)  # [M, D]
        target = batch["tgt_out"][positions]  # [M]
        loss = linear_cross_entropy(states, self.model.output_weight, self.model.out_bias, target, label_smoothing,
                                    reduction)
        return loss, len(target)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        return self.step_loss(self.teacher_forced_loss(batch, self.hparams.label_smoothing)[0])

    # ---------------------------------------------------------------- evaluation
    def reset_totals(self) -> None:
        self._totals = torch.zeros(2, device=self.device, dtype=torch.float64)  # loss sum, target tokens
        self._outputs = []

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._accumulate(batch)
        limit = self.hparams.val_decode_batches
        if limit is None or batch_idx < limit:
            self._translate(batch)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._accumulate(batch)
        self._translate(batch)

    def _accumulate(self, batch: Batch) -> None:
        loss_sum, n = self.teacher_forced_loss(batch, reduction="sum")
        self._totals += torch.stack([loss_sum.double(), torch.tensor(n, dtype=torch.float64, device=loss_sum.device)])

    def _translate(self, batch: Batch) -> None:
        src = batch["src"]
        max_len = min(self.hparams.max_decode_len, 2 * src.shape[1] + 10)
        if self.trainer.sanity_checking:
            # The sanity check only proves that decoding and scoring run: an untrained model never emits [EOS],
            # so a full-length beam search would add tens of seconds before the first training step.
            max_len = min(max_len, 4)
        ids = search(self.model, src, batch["src_mask"], self.tokenizer.token_to_id(BOS),
                     self.tokenizer.token_to_id(EOS), max_len, self.hparams.beam_size, self.hparams.length_penalty)
        self._outputs += zip(batch["source"], batch["reference"], detokenize(self.tokenizer, ids))

    def on_validation_epoch_end(self) -> None:
        outputs = self._log_scores("val")
        if not self.trainer.sanity_checking and outputs and self.hparams.num_examples > 0:
            self._log_examples(outputs[: self.hparams.num_examples])

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")

    def _log_scores(self, stage: str) -> list[Triple]:
        loss_sum, n = self.trainer.strategy.reduce(self._totals, reduce_op="sum").tolist()
        # Global values on every rank (sums, gathered sentences): sync_dist averages equal numbers, a no-op
        # that marks them global for Lightning.
        self.log(f"{stage}/loss", loss_sum / max(n, 1.0), prog_bar=stage == "val", sync_dist=True)
        outputs = gather_objects(self._outputs)  # every rank's sentences: the same scores on every rank
        if outputs:
            scores = corpus_scores([h for _, _, h in outputs], [r for _, r, _ in outputs])
            self.log(f"{stage}/bleu", scores["bleu"], prog_bar=stage == "val", sync_dist=True)
            self.log(f"{stage}/chrf", scores["chrf"], sync_dist=True)
            self.log(f"{stage}/exact_match", scores["exact_match"], prog_bar=stage == "val", sync_dist=True)
        return outputs

    @rank_zero_only
    def _log_examples(self, outputs: list[Triple]) -> None:
        text = "\n\n".join(
            f"**{i}.** source: `{s}`  \nreference: `{r}`  \nhypothesis: `{h}`" for i, (s, r, h) in enumerate(outputs, 1)
        )
        for logger in self.loggers:
            if hasattr(logger.experiment, "add_text"):
                logger.experiment.add_text("translations/val_examples", text, self.global_step)

def _vocab_bound(h: Any) -> int:
    """The most tokens the datamodule's tokenizer can have: the synthetic task's symbols and special tokens, a
    saved tokenizer's size, else data.vocab_size (or the byte-level BPE's 4 special tokens and 256 bytes, which
    it always holds)."""
    if h.task == "synthetic":
        return len(SEQ2SEQ_SPECIAL_TOKENS) + h.synthetic_symbols
    if h.tokenizer_path:
        try:
            return Tokenizer.from_file(str(Path(h.tokenizer_path).expanduser())).get_vocab_size()
        except Exception:  # tokenizers raises its own Exception type; the datamodule reports a bad file itself
            pass
    return max(h.vocab_size, len(SEQ2SEQ_SPECIAL_TOKENS) + 256)


def _vocab_source(h: Any) -> str:
    if h.task == "synthetic":
        return f"{len(SEQ2SEQ_SPECIAL_TOKENS)} special tokens and data.synthetic_symbols={h.synthetic_symbols}"
    return "data.tokenizer_path" if h.tokenizer_path else f"data.vocab_size={h.vocab_size}"


def gather_objects(items: list[Any]) -> list[Any]:
    """Every rank's items, concatenated in rank order (DDP); the items themselves in a single process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return items
    gathered: list[list[Any] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


def corpus_scores(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """sacreBLEU's corpus BLEU and chrF (default settings: 13a tokenization, one reference each) and the
    share of hypotheses equal to their reference (whitespace collapsed), on detokenized text."""
    import sacrebleu  # imported here: only evaluation needs it

    return {
        "bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score,
        "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score,
        "exact_match": sum(h == " ".join(r.split()) for h, r in zip(hypotheses, references)) / max(len(hypotheses), 1),
    }
