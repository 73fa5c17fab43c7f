"""Sizes against the model, the data and this machine (utils/memory.py): a size that cannot fit is refused before
any work, in one line that names the key, the estimate and the limit (exit code 1, no traceback, nothing written);
``generate`` streams its samples and translations in chunks, with progress, and ``eval`` shows its progress.

The refused sizes are far beyond any machine (petabytes), so the tests do not depend on this one's memory."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import cli_fork
import numpy as np
import pytest
import torch
from conftest import make_mnist, run_dirs
from runs import ENV, GAN, SEQ2SEQ, mlm, status

from aigc_lab.data.tokenizer import symbol_tokenizer
from aigc_lab.models.gan import Discriminator, GANConfig, Generator
from aigc_lab.models.mlm import MaskedLM, MLMConfig
from aigc_lab.models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer
from aigc_lab.utils.memory import (
    Limit,
    Need,
    Part,
    TransformerShape,
    check_memory,
    format_bytes,
    largest_fit,
    layer_output_elements,
    memory_limit,
    mlm_params,
    seq2seq_params,
)

PETABYTE = 10**15


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def lab(tmp_path_factory, text_corpus, cache_dir) -> SimpleNamespace:
    """A data dir with MNIST, a corpus of about 1.4 MB, a tiny GAN checkpoint and a tiny seq2seq checkpoint."""
    root = tmp_path_factory.mktemp("bounds")
    data = make_mnist(root / "data", n_train=300, n_test=100)
    big = root / "big.txt"
    big.write_text(text_corpus["train"].read_text(encoding="utf-8") * 60, encoding="utf-8")
    gan = GANConfig(g_width=8, d_width=8)
    torch.manual_seed(0)
    generator = {f"generator.{k}": v for k, v in Generator(gan).state_dict().items()}
    gan_ckpt = root / "gan.ckpt"
    torch.save({"state_dict": {**generator, "label_prior": torch.full((10,), 0.1)}, "gan_config": asdict(gan)},
               gan_ckpt)
    tokenizer = symbol_tokenizer(list("0123456789ab"))
    net = Seq2SeqConfig(vocab_size=tokenizer.get_vocab_size(), n_enc_layers=1, n_dec_layers=1, d_model=16,
                        n_heads=2, max_len=24)
    model = {f"model.{k}": v for k, v in Seq2SeqTransformer(net).state_dict().items()}
    seq2seq_ckpt = root / "seq2seq.ckpt"
    torch.save({"state_dict": model, "seq2seq_config": asdict(net), "tokenizer_json": tokenizer.to_str()},
               seq2seq_ckpt)
    env = {**os.environ, **ENV, "AIGC_DATA_DIR": str(data), "AIGC_CACHE_DIR": str(cache_dir)}
    return SimpleNamespace(root=root, data=data, corpus=text_corpus, big=big, gan_ckpt=gan_ckpt,
                           seq2seq_ckpt=seq2seq_ckpt, env=env)


def cli(lab, tmp_path: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    return cli_fork.run(module, list(args), {**lab.env, "PROJECT_ROOT": str(tmp_path)}, tmp_path)


def refused(proc: subprocess.CompletedProcess, *parts: str) -> str:
    """The one ``error:`` line of a refused command, checked for exit code 1, no traceback and ``parts``."""
    assert proc.returncode == 1, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for part in parts:
        assert part in errors[0], f"{part!r} not in {errors[0]!r}"
    return errors[0]


def big_mlm(lab, *extra: str) -> tuple[str, ...]:
    return (*mlm(lab.corpus), f"data.train_files={lab.big}", f"data.val_files={lab.big}", "data.test_files=null",
            *extra)


# ---------------------------------------------------------------- training: refused before any data work
TRAINING_REFUSALS = [
    # (id, command line, parts of the one error line)
    ("block_size_beyond_memory", lambda lab: big_mlm(lab, "data.block_size=1000000"),
     ("error: data.block_size=1000000 needs about", "of memory for one training batch (attention scores: 2 x batch 8 "
      "x 2 heads x 1000000^2 x 2 layers x 4 bytes), this machine has", "available: use data.block_size <= ")),
    ("eval_batch_beyond_memory", lambda lab: big_mlm(lab, "data.eval_batch_size=1000000000"),
     ("error: data.eval_batch_size=1000000000 needs about", "of memory for one validation batch",
      "available: use data.eval_batch_size <= ")),
    ("vocab_beyond_memory", lambda lab: big_mlm(lab, "data.vocab_size=2000000000"),
     ("error: data.vocab_size=2000000000 needs about", "of memory for one training batch", "data.vocab_size <= ")),
    ("vocab_beyond_int32", lambda lab: big_mlm(lab, "data.vocab_size=3000000000"),
     ("data.vocab_size must be <= 2147483647 (token ids are cached as int32), got 3000000000",)),
    ("block_beyond_the_corpus", lambda lab: (*mlm(lab.corpus), "data.block_size=100000"),
     ("data.block_size=100000 needs 99998 tokens per block", "train.txt (data.train_files) holds",
      "bytes, at most", "use data.block_size <=")),
    ("gan_batch_beyond_memory", lambda lab: (*GAN, "data.batch_size=1000000000"),
     ("error: data.batch_size=1000000000 needs about", "TB of memory for one training batch (activations: batch "
      "1,000,000,000 x", "values per image (G, 3 x D, images) x 4 bytes), this machine has",
      "use data.batch_size <= ")),
    ("gan_eval_batch_beyond_memory", lambda lab: (*GAN, "data.eval_batch_size=1000000000"),
     ("error: data.eval_batch_size=1000000000 needs about", "for one validation batch")),
    ("gan_batch_beyond_the_split", lambda lab: (*GAN, "data.batch_size=1000"),
     ("data.batch_size=1000 is larger than the training split (240 images: 300 minus data.val_size=60), so an "
      "epoch would have no batch: use data.batch_size <= 240",)),
    ("max_len_beyond_memory", lambda lab: (*SEQ2SEQ, "data.max_len=1000000", "data.max_tokens=2000000",
                                           "data.eval_max_tokens=2000000", "model.max_decode_len=16"),
     ("error: data.max_len=1000000 needs about", "of memory for one training batch (attention scores",
      "use data.max_len <= ")),
    ("max_tokens_beyond_memory", lambda lab: (*SEQ2SEQ, "data.max_tokens=100000000000000"),
     ("error: data.max_tokens=100000000000000 needs about", "for one training batch", "data.max_tokens <= ")),
    ("beam_beyond_memory", lambda lab: (*SEQ2SEQ, "model.beam_size=16", "data.eval_max_tokens=1000000000000"),
     ("error: data.eval_max_tokens=1000000000000 needs about", "for one validation batch (beam-search")),
    ("beam_beyond_the_vocabulary", lambda lab: (*SEQ2SEQ, "model.beam_size=17"),
     ("model.beam_size must be <= the vocabulary (16 tokens, 4 special tokens and data.synthetic_symbols=12), "
      "got 17",)),
    ("bpe_vocab_below_its_bytes", lambda lab: ("experiment=seq2seq_en_fr", "debug=fdr", "data.vocab_size=100",
                                               f"data.train_file={lab.big}", f"data.val_file={lab.big}"),
     ("data.vocab_size must be >= 260 for a byte-level BPE (4 special tokens and 256 byte symbols), got 100",)),
]


@pytest.mark.parametrize(("name", "args", "message"), TRAINING_REFUSALS, ids=[c[0] for c in TRAINING_REFUSALS])
def test_refused_training_size(lab, tmp_path, name, args, message):
    refused(cli(lab, tmp_path, "aigc_lab", *args(lab)), *message)
    for marker in (tmp_path / "outputs").glob("*/*/*/STATUS"):
        assert marker.read_text().startswith("failed")
    assert not list((tmp_path / "outputs").glob("*/*/*/checkpoints"))


def test_refused_size_writes_nothing_into_the_run_it_resumes(lab, tmp_path):
    project = tmp_path / "train"
    project.mkdir()
    proc = cli_fork.run("aigc_lab", list(GAN), {**lab.env, "PROJECT_ROOT": str(project)}, project, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(project)
    before = _fingerprint(run)
    proc = cli(lab, tmp_path, "aigc_lab", f"ckpt_path={run}", "data.batch_size=1000000000")
    refused(proc, "data.batch_size=1000000000 needs about", "TB of memory for one training batch")
    assert f"(refused before anything was written: {run.resolve()} is unchanged)" in proc.stderr
    assert _fingerprint(run) == before and status(run) == "done"
    assert not (tmp_path / "outputs").exists()

    # eval checks one test batch of the run against this machine, and writes no report when refused
    refused(cli(lab, tmp_path, "aigc_lab.eval", f"run_dir={run}", "data.eval_batch_size=1000000000"),
            "data.eval_batch_size=1000000000 needs about", "of memory for one test batch")
    assert _fingerprint(run) == before
    # a test in batches shows its progress on stderr, one line per progress_every_n_batches batches
    proc = cli(lab, tmp_path, "aigc_lab.eval", f"run_dir={run}", "trainer.limit_test_batches=1.0",
               "progress_every_n_batches=1", f"out={tmp_path / 'eval.json'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    progress = [line for line in proc.stderr.splitlines() if line.startswith("test ")]
    assert [line.split(" |")[0] for line in progress] == ["test 1/2 batches (50%)", "test 2/2 batches (100%)"]


def _fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
            for p in sorted(folder.rglob("*"))}


# ---------------------------------------------------------------- generate: GAN samples
def test_streamed_samples_equal_the_in_memory_ones(lab, tmp_path):
    args = (f"ckpt_path={lab.gan_ckpt}", "num_samples=250", "batch_size=64", "seed=3", "grid_max=30")
    for out in ("mem.pt", "disk.npy"):
        proc = cli(lab, tmp_path, "aigc_lab.generate", *args, f"out={tmp_path / out}")
        assert proc.returncode == 0 and "wrote (250, 1, 28, 28) uint8 samples" in proc.stdout, proc.stderr[-3000:]
    in_memory = torch.load(tmp_path / "mem.pt")
    streamed = np.load(tmp_path / "disk.npy", mmap_mode="r")
    assert streamed.shape == (250, 1, 28, 28) and streamed.dtype == np.uint8
    assert np.array_equal(np.asarray(streamed), in_memory.numpy())
    assert (tmp_path / "mem.png").read_bytes() == (tmp_path / "disk.png").read_bytes()  # the same grid
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".cli_")) == [
        "disk.npy", "disk.png", "mem.png", "mem.pt"]  # no temporary file left


# Streams n samples from a checkpoint to a .npy file, reading the resident memory after each chunk; prints its
# growth after the second chunk (the allocator warmed up).
RSS_PROBE = """
import os, sys, torch
from pathlib import Path
from aigc_lab.checkpoints import load_checkpoint
from aigc_lab.sample import load_generator, sample_chunks, stream_npy
torch.set_num_threads(1)
generator, prior = load_generator(load_checkpoint(sys.argv[1]))
n, out = int(sys.argv[3]), Path(sys.argv[2])
rss = []
def watched(chunks):
    for chunk in chunks:
        yield chunk
        with open("/proc/self/statm") as f:
            rss.append(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
stream_npy(watched(sample_chunks(generator, prior, n, batch_size=500)), out, (n, 1, 28, 28))
print(max(rss) - rss[1])
"""


def test_streamed_samples_keep_memory_flat(lab, tmp_path):
    """The resident memory while streaming 5k and 50k samples stays at one chunk: it does not grow with the count
    (holding the images would add 3.9 and 39 MB). glibc's malloc is told to return freed memory at once, so that
    resident memory shows what is alive."""
    env = {**lab.env, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}

    def growth(n: int) -> int:
        out = tmp_path / f"{n}.npy"
        proc = subprocess.run([sys.executable, "-c", RSS_PROBE, str(lab.gan_ckpt), str(out), str(n)], env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert np.load(out, mmap_mode="r").shape == (n, 1, 28, 28)
        return int(proc.stdout.split()[-1])

    small, large = growth(5_000), growth(50_000)
    images = 50_000 * 28 * 28  # what holding the larger set would add
    assert large < images / 4 and large - small < images / 10, (small, large)


def test_huge_sample_counts_are_refused_before_sampling(lab, tmp_path):
    out = tmp_path / "x.npy"
    started = time.perf_counter()
    refused(cli(lab, tmp_path, "aigc_lab.generate", f"ckpt_path={lab.gan_ckpt}", "num_samples=10000000000000",
                f"out={out}"),
            "error: num_samples=10000000000000 needs about 7.8 PB of disk space for out=x.npy (the images: "
            "10,000,000,000,000 x 1x28x28 uint8 images),", "free: use num_samples <= ",
            "or an out= on a disk with more space")
    assert time.perf_counter() - started < 60
    refused(cli(lab, tmp_path, "aigc_lab.generate", f"ckpt_path={lab.gan_ckpt}", "num_samples=1000000000000",
                f"out={tmp_path / 'y.pt'}"),
            "error: num_samples=1000000000000 needs about 784 TB of memory for out=y.pt (the images: "
            "1,000,000,000,000 x 1x28x28 uint8 images held for torch.save), this machine has",
            "available: use num_samples <= ", "or out=<name>.npy (written to disk chunk by chunk)")
    refused(cli(lab, tmp_path, "aigc_lab.generate", f"ckpt_path={lab.gan_ckpt}", "num_samples=10",
                "batch_size=100000000000000"),
            "error: batch_size=100000000000000 needs about", "PB of memory for out=samples.pt (the generator's "
            "layers: batch_size 100,000,000,000,000 x", "use batch_size <= ")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cli_stderr", ".cli_stdout"]  # nothing sampled


def test_sampling_shows_progress_in_a_batch_job(lab, tmp_path):
    proc = cli(lab, tmp_path, "aigc_lab.generate", f"ckpt_path={lab.gan_ckpt}", "num_samples=300",
               "batch_size=100", "progress_every=0", f"out={tmp_path / 's.npy'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line.split(" |")[0] for line in proc.stderr.splitlines() if line.startswith("sampling:")]
    assert lines == ["sampling: 100/300 samples (33%)", "sampling: 200/300 samples (67%)",
                     "sampling: 300/300 samples (100%)"]


# ---------------------------------------------------------------- generate: translations
def test_a_file_is_translated_in_streamed_windows_with_progress(lab, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("".join("3 a 7\n" if i % 5 else "\n" for i in range(40)), encoding="utf-8")
    out = tmp_path / "out" / "t.txt"
    proc = cli(lab, tmp_path, "aigc_lab.generate", f"ckpt_path={lab.seq2seq_ckpt}", f"input={source}", f"out={out}",
               "translate_batch_size=2", "beam_size=2", "progress_every=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"translated 40 line(s) from {source} to {out}" in proc.stdout
    lines = out.read_text(encoding="utf-8").split("\n")
    assert len(lines) == 41 and all(lines[i] == "" for i in range(0, 40, 5))  # empty lines stay empty, in place
    progress = [line.split(" |")[0] for line in proc.stderr.splitlines() if line.startswith("translating:")]
    assert progress == ["translating: 32/40 lines (80%)", "translating: 40/40 lines (100%)"]  # windows of 16 x 2


TRANSLATE_REFUSALS = [
    ("beam_beyond_the_vocabulary", ("beam_size=17",),
     "beam_size must be <= this model's vocabulary (16 tokens), got 17"),
    ("max_len_beyond_the_model", ("max_len=25",),
     "max_len must be in [1, 24] (this model's longest target) or null, got 25"),
    ("batch_beyond_memory", ("translate_batch_size=1000000000000",),
     "translate_batch_size=1000000000000 needs about"),
]


@pytest.mark.parametrize(("name", "args", "message"), TRANSLATE_REFUSALS, ids=[c[0] for c in TRANSLATE_REFUSALS])
def test_refused_translation_size(lab, tmp_path, name, args, message):
    refused(cli(lab, tmp_path, "aigc_lab.generate", f"ckpt_path={lab.seq2seq_ckpt}", "text=3 a 7", *args), message)


# ---------------------------------------------------------------- the estimates themselves
def test_parameter_formulas_count_the_real_models():
    for layout in ("xlm_roberta_xl", "bert", "plain"):
        mlm_cfg = MLMConfig(vocab_size=97, n_layers=3, d_model=24, n_heads=4, mlp_ratio=3.0, max_len=40, layout=layout)
        real = sum(p.numel() for p in MaskedLM(mlm_cfg).parameters())
        assert mlm_params(TransformerShape.of(mlm_cfg), 97, 40, mlm_cfg.embedding_norm, mlm_cfg.head_transform) == real
    for tied in (True, False):
        cfg = Seq2SeqConfig(vocab_size=53, n_enc_layers=2, n_dec_layers=3, d_model=16, n_heads=2, max_len=30,
                            tie_embeddings=tied)
        real = sum(p.numel() for p in Seq2SeqTransformer(cfg).parameters())
        assert seq2seq_params(TransformerShape.of(cfg), 53, 30, tied) == real


def test_layer_outputs_are_counted_on_the_meta_device():
    cfg = GANConfig(g_width=8, d_width=8, num_classes=0)
    with torch.device("meta"):
        d = Discriminator(cfg)
        image = torch.empty(1, 1, 28, 28)
    # conv (8 x 14 x 14) + LeakyReLU, conv (16 x 7 x 7) + LeakyReLU, conv (32 x 7 x 7) + LeakyReLU, head 1: the
    # spectral-normed convolutions are layers, their parametrizations (weights) are not counted
    assert layer_output_elements(d, image, None) == 2 * (8 * 196 + 16 * 49 + 32 * 49) + 1


def test_the_named_key_is_the_one_furthest_out_of_proportion():
    def parts(sizes):
        return [Part("scores", 4.0 * sizes["batch"] * sizes["length"] ** 2, "batch x length^2 x 4 bytes")]

    need = Need("one batch", {"length": 10_000, "batch": 4}, parts)
    assert largest_fit(need, "length", 4e6) == 500 and largest_fit(need, "batch", 4e6) is None
    with pytest.raises(Exception, match=r"^length=10000 needs about 1.6 GB of memory for one batch \(scores: batch "
                                        r"x length\^2 x 4 bytes\), this machine has 4.0 MB: use length <= 500$"):
        check_memory([need], Limit(4e6, "memory", "this machine has 4.0 MB"))
    check_memory([need], Limit(2e9, "memory", "plenty"))  # fits: nothing raised


def test_cpu_processes_share_the_memory(monkeypatch):
    monkeypatch.setattr("aigc_lab.utils.memory.host_memory_available", lambda: 8 * 10**9)
    assert memory_limit({"accelerator": "cpu", "devices": 1}).bytes == 8e9
    limit = memory_limit({"accelerator": "cpu", "devices": 2})
    assert limit.bytes == 4e9 and limit.text == "this machine has 8.0 GB available for 2 processes (trainer.devices=2)"


@pytest.mark.parametrize(("n", "text"), [(999, "999 bytes"), (4.1e10, "41 GB"), (5.1e12, "5.1 TB"),
                                         (7.84e15, "7.8 PB")])
def test_format_bytes(n, text):
    assert format_bytes(n) == text


def test_presets_fit_a_small_machine():
    """The shipped experiments are far from the limits: each needs under 4 GB per batch, by the same estimates."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from lightning.fabric.utilities.data import AttributeDict

    from aigc_lab.utils.hardware import resolve_auto
    from aigc_lab.utils.paths import conf_dir

    for experiment in ("mlm_pydocs", "mlm_tiny", "seq2seq_en_fr", "seq2seq_synthetic", "gan_mnist", "mnist_classifier"):
        with initialize_config_dir(version_base="1.3", config_dir=conf_dir(), job_name="test"):
            cfg = compose(config_name="train", overrides=[f"experiment={experiment}"])
        resolve_auto(cfg)
        system = instantiate(cfg.model)
        datamodule = SimpleNamespace(hparams=AttributeDict(dict(cfg.data)))  # its settings; no files read
        for stage in ("fit", "test"):
            needs = system.memory_needs(datamodule, stage)
            assert needs and all(need.total() < 4 * 10**9 for need in needs), (experiment, stage)
