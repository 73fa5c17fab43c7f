"""Every bad input a user can give is refused with one clear message (the problem and the fix), exit code 1,
no traceback, and no output that looks like a result (a run dir that exists is marked failed).

``CASES`` is the list, with the message each one must print. Each runs the real entry point
(``python -m aigc_lab``, ``aigc_lab.generate``, ``aigc_lab.eval``) with its command line, through
``cli_fork`` (a fork of a process that imported Lightning once: the same code path, a fraction of the
start-up); ``test_real_subprocess`` runs a few in a plain subprocess too. The cases that only a GPU machine
could reach from the command line are tested in-process at the end.
"""

from __future__ import annotations

import codecs
import struct
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import cli_fork
import pytest
import torch
from conftest import make_mnist, make_pairs
from runs import GAN, SEQ2SEQ, mlm

from aigc_lab.errors import ConfigError
from aigc_lab.models.gan import GANConfig, Generator
from aigc_lab.utils.devices import check_trainer_hardware

ENV = {"OMP_NUM_THREADS": "1"}
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="the message of a machine without a GPU")


@pytest.fixture(scope="session")
def bad(tmp_path_factory, text_corpus, data_dir) -> SimpleNamespace:
    """The bad inputs (files and folders), written once; and good ones they are mixed with."""
    root = tmp_path_factory.mktemp("bad")
    b = SimpleNamespace(root=root, corpus=text_corpus, data_dir=data_dir)
    b.truncated_mnist = make_mnist(root / "truncated", n_train=50, n_test=20)
    images = b.truncated_mnist / "mnist/MNIST/raw/train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:5000])
    b.wrong_magic_mnist = make_mnist(root / "magic", n_train=50, n_test=20)
    labels = b.wrong_magic_mnist / "mnist/MNIST/raw/train-labels-idx1-ubyte"
    labels.write_bytes(struct.pack(">I", 2051) + labels.read_bytes()[4:])  # an images magic in a labels file
    b.empty_txt = root / "empty.txt"
    b.empty_txt.write_text("\n\n")
    sentences = text_corpus["train"].read_text(encoding="utf-8")
    b.latin1_txt = root / "latin1.txt"
    b.latin1_txt.write_bytes(("Le café est prêt.\n" * 40 + sentences).encode("latin-1"))
    b.utf16_txt = root / "utf16.txt"
    b.utf16_txt.write_bytes(codecs.BOM_UTF16_LE + sentences.encode("utf-16-le"))
    b.no_tab_tsv = root / "no_tab.tsv"
    b.no_tab_tsv.write_text("the parser reads the file\nle fichier\nno tab anywhere\n", encoding="utf-8")
    b.good_tsv = make_pairs(root / "good.tsv", 40, seed=2)
    b.a_file = root / "a_file"
    b.a_file.write_text("a regular file where a folder should be\n")

    # Checkpoints: a working tiny GAN generator's, one of another network width, a masked LM's and a
    # seq2seq model's (what generate dispatches on), a truncated one.
    gan = GANConfig(g_width=8, d_width=8)
    generator = {f"generator.{k}": v for k, v in Generator(gan).state_dict().items()}
    b.gan_ckpt = _save(root / "gan.ckpt", {"state_dict": {**generator, "label_prior": torch.full((10,), 0.1)},
                                           "gan_config": asdict(gan)})
    b.gan16_ckpt = _save(root / "gan16.ckpt", {"state_dict": {}, "gan_config": asdict(GANConfig(g_width=16))})
    b.mlm_ckpt = _save(root / "mlm.ckpt", {"state_dict": {}, "mlm_config": {"d_model": 32}, "tokenizer_json": "{}"})
    b.seq2seq_ckpt = _save(root / "seq2seq.ckpt", {"state_dict": {}, "seq2seq_config": {}, "tokenizer_json": "{}"})
    b.truncated_ckpt = root / "truncated.ckpt"
    b.truncated_ckpt.write_bytes(b.gan_ckpt.read_bytes()[:2000])

    # A run dir for `aigc_lab.eval`: what Hydra saves of a tiny GAN run.
    b.run_dir = root / "run"
    (b.run_dir / ".hydra").mkdir(parents=True)
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from aigc_lab.utils.paths import conf_dir

    with initialize_config_dir(version_base="1.3", config_dir=conf_dir(), job_name="test"):
        cfg = compose(config_name="train", overrides=list(GAN))
    OmegaConf.save(cfg, b.run_dir / ".hydra" / "config.yaml")
    return b


