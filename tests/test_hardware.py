"""`auto` settings resolved per machine: every branch, with the probes overridden (never the real CPU or GPU)."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from conftest import run_dirs
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from aigc_lab.errors import ConfigError
from aigc_lab.utils import hardware as hw
from aigc_lab.utils.paths import conf_dir

TINY_GAN = ("experiment=gan_mnist", "debug=fdr", "data.batch_size=16", "data.eval_batch_size=50",
            "model.net.g_width=8", "model.net.d_width=8", "model.fid_features=none",
            "callbacks.model_checkpoint.monitor=null", "optimized_metric=null")


@pytest.fixture
def cpu(monkeypatch):
    """Set the CPU probes: ``cpu(capability, amx=False, avx512_bf16=False)``; the env override is cleared."""
    monkeypatch.delenv(hw.CPU_BF16_ENV, raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)

    def set_probes(capability: str, amx: bool = False, avx512_bf16: bool = False) -> None:
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)

    return set_probes


@pytest.fixture
def gpu(monkeypatch):
    """A visible CUDA GPU: ``gpu(name, (major, minor), native_bf16)``."""

    def set_gpu(name: str, capability: tuple[int, int], native_bf16: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: name)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: capability)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native_bf16
                            or including_emulation)

    return set_gpu


@pytest.mark.parametrize(("capability", "amx", "avx512_bf16", "native"), [
    ("AVX512", True, True, True),  # Xeon with AMX
    ("AVX512", False, True, True),  # AVX512_BF16 without AMX (e.g. AMD Zen 4)
    ("AVX512", False, False, False),  # AVX-512 without bf16 instructions
    ("AVX2", False, False, False),  # AVX2-only EPYC
    ("AVX2", True, True, False),  # bf16 hardware, but torch's kernels capped at AVX2 (ATEN_CPU_CAPABILITY=avx2)
    ("DEFAULT", False, False, False),  # another architecture
])
def test_cpu_native_bf16(cpu, capability, amx, avx512_bf16, native):
    cpu(capability, amx, avx512_bf16)
    kind = hw.cpu_kind()
    assert kind.native_bf16 is native and kind.capability == capability
    assert ("no native bf16" in kind.describe()) is not native
    choice = hw.resolve_precision("cpu")
    assert choice.value == ("bf16-mixed" if native else "32-true")
    assert capability in choice.reason


def test_onednn_isa_cap_means_emulated_bf16(cpu, monkeypatch):
    cpu("AVX512", amx=True, avx512_bf16=True)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not hw.cpu_kind().native_bf16
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert hw.cpu_kind().native_bf16


def test_env_override(cpu, monkeypatch):
    cpu("AVX2")
    monkeypatch.setenv(hw.CPU_BF16_ENV, "native")
    assert hw.cpu_kind().native_bf16 and hw.resolve_precision("cpu").value == "bf16-mixed"
    assert "AIGC_CPU_BF16 override" in hw.cpu_kind().describe()
    cpu("AVX512", amx=True)
    monkeypatch.setenv(hw.CPU_BF16_ENV, "emulated")
    assert hw.resolve_precision("cpu").value == "32-true"
    monkeypatch.setenv(hw.CPU_BF16_ENV, "yes")
    with pytest.raises(ConfigError, match="use native or emulated"):
        hw.cpu_kind()


@pytest.mark.parametrize(("capability", "native", "expected"), [((9, 0), True, "bf16-mixed"),
                                                                  ((8, 0), True, "bf16-mixed"),
                                                                  ((7, 5), False, "16-mixed")])
def test_cuda_precision(gpu, capability, native, expected):
    gpu("NVIDIA Test GPU", capability, native)
    assert hw.device_type("auto") == "cuda" and hw.device_type("gpu") == "cuda"
    choice = hw.resolve_precision("cuda")
    assert choice.value == expected and f"{capability[0]}.{capability[1]}" in choice.reason


def test_mps_and_device_type(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert hw.device_type("auto") == "mps" and hw.resolve_precision("mps").value == "32-true"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert hw.device_type("auto") == "cpu" and hw.device_type("cpu") == "cpu"


def test_channels_last_and_fused_rules():
    assert hw.resolve_channels_last("cpu", "32-true").value is True
    assert hw.resolve_channels_last("cpu", "bf16-mixed").value is True
    assert hw.resolve_channels_last("cuda", "bf16-mixed").value is True
    assert hw.resolve_channels_last("cuda", "32-true").value is False
    assert hw.resolve_fused("bf16-mixed", clipping=True).value is True
    assert hw.resolve_fused("16-mixed", clipping=False).value is True
    assert hw.resolve_fused("16-mixed", clipping=True).value is False


def preset(*overrides: str):
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        return compose("train", overrides=["paths.output_dir=/tmp", *overrides])


@pytest.mark.parametrize("experiment", ["gan_mnist", "mlm_pydocs", "seq2seq_en_fr", "mnist_classifier", "mlm_tiny",
                                        "seq2seq_synthetic"])
def test_every_preset_defaults_to_auto(experiment):
    cfg = preset(f"experiment={experiment}")
    assert cfg.trainer.precision == "auto"
    plain = OmegaConf.to_container(cfg.model, resolve=False)
    if "channels_last" in plain:  # the GAN: layout and Adam kernel are the machine's too
        assert plain["channels_last"] == "auto"
        assert plain["optimizer_g"]["fused"] == plain["optimizer_d"]["fused"] == "auto"


def test_resolve_auto_on_a_preset(cpu, caplog):
    cpu("AVX2")
    cfg = preset("experiment=gan_mnist")
    with caplog.at_level(logging.INFO, logger="aigc_lab"):
        choices = hw.resolve_auto(cfg)
    assert cfg.trainer.precision == "32-true" and cfg.model.channels_last is True
    assert cfg.model.optimizer_g.fused is True and cfg.model.optimizer_d.fused is True
    assert {c.key for c in choices} == {"trainer.precision", "model.channels_last", "model.optimizer_g.fused",
                                        "model.optimizer_d.fused"}
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("auto settings")]
    assert "trainer.precision=32-true" in line and "no native bf16" in line
    assert "model.optimizer_g.fused,model.optimizer_d.fused=true" in line  # one entry for the same choice

    cpu("AVX512", amx=True)
    cfg = preset("experiment=gan_mnist")
    hw.resolve_auto(cfg)
    assert cfg.trainer.precision == "bf16-mixed"


def test_explicit_values_win(cpu, caplog):
    cpu("AVX2")
    cfg = preset("experiment=gan_mnist", "trainer.precision=bf16-mixed", "model.channels_last=false",
                 "model.optimizer_g.fused=false")
    with caplog.at_level(logging.INFO, logger="aigc_lab"):
        choices = hw.resolve_auto(cfg)
    assert cfg.trainer.precision == "bf16-mixed" and cfg.model.channels_last is False
    assert cfg.model.optimizer_g.fused is False and [c.key for c in choices] == ["model.optimizer_d.fused"]
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "bf16-mixed on a CPU without native bf16" in warning.getMessage()
    assert "\n" not in warning.getMessage()  # one line


def test_sixteen_mixed_with_clipping_turns_fused_off(gpu):
    gpu("NVIDIA T4", (7, 5), False)
    cfg = preset("experiment=gan_mnist", "model.clip_grad_norm=1.0", "trainer.accelerator=gpu")
    hw.resolve_auto(cfg)
    assert cfg.trainer.precision == "16-mixed" and cfg.model.optimizer_g.fused is False
    assert cfg.model.channels_last is True


def test_unresolved_auto_is_refused_by_the_gan():
    from aigc_lab.systems.gan import GANSystem

    cfg = preset("experiment=gan_mnist")
    with pytest.raises(Exception, match="channels_last='auto'"):
        GANSystem(**{k: v for k, v in OmegaConf.to_object(cfg.model).items() if k != "_target_"})


def test_cli_on_a_cpu_without_native_bf16(run_cli, tmp_path):
    """A preset on a "no native bf16" CPU trains in 32-true, says why in one line and records it."""
    proc = run_cli(*TINY_GAN, env={hw.CPU_BF16_ENV: "emulated"})
    log = proc.stdout + proc.stderr
    (line,) = [ln for ln in log.splitlines() if "auto settings on cpu" in ln]
    assert "trainer.precision=32-true" in line and "no native bf16" in line and "model.channels_last=true" in line
    (run,) = run_dirs(tmp_path)
    launch = json.loads((run / "provenance.json").read_text())["launches"][0]
    assert launch["auto"]["trainer.precision"]["value"] == "32-true"
    assert launch["device"]["precision"] == "32-true" and launch["device"]["cpu"]["native_bf16"] is False
    assert "precision: 32-true" in (run / "config_tree.log").read_text()
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["hyper_parameters"]["channels_last"] is True
