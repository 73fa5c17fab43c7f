"""The time budget: a fit ends at its budget with its schedule run to the end, and a resumed fit keeps it.

A fake clock drives the callback (each training step "takes" one second, validation three), so the tests do
not depend on this machine's speed."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from aigc_lab.callbacks import time_budget as tb
from aigc_lab.callbacks.time_budget import TimeBudget
from aigc_lab.errors import ConfigError
from aigc_lab.systems.schedule import planned_steps, warmup_then_decay


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class Tiny(L.LightningModule):
    """A linear model under the masked LM's schedule (warm-up, then linear decay to 0); records its LRs."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.clock, self.lrs, self.val_steps = clock, [], []

    def training_step(self, batch, batch_idx):
        self.clock.now += 1.0
        self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.clock.now += 3.0 / len(self.trainer.val_dataloaders)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.val_steps.append(self.trainer.global_step)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        factor = warmup_then_decay(planned_steps(self.trainer), 0.1, "linear", 0.0)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "interval": "step"}}


def loader(n: int = 64) -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(n, 4)), batch_size=1)


def fit(clock, budget: TimeBudget, max_steps: int, **kwargs) -> tuple[L.Trainer, Tiny]:
    model = Tiny(clock)
    trainer = L.Trainer(accelerator="cpu", max_steps=max_steps, max_epochs=-1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                        val_check_interval=20, check_val_every_n_epoch=None, limit_val_batches=2, callbacks=[budget],
                        **kwargs)
    trainer.fit(model, loader(), loader(4))
    return trainer, model


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    clock = FakeClock()
    monkeypatch.setattr(tb.time, "monotonic", clock.monotonic)
    return clock


def test_budget_ends_the_fit_with_the_schedule_at_its_end(clock, single_thread):
    trainer, model = fit(clock, TimeBudget(minutes=1.0), max_steps=500)  # ~55 one-second steps fit in 60 s
    steps = trainer.global_step
    assert 45 <= steps <= 60, steps
    assert 60.0 <= clock.now - 1000.0 <= 66.0  # stopped at the budget (+ the last step and its validation)
    assert model.val_steps[-1] == steps  # validated at the stop
    peak = max(model.lrs)
    assert peak == pytest.approx(0.1, rel=0.2)  # the warm-up reached the peak
    assert model.lrs[-1] < 0.1 * peak  # and the decay ran to (nearly) its end, not cut part-way as max_time does
    assert all(b <= a + 1e-9 for a, b in zip(model.lrs[10:], model.lrs[11:]))  # decaying throughout


def test_fast_machine_runs_the_planned_steps(clock, single_thread):
    trainer, model = fit(clock, TimeBudget(minutes=10.0), max_steps=40)
    assert trainer.global_step == 40 and model.val_steps[-1] == 40
    assert clock.now - 1000.0 < 60


def test_no_budget_changes_nothing(clock, single_thread):
    trainer, model = fit(clock, TimeBudget(minutes=None), max_steps=30)
    assert trainer.global_step == 30 and trainer.max_steps == 30


def test_resume_keeps_the_budget(clock, tmp_path, single_thread):
    first = TimeBudget(minutes=1.0)
    trainer, _ = fit(clock, first, max_steps=25)  # a first launch ended early (here: by its steps)
    ckpt = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=False)["callbacks"]["TimeBudget"]
    assert state["elapsed_s"] == pytest.approx(clock.now - 1000.0, abs=4) and state["budget_s"] == 60.0

    start = clock.now
    model = Tiny(clock)
    resumed = L.Trainer(accelerator="cpu", max_steps=500, max_epochs=-1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                        val_check_interval=20, check_val_every_n_epoch=None, limit_val_batches=2,
                        callbacks=[TimeBudget(minutes=1.0)])
    resumed.fit(model, loader(), loader(4), ckpt_path=ckpt)
    # The whole fit (both launches) stays within the budget: the second launch gets only what is left.
    assert (clock.now - start) + state["elapsed_s"] <= 66.0
    assert resumed.global_step < 60


@pytest.mark.parametrize("minutes", [0, -1, float("nan"), "ten"])
def test_bad_budget(minutes):
    with pytest.raises(ConfigError, match="callbacks.time_budget.minutes"):
        TimeBudget(minutes=minutes)
