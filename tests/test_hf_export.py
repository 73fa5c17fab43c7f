"""``python -m aigc_lab.export format=hf``: transformers loads the masked LM and the seq2seq model and computes what
ours do; ``model.init_from=<exported dir>`` starts a new run from those weights; checkpoints of the earlier
masked-LM layout still load."""

from __future__ import annotations

import random
from dataclasses import asdict

import pytest
import torch
from conftest import OBJECTS, SUBJECTS, VERBS, run_dirs
from runs import ENV, mlm

from aigc_lab.data.tokenizer import SEQ2SEQ_SPECIAL_TOKENS, SPECIAL_TOKENS, symbol_tokenizer, train_wordpiece
from aigc_lab.errors import UserError
from aigc_lab.models.mlm import MaskedLM, MLMConfig
from aigc_lab.models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer

pytestmark = pytest.mark.usefixtures("single_thread")
TINY_MLM = ("model.net.d_model=32", "model.net.n_layers=2", "model.net.n_heads=4", "data.vocab_size=200")


def masked_sentences(n: int = 20, seed: int = 0) -> list[str]:
    """Sentences of the corpus fixture's words with one or two words masked."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} .".split()
        for j in rng.sample(range(len(words) - 1), 1 + i % 2):
            words[j] = "[MASK]"
        out.append(" ".join(words))
    return out


def test_transformers_fills_masks_like_generate(run_cli, tmp_path, text_corpus):
    transformers = pytest.importorskip("transformers")
    from aigc_lab.checkpoints import load_checkpoint, resolve_checkpoint
    from aigc_lab.fill_mask import fill_mask, load_mlm

    run_cli(*mlm(text_corpus), *TINY_MLM, env=ENV)
    (run,) = run_dirs(tmp_path)
    out = tmp_path / "hf"
    proc = run_cli(f"ckpt_path={run}", "format=hf", f"out={out}", module="aigc_lab.export", env=ENV)
    assert f"wrote {out} (hf" in proc.stdout

    model, tokenizer = load_mlm(load_checkpoint(resolve_checkpoint(str(run))))
    hf = transformers.AutoModelForMaskedLM.from_pretrained(out).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert type(hf).__name__ == "XLMRobertaXLForMaskedLM"
    dense = hf.lm_head.dense  # fixed in training (head_dense=fixed): still where it started
    assert torch.equal(dense.weight, torch.eye(32)) and torch.equal(dense.bias, torch.full((32,), 3.0))
    fill = transformers.pipeline("fill-mask", model=hf, tokenizer=hf_tokenizer, top_k=5)
    # generate never proposes a special token; the pipeline's ``targets`` keep it to the same candidates
    targets = [t for t in tokenizer.get_vocab() if t not in SPECIAL_TOKENS]

    sentences = masked_sentences()
    for text in sentences:
        ids = tokenizer.encode(text).ids
        assert hf_tokenizer(text)["input_ids"] == ids
        ours = [[token for token, _ in guesses] for guesses in fill_mask(model, tokenizer, text, top_k=5)]
        found = fill(text, targets=targets)
        found = [found] if text.count("[MASK]") == 1 else found
        assert [[g["token_str"].replace(" ", "") for g in guesses] for guesses in found] == ours, text
    batch = hf_tokenizer(sentences, return_tensors="pt", padding=True)
    with torch.no_grad():
        theirs = hf(**batch).logits
        mine = model(batch["input_ids"], batch["attention_mask"])
    real = batch["attention_mask"].bool()
    assert (theirs[real] - mine[real]).abs().max() < 1e-4

    # what `python -m aigc_lab.generate` prints is what fill_mask returned
    proc = run_cli(f"ckpt_path={run}", f"text={sentences[0]}", "top_k=5", module="aigc_lab.generate", env=ENV)
    printed = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("  ")]
    assert printed == [token for token, _ in fill_mask(model, tokenizer, sentences[0], top_k=5)[0]]


def test_init_from_an_export_starts_from_its_weights(run_cli, tmp_path, text_corpus):
    from aigc_lab.models.hf_mlm import load_mlm_folder

    run_cli(*mlm(text_corpus), *TINY_MLM, env=ENV)
    (first,) = run_dirs(tmp_path)
    out = tmp_path / "hf"
    run_cli(f"ckpt_path={first}", "format=hf", f"out={out}", module="aigc_lab.export", env=ENV)
    exported = load_mlm_folder(out)[1]
    exported_keys = set(exported)

    # the folder's network and tokenizer; a tiny learning rate: after two steps the weights are still the folder's
    start = (*mlm(text_corpus), *TINY_MLM, f"model.init_from={out}", f"data.tokenizer_path={out}/tokenizer.json")
    run_cli(*start, "model.lr=1e-7", env=ENV)
    second = next(r for r in run_dirs(tmp_path) if r != first)
    state = {k.removeprefix("model."): v for k, v in torch.load(second / "checkpoints" / "last.ckpt",
                                                                  weights_only=False)["state_dict"].items()}
    assert set(state) == exported_keys
    assert max((state[k] - exported[k]).abs().max().item() for k in exported) < 1e-5

    proc = run_cli(*start, "model.net.n_layers=1", env=ENV, check=False)
    assert proc.returncode == 1 and "is another network than model.net: set model.net.n_layers=2" in proc.stderr


@pytest.mark.parametrize(("layout", "architecture"), [("xlm_roberta_xl", "XLMRobertaXLForMaskedLM"),
                                                       ("bert", "RobertaPreLayerNormForMaskedLM")])
def test_each_mlm_layout_is_its_transformers_architecture(tmp_path, layout, architecture):
    """Every weight moved off its start (a fixed head dense too), so a misplaced one would show in the logits;
    the folder reads back as the same state dict."""
    transformers = pytest.importorskip("transformers")
    from aigc_lab.hf_export import export_mlm
    from aigc_lab.models.hf_mlm import load_mlm_folder

    tokenizer = train_wordpiece([f"{s} {v} {o}" for s in SUBJECTS for v in VERBS for o in OBJECTS], 120)
    torch.manual_seed(0)
    cfg = MLMConfig(vocab_size=tokenizer.get_vocab_size(), n_layers=2, d_model=32, n_heads=4, max_len=16,
                    layout=layout)
    model = MaskedLM(cfg).eval()
    with torch.no_grad():
        for p in model.state_dict().values():
            p.normal_(0.0, 0.3)
    ckpt = {"mlm_config": asdict(cfg), "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "tokenizer_json": tokenizer.to_str()}
    out = export_mlm(None, ckpt, tmp_path / layout)
    hf, info = transformers.AutoModelForMaskedLM.from_pretrained(out, output_loading_info=True)
    assert type(hf).__name__ == architecture and not info["missing_keys"] and not info["unexpected_keys"]
    ids = torch.randint(len(SPECIAL_TOKENS), cfg.vocab_size, (3, 12))
    mask = torch.ones_like(ids)
    ids[1, 8:], mask[1, 8:] = 0, 0  # a padded sequence
    with torch.no_grad():
        theirs, mine = hf.eval()(input_ids=ids, attention_mask=mask).logits, model(ids, mask)
    assert (theirs - mine)[mask.bool()].abs().max() < 1e-4
    net, state, _ = load_mlm_folder(out)
    assert net.layout == layout and state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_seq2seq_export_is_blenderbot(tmp_path):
    transformers = pytest.importorskip("transformers")
    from aigc_lab.hf_seq2seq import export_seq2seq
    from aigc_lab.models.decoding import greedy_decode

    tokenizer = symbol_tokenizer("abcdefghij")
    for tied in (True, False):
        torch.manual_seed(0)
        cfg = Seq2SeqConfig(vocab_size=tokenizer.get_vocab_size(), n_enc_layers=2, n_dec_layers=2, d_model=32,
                            n_heads=4, max_len=16, tie_embeddings=tied)
        model = Seq2SeqTransformer(cfg).eval()
        with torch.no_grad():
            for p in model.parameters():  # larger than the init's: differences would show
                p.normal_(0.0, 0.3)
        ckpt = {"seq2seq_config": asdict(cfg), "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "tokenizer_json": tokenizer.to_str()}
        out = export_seq2seq(None, ckpt, tmp_path / f"tied_{tied}")
        hf, info = transformers.AutoModelForSeq2SeqLM.from_pretrained(out, output_loading_info=True)
        assert type(hf).__name__ == "BlenderbotForConditionalGeneration" and not info["missing_keys"]
        hf.eval()
        src = torch.randint(len(SEQ2SEQ_SPECIAL_TOKENS), cfg.vocab_size, (3, 10))
        src_mask = torch.ones_like(src, dtype=torch.bool)
        src_mask[1, 6:] = False  # a padded sentence
        tgt = torch.randint(len(SEQ2SEQ_SPECIAL_TOKENS), cfg.vocab_size, (3, 7))
        tgt[:, 0] = 2  # [BOS]
        with torch.no_grad():
            theirs = hf(input_ids=src, attention_mask=src_mask.long(), decoder_input_ids=tgt).logits
            assert (theirs - model(src, src_mask, tgt)).abs().max() < 1e-4
            generated = hf.generate(input_ids=src, attention_mask=src_mask.long(), max_new_tokens=8, do_sample=False)
        ours = greedy_decode(model, src, src_mask, bos=2, eos=3, max_len=8)
        for row, ids in zip(generated.tolist(), ours):  # theirs: [BOS] first, pads after [EOS]
            assert row[1:1 + len(ids)] == ids
        assert transformers.AutoTokenizer.from_pretrained(out)("abc")["input_ids"] == tokenizer.encode("abc").ids


def test_checkpoints_of_the_earlier_layout_still_load(tmp_path):
    """Checkpoints saved before the embedding LayerNorm and the head transform load as ``layout="plain"``."""
    from aigc_lab.hf_export import export_mlm
    from aigc_lab.systems.mlm import MLMSystem

    tokenizer = train_wordpiece([f"{s} {v} {o}" for s in SUBJECTS for v in VERBS for o in OBJECTS], 120)
    cfg = MLMConfig(vocab_size=tokenizer.get_vocab_size(), n_layers=1, d_model=16, n_heads=2, max_len=16,
                    layout="plain")
    old = MaskedLM(cfg)
    saved = {k: v for k, v in asdict(cfg).items() if k != "layout"}  # the config as it was then
    ckpt = {"mlm_config": saved, "state_dict": {f"model.{k}": v for k, v in old.state_dict().items()},
            "tokenizer_json": tokenizer.to_str()}
    model, _ = MLMSystem.load_for_inference(ckpt)
    assert model.cfg.layout == "plain"
    ids = torch.tensor([tokenizer.encode("the parser reads the file").ids])
    with torch.no_grad():
        assert torch.equal(model(ids), old.eval()(ids))
    with pytest.raises(UserError, match="earlier masked-LM layout"):
        export_mlm(None, ckpt, tmp_path / "hf")


def test_the_core_imports_no_hugging_face_package_at_module_level():
    """transformers, datasets and safetensors are optional extras: aigc_lab imports them only inside the functions
    that need them (export, init_from, hf: corpora), never when a module loads, so the core works without them.
    (torchmetrics, which Lightning imports, imports transformers by itself when it is installed: BENCHMARKS.md.)"""
    import ast
    from pathlib import Path

    optional = {"transformers", "datasets", "safetensors"}
    found = []
    for path in sorted((Path(__file__).parent.parent / "src").rglob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:  # module level only
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] in optional]
    assert found == []