def _save(path: Path, blob: dict) -> Path:
    torch.save(blob, path)
    return path


def _mlm(b, *extra: str) -> tuple[str, ...]:
    return (*mlm(b.corpus), *extra)


def _tsv(b, train: Path) -> tuple[str, ...]:
    return ("experiment=seq2seq_en_fr", "debug=fdr", "data.vocab_size=320", f"data.train_file={train}",
            f"data.val_file={b.good_tsv}", "data.test_file=null")


def _header_only_tsv(b) -> Path:
    path = b.root / "header.tsv"
    path.write_text("source\ttarget\n", encoding="utf-8")
    return path


# (id, entry module, its command line and extra environment from the `bad` fixture, the message: every part
# must appear in stderr)
NONE: Callable[[SimpleNamespace], dict] = lambda b: {}  # noqa: E731
CASES = [
    # --- config: composition (Hydra), keys and types (utils/config_check.py)
    ("unknown_experiment", "aigc_lab", lambda b: ("experiment=nope",), NONE,
     ("Could not find 'experiment/nope'", "Available options in 'experiment'", "gan_mnist", "seq2seq_synthetic")),
    ("misspelled_key", "aigc_lab", lambda b: (*GAN, "model.net.latent_dimm=3"), NONE,
     ("Could not override 'model.net.latent_dimm'", "Key 'latent_dimm' is not in struct")),
    ("misspelled_added_key", "aigc_lab", lambda b: (*GAN, "+model.net.widht=3"), NONE,
     ("model.net.widht: unknown key for aigc_lab.models.gan.GANConfig (known keys: latent_dim",)),
    ("wrong_type", "aigc_lab", lambda b: (*GAN, "trainer.max_epochs=abc"), NONE,
     ("trainer.max_epochs: expected int or None, got 'abc' (str)",)),
    ("seed_not_an_integer", "aigc_lab", lambda b: (*GAN, "seed=abc"), NONE,
     ("seed: expected an integer or null (e.g. seed=42), got 'abc' (str)",)),
    ("log_sweep_from_zero", "aigc_lab", lambda b: ("hparams_search=mlm_optuna", "model.lr=tag(log, interval(0, 1e-3))"),
     NONE, ("model.lr=tag(log, interval(0, 1e-3)): a log scale needs a lower bound > 0, got 0.0. Fix: start it "
            "above 0, e.g. model.lr=tag(log, interval(1e-06, 0.001)), or drop the log tag",)),
    ("groups_that_do_not_fit", "aigc_lab", lambda b: _mlm(b, "model=seq2seq"), NONE,
     ("model.net.max_len: Interpolation key 'data.max_len' not found", "do the groups fit together")),
    ("system_with_another_datamodule", "aigc_lab",
     lambda b: (*GAN, "data=text", f"data.train_files={b.corpus['train']}", f"data.val_files={b.corpus['val']}",
                "data.test_files=null"), NONE,
     ("GANSystem trains on data=mnist, but this config gives data=text (TextDataModule): use data=mnist",)),
    # --- values out of range (utils/validate.py, from the constructors)
    ("lr_zero", "aigc_lab", lambda b: (*GAN, "model.lr=0"), NONE, ("model.lr must be positive, got 0",)),
    ("lr_negative", "aigc_lab", lambda b: _mlm(b, "model.lr=-1e-3"), NONE, ("model.lr must be positive, got -0.001",)),
    ("optimizer_lr_negative", "aigc_lab", lambda b: (*GAN, "model.optimizer_d.lr=-1"), NONE,
     ("model.optimizer_d.lr must be positive, got -1",)),
    ("batch_size_zero", "aigc_lab", lambda b: (*GAN, "data.batch_size=0"), NONE,
     ("data.batch_size must be positive, got 0",)),
    ("mask_rate_above_one", "aigc_lab", lambda b: _mlm(b, "data.mask_rate=1.5"), NONE,
     ("data.mask_rate must be in (0, 1), got 1.5",)),
    ("mask_rate_zero", "aigc_lab", lambda b: _mlm(b, "data.mask_rate=0"), NONE,
     ("data.mask_rate must be in (0, 1), got 0",)),
    ("beam_size_zero", "aigc_lab", lambda b: (*SEQ2SEQ, "model.beam_size=0"), NONE,
     ("model.beam_size must be >= 1, got 0",)),
    ("heads_do_not_divide_width", "aigc_lab", lambda b: (*SEQ2SEQ, "model.net.n_heads=3"), NONE,
     ("model.net: d_model (32) must be divisible by n_heads (3)",)),
    ("negative_max_len", "aigc_lab", lambda b: (*SEQ2SEQ, "data.max_len=-1"), NONE,
     ("data.max_len must be >= 2 (a token and [EOS]), got -1",)),
    ("negative_num_workers", "aigc_lab", lambda b: (*GAN, "data.num_workers=-1"), NONE,
     ("data.num_workers must be >= 0, got -1",)),
    ("zero_width_network", "aigc_lab", lambda b: (*GAN, "model.net.g_width=0"), NONE,
     ("model.net: g_width must be positive, got 0 (ValueError in aigc_lab.models.gan.GANConfig)",)),
    ("block_longer_than_model", "aigc_lab", lambda b: _mlm(b, "data.block_size=64", "model.net.max_len=32"), NONE,
     ("data.block_size (64) exceeds model.net.max_len (32)",)),
    # --- data
    ("data_dir_missing", "aigc_lab", lambda b: (*GAN, "data.download=false"),
     lambda b: {"AIGC_DATA_DIR": str(b.root / "nowhere")}, ("MNIST not found in", "AIGC_DATA_DIR")),
    ("mnist_truncated", "aigc_lab", lambda b: GAN, lambda b: {"AIGC_DATA_DIR": str(b.truncated_mnist)},
     ("train-images-idx3-ubyte is truncated or corrupt: 5000 bytes, its header announces 50x28x28 values",
      "delete", "download MNIST again")),
    ("mnist_wrong_magic", "aigc_lab", lambda b: GAN, lambda b: {"AIGC_DATA_DIR": str(b.wrong_magic_mnist)},
     ("train-labels-idx1-ubyte is not an MNIST labels file: magic number 2051, expected 2049",
      "download MNIST again")),
    ("empty_corpus", "aigc_lab", lambda b: _mlm(b, f"data.train_files={b.empty_txt}"), NONE,
     ("empty corpus: no text in", "empty.txt (data.train_files)", "point data.train_files at")),
    ("corpus_not_utf8", "aigc_lab", lambda b: _mlm(b, f"data.train_files={b.latin1_txt}"), NONE,
     ("latin1.txt is not UTF-8 text: byte 0xe9 at offset 6 (line 1) and 79 more cannot be decoded",
      "iconv -f <its encoding, e.g. latin1> -t utf-8")),
    ("corpus_utf16", "aigc_lab", lambda b: _mlm(b, f"data.val_files={b.utf16_txt}"), NONE,
     ("utf16.txt is not UTF-8 text (a NUL byte at offset 3", "iconv -f utf-16 -t utf-8")),
    ("tsv_without_tabs", "aigc_lab", lambda b: _tsv(b, b.no_tab_tsv), NONE,
     ("no usable source<TAB>target pair in", "no_tab.tsv (data.train_file): 3 lines, skipped no tab: 3",
      "Each line needs a source, one tab and a target")),
    ("tsv_header_only", "aigc_lab", lambda b: _tsv(b, _header_only_tsv(b)), NONE,
     ("header.tsv (data.train_file) holds only 1 pair: less than one training batch (data.max_tokens=5120 padded "
      "tokens), so every step would repeat the same batch. Fix: give data.train_file many more pairs",)),
    ("tokenizer_missing", "aigc_lab", lambda b: _mlm(b, f"data.tokenizer_path={b.root / 'nope.json'}"), NONE,
     ("tokenizer not found:", "nope.json (data.tokenizer_path: give a saved tokenizer.json)")),
    # --- checkpoints given to training (resume.py, checkpoints.check_checkpoint_for)
    ("train_checkpoint_missing", "aigc_lab", lambda b: (*GAN, f"ckpt_path={b.root / 'nope.ckpt'}"), NONE,
     ("nope.ckpt: no such file or run dir",)),
    ("train_checkpoint_of_another_system", "aigc_lab", lambda b: (*GAN, f"ckpt_path={b.mlm_ckpt}"), NONE,
     ("mlm.ckpt is a checkpoint of a masked LM (experiment=mlm_*), not of this run's GANSystem",)),
    ("train_checkpoint_of_another_network", "aigc_lab", lambda b: (*GAN, f"ckpt_path={b.gan16_ckpt}"), NONE,
     ("gan16.ckpt has another network than model.net here (model.net.g_width=8, checkpoint 16",)),
    ("train_checkpoint_truncated", "aigc_lab", lambda b: (*GAN, f"ckpt_path={b.truncated_ckpt}"), NONE,
     ("cannot read checkpoint", "truncated.ckpt", "the file may be truncated")),
    # --- the trainer against this machine (utils/devices.py)
    pytest.param("gpu_without_gpu", "aigc_lab", lambda b: (*GAN, "trainer.accelerator=gpu", "trainer.devices=999"),
                 NONE, ("trainer.accelerator=gpu but no CUDA GPU is visible here: use trainer.accelerator=cpu",),
                 marks=NO_GPU),
    ("too_many_cpu_devices", "aigc_lab", lambda b: (*GAN, "trainer.accelerator=cpu", "trainer.devices=999"), NONE,
     ("trainer.devices=999 on a CPU would start 999 processes, but this machine has", "cores: set trainer.devices "
      "to at most"),),
    ("no_devices", "aigc_lab", lambda b: (*GAN, "trainer.accelerator=cpu", "trainer.devices=0"), NONE,
     ("trainer: `Trainer(devices=0)` value is not a valid input using cpu accelerator. (check trainer.accelerator, "
      "devices, strategy and precision)",)),
    pytest.param("fp16_on_cpu", "aigc_lab", lambda b: (*GAN, "trainer.precision=16-mixed"), NONE,
                 ("trainer.precision=16-mixed cannot run on a CPU: use bf16-mixed or 32-true",), marks=NO_GPU),
    ("unknown_precision", "aigc_lab", lambda b: (*GAN, "trainer.precision=bf17"), NONE,
     ("trainer.precision: expected one of", "'bf16-mixed', '32-true'", "got 'bf17'")),
    ("output_dir_not_creatable", "aigc_lab", lambda b: (*GAN, f"paths.log_dir={b.a_file}/outputs"), NONE,
     ("cannot create the output folder", "a_file is a file, not a folder", "set paths.log_dir")),
    # --- python -m aigc_lab.generate
    ("generate_without_checkpoint", "aigc_lab.generate", lambda b: (), NONE,
     ("give the checkpoint: python -m aigc_lab.generate ckpt_path=",)),
    ("generate_checkpoint_missing", "aigc_lab.generate", lambda b: (f"ckpt_path={b.root / 'nope.ckpt'}",), NONE,
     ("checkpoint not found:", "give a .ckpt file or a run dir")),
    ("generate_images_from_a_masked_lm", "aigc_lab.generate", lambda b: (f"ckpt_path={b.mlm_ckpt}", "num_samples=4"),
     NONE, ('this is a masked-LM checkpoint: it needs text="... [MASK] ..."', "images need a GAN checkpoint")),
    ("generate_images_from_a_seq2seq_model", "aigc_lab.generate", lambda b: (f"ckpt_path={b.seq2seq_ckpt}",), NONE,
     ('this is a seq2seq checkpoint: it needs text="..." or input=FILE', "images need a GAN checkpoint")),
    ("generate_text_from_a_gan", "aigc_lab.generate", lambda b: (f"ckpt_path={b.gan_ckpt}", "text=hello"), NONE,
     ("gan.ckpt is a checkpoint of a GAN (experiment=gan_mnist): text= and input= need a masked-LM",)),
    ("generate_checkpoint_truncated", "aigc_lab.generate", lambda b: (f"ckpt_path={b.truncated_ckpt}",), NONE,
     ("cannot read checkpoint", "the file may be truncated")),
    ("generate_out_not_creatable", "aigc_lab.generate",
     lambda b: (f"ckpt_path={b.gan_ckpt}", "num_samples=2", f"out={b.a_file}/digits.pt"), NONE,
     ("cannot write the samples (out=) to", "a_file is a file, not a folder")),
    # --- python -m aigc_lab.eval
    ("eval_not_a_run_dir", "aigc_lab.eval", lambda b: (f"run_dir={b.root}",), NONE,
     ("no saved config in", "a run dir (outputs/<task>/runs/<time>)?")),
    ("eval_checkpoint_missing", "aigc_lab.eval", lambda b: (f"run_dir={b.run_dir}", f"ckpt={b.root / 'nope.ckpt'}"),
     NONE, ("checkpoint not found:",)),
    ("eval_checkpoint_of_another_system", "aigc_lab.eval", lambda b: (f"run_dir={b.run_dir}", f"ckpt={b.mlm_ckpt}"),
     NONE, ("mlm.ckpt is a checkpoint of a masked LM (experiment=mlm_*), not of this run's GANSystem",)),
]


