"""The throughput callback: samples/s, tokens/s, FLOP/s and MFU in a run's logs; peaks and FLOP formulas."""

from __future__ import annotations

import csv
from dataclasses import replace
from functools import partial
from types import SimpleNamespace

import pytest
import torch
from conftest import run_dirs
from runs import ENV, GAN, SEQ2SEQ, mlm

from aigc_lab.callbacks import throughput as tp
from aigc_lab.models.mlm import MLMConfig

# A 2-batch window fits debug=fdr's 2 training batches; a configured peak gives MFU on a CPU.
WATCH = ("logger=many", "callbacks.throughput.window_size=2", "callbacks.throughput.peak_flops=1e12")


def logged(run) -> dict[str, float]:
    """The last value of every column of the run's CSV log."""
    last: dict[str, float] = {}
    with open(run / "csv" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            last.update({k: float(v) for k, v in row.items() if v != ""})
    return last


@pytest.mark.parametrize("system", ["gan", "mlm", "seq2seq"])
def test_throughput_is_logged(run_cli, tmp_path, text_corpus, system):
    overrides = {"gan": GAN, "mlm": mlm(text_corpus), "seq2seq": SEQ2SEQ}[system]
    run_cli(*overrides, *WATCH, env=ENV)
    (run,) = run_dirs(tmp_path)
    metrics = logged(run)
    for name in ("samples_per_sec", "batches_per_sec", "flops_per_sec", "mfu"):
        assert metrics[f"train/device/{name}"] > 0, name
    assert 0 < metrics["train/device/mfu"] < 1
    assert metrics["train/device/flops_per_sec"] == pytest.approx(1e12 * metrics["train/device/mfu"])
    assert ("train/device/items_per_sec" in metrics) == (system != "gan")  # tokens/s; images have none


def test_dense_peaks(monkeypatch):
    cuda = torch.device("cuda", 0)
    for name, precision, peak in [("NVIDIA H200", "bf16-mixed", 989e12), ("NVIDIA H100 80GB HBM3", "16-mixed", 989e12),
                                  ("NVIDIA H100 PCIe", "bf16-mixed", 756e12), ("NVIDIA H200 NVL", "bf16-true", 835e12),
                                  ("NVIDIA A100-SXM4-80GB", "bf16-mixed", 312e12)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, n=name: n)
        assert tp.dense_peak(cuda, precision) == peak, name
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "high")
    assert tp.dense_peak(cuda, "32-true") == 156e12  # TF32 on an A100
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    assert tp.dense_peak(cuda, "16-mixed") is None  # not in the table: Lightning's lookup decides
    assert tp.dense_peak(torch.device("cpu"), "bf16-mixed") is None


def test_mlm_formula_by_hand():
    from aigc_lab.systems.mlm import SPEC, mlm_train_flops

    # N = an encoder of 2 blocks of 8 parameters + a final LayerNorm of 4 = 20; 2 layers, width 4, vocabulary 7;
    # one sequence of 5 positions: 3 tokens and 2 pads, 2 of the tokens masked.
    encoder = torch.nn.ModuleList([torch.nn.Linear(3, 2), torch.nn.Linear(3, 2), torch.nn.LayerNorm(2)])
    cfg = MLMConfig(vocab_size=7, n_layers=2, d_model=4, n_heads=1, max_len=5, layout="plain")
    system = SimpleNamespace(model=SimpleNamespace(encoder=encoder), cfg=cfg)
    batch = {"input_ids": torch.zeros(1, 5), "attention_mask": torch.tensor([[1, 1, 1, 0, 0]]),
             "labels": torch.tensor([[-100, 4, 5, -100, -100]])}
    assert mlm_train_flops(system, batch) == 3 * (6 * 20 + 12 * 2 * 4 * 5) + 2 * 6 * 7 * 4
    system.cfg = replace(cfg, layout="xlm_roberta_xl", head_dense="learned")  # + the head's D x D at 2 positions
    assert mlm_train_flops(system, batch) == 3 * (6 * 20 + 12 * 2 * 4 * 5) + 2 * 6 * 7 * 4 + 2 * 6 * 4 * 4
    system.cfg = replace(cfg, layout="xlm_roberta_xl")  # a fixed dense: no weight gradient, 4 FLOPs of the 6
    assert mlm_train_flops(system, batch) == 3 * (6 * 20 + 12 * 2 * 4 * 5) + 2 * 6 * 7 * 4 + 2 * 4 * 4 * 4
    assert SPEC.count_samples(batch) == 1 and SPEC.count_tokens(system, batch) == 3


def test_gan_flops_are_measured_without_touching_the_networks(single_thread):
    from aigc_lab.models.gan import GANConfig
    from aigc_lab.systems.gan import GANSystem, gan_train_flops

    adam = partial(torch.optim.Adam, lr=1e-3)
    system = GANSystem(GANConfig(g_width=8, d_width=8), adam, adam, fid_features="none")
    before = {k: v.clone() for k, v in system.state_dict().items()}
    batch = (torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long))
    flops = gan_train_flops(system, batch)
    two_critics = GANSystem(GANConfig(g_width=8, d_width=8), adam, adam, fid_features="none", n_critic=2)
    assert 0 < flops < gan_train_flops(two_critics, batch)
    assert gan_train_flops(system, (torch.zeros(8, 1, 28, 28), torch.zeros(8, dtype=torch.long))) > flops
    for key, value in system.state_dict().items():
        torch.testing.assert_close(value, before[key])  # batch-norm statistics, spectral-norm vectors


def test_gan_flops_are_measured_on_the_first_batch_only(monkeypatch):
    import dataclasses

    from aigc_lab.models.gan import GANConfig
    from aigc_lab.systems.gan import GANSystem

    calls = []
    adam = partial(torch.optim.Adam, lr=1e-3)
    system = GANSystem(GANConfig(g_width=8, d_width=8), adam, adam, fid_features="none")
    spec = dataclasses.replace(system.spec, train_flops=lambda system, batch: calls.append(batch) or 123)
    monkeypatch.setattr(system, "spec", spec)  # the GAN's own spec: FLOPs the same every batch (flops_vary=False)
    _, _, count = tp.counters(system)
    assert [count(("batch", i)) for i in range(3)] == [123, 123, 123] and len(calls) == 1