def _cli(run, b, case_module, args, env, tmp_path):
    full_env = {**ENV, "AIGC_DATA_DIR": str(b.data_dir), "AIGC_CACHE_DIR": str(b.root / "cache"),
                "PROJECT_ROOT": str(tmp_path), **env}
    return run(case_module, list(args), full_env, tmp_path)


@pytest.mark.parametrize(("name", "module", "args", "env", "message"), CASES, ids=[
    c.values[0] if hasattr(c, "values") else c[0] for c in CASES])
def test_bad_input(bad, tmp_path, name, module, args, env, message):
    proc = _cli(cli_fork.run, bad, module, args(bad), env(bad), tmp_path)
    stderr = " ".join(proc.stderr.split())  # messages may wrap
    assert proc.returncode == 1, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    for part in message:
        assert part in stderr, f"{part!r} not in:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.startswith("error:")]) <= 1
    # No output that looks like a result: every run dir is marked failed, generate wrote no samples.
    for status in (tmp_path / "outputs").glob("*/*/*/STATUS"):
        assert status.read_text().startswith("failed"), status
    assert not list(tmp_path.glob("samples.*"))


@pytest.mark.parametrize("name", ["unknown_experiment", "output_dir_not_creatable", "generate_checkpoint_missing"])
def test_real_subprocess(bad, tmp_path, run_cli, name):
    """The forked runs above behave as a plain ``python -m`` (the cases that need no Lightning import, which
    costs seconds; test_cli.py runs ``model.lr=-1`` and a missing data dir this way)."""
    (_, module, args, env, message) = next(c for c in CASES if c[0] == name)
    proc = run_cli(*args(bad), module=module, env={**ENV, **env(bad)}, check=False)
    assert proc.returncode == 1 and all(part in " ".join(proc.stderr.split()) for part in message), proc.stderr
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- in-process: what needs a GPU machine to reach
def test_more_devices_than_visible(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"trainer.devices=999 but 1 GPU\(s\) are visible: set trainer.devices to "
                                          r"at most 1 \(or -1 for all of them\)"):
        check_trainer_hardware({"accelerator": "gpu", "devices": 999})
    with pytest.raises(ConfigError, match=r"trainer.devices=\[0, 3\] names GPU 3, but the visible GPUs are 0..0"):
        check_trainer_hardware({"accelerator": "cuda", "devices": [0, 3]})
    check_trainer_hardware({"accelerator": "gpu", "devices": 1})
    check_trainer_hardware({"accelerator": "gpu", "devices": -1})


def test_bf16_on_a_gpu_without_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    for precision in ("bf16-mixed", "bf16"):
        with pytest.raises(ConfigError, match=r"GPU \(Tesla V100\) has no bfloat16 support: use 16-mixed or 32-true"):
            check_trainer_hardware({"accelerator": "auto", "precision": precision})
    check_trainer_hardware({"accelerator": "gpu", "precision": "16-mixed"})


def test_precisions_a_cpu_runs(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    for precision in ("32-true", "32", 32, "bf16-mixed", "bf16", "bf16-true", "64-true"):
        check_trainer_hardware({"accelerator": "cpu", "precision": precision})
    for precision in ("16-mixed", "16", 16, "transformer-engine"):
        with pytest.raises(ConfigError, match="cannot run on a CPU: use bf16-mixed or 32-true"):
            check_trainer_hardware({"accelerator": "cpu", "precision": precision})
