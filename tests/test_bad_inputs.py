"""Catalogue of bad inputs: each gives ONE clear SaeBilingualError, early, touching nothing.

Every case asserts (a) the error type (a ``SaeBilingualError`` subclass, so the CLI prints
one line instead of a traceback), (b) that the message names the problem AND the fix,
(c) where it matters, that no LM forward / SAE training ran before the error and that an
earlier study's files are byte-for-byte unchanged.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from sae_bilingual.config import Recipe, from_dict, load_recipe
from sae_bilingual.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    ExtraMissingError,
    OutputError,
    SAEFileError,
    SaeBilingualError,
)

REPO = Path(__file__).resolve().parents[1]
SMOKE = yaml.safe_load((REPO / "recipes" / "smoke.yaml").read_text())



# ----------------------------------------------------------------------------- helpers


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative paths)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def names_problem_and_fix(err: BaseException, *problem: str, fix: tuple[str, ...] = ()) -> None:
    msg = str(err)
    for word in problem:
        assert word.lower() in msg.lower(), f"{word!r} not in message: {msg}"
    if fix:
        assert any(f.lower() in msg.lower() for f in fix), f"none of {fix} in message: {msg}"


def recipe(out: Path, **changes) -> Recipe:
    d = copy.deepcopy(SMOKE)
    d["output_dir"] = str(out)
    for dotted, value in changes.items():
        cur = d
        keys = dotted.split(".")
        for k in keys[:-1]:
            cur = cur[int(k)] if isinstance(cur, list) else cur.setdefault(k, {})
        cur[keys[-1]] = value
    return from_dict(Recipe, d).validate()


@pytest.fixture(scope="module")
def world():
    """The tiny toy world (built once into $SAE_BILINGUAL_CACHE, ~10 s on a quiet machine)."""
    from sae_bilingual.world import WorldConfig, build_world

    return build_world(WorldConfig.tiny(), progress=False)


class ExpensiveWork(AssertionError):
    pass


@pytest.fixture
def no_lm_no_sae(monkeypatch):
    """Any LM activation pass or SAE training fails the test."""
    from sae_bilingual.data import store
    from sae_bilingual.sae import train

    def boom(*a, **k):
        raise ExpensiveWork("expensive work started before the bad input was reported")

    monkeypatch.setattr(store, "collect_activations", boom)
    monkeypatch.setattr(train, "train_saes", boom)
    return boom


@pytest.fixture
def earlier(tmp_path):
    """An output dir holding an earlier study's files; returns (dir, snapshot)."""
    out = tmp_path / "study"
    layer = out / "units" / "toy" / "iter_0000120" / "L01"
    layer.mkdir(parents=True)
    (layer / "summary.json").write_text('{"layer": 1, "mean_R": 0.5}')
    (out / "tables").mkdir()
    (out / "tables" / "summary.csv").write_text("model,layer\ntoy,1\n")
    return out, snapshot(out)


def run_fails(rec: Recipe, exc: type[BaseException]) -> BaseException:
    from sae_bilingual.study.run import run_study

    with pytest.raises(exc) as info:
        run_study(rec, progress=False)
    assert not isinstance(info.value, ExpensiveWork)
    return info.value


def tiny_lm(d_model: int = 16, n_layers: int = 2, d_vocab: int = 50, seed: int = 0):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(n_layers=n_layers, d_model=d_model, n_ctx=16, d_head=4, n_heads=d_model // 4,
                                  d_vocab=d_vocab, act_fn="relu", normalization_type="LN", seed=seed)
    return HookedTransformer(cfg)


def windows(tokens: list[list[int]], doc_ids=None, langs=None):
    from sae_bilingual.data.corpus import Windows

    T = max(map(len, tokens))
    t = torch.zeros(len(tokens), T, dtype=torch.long)
    for i, row in enumerate(tokens):
        t[i, : len(row)] = torch.tensor(row)
    n = len(tokens)
    return Windows(t, torch.tensor([len(r) for r in tokens]), torch.tensor(langs or [i % 2 for i in range(n)]),
                   torch.tensor(doc_ids or list(range(n))), ("en", "ja"))


def tiny_sae(d_in: int = 16, hook: str = "blocks.0.hook_resid_post", k: int = 4, d_sae: int = 64):
    from sae_bilingual.sae.model import make_metadata, new_paper_sae

    torch.manual_seed(0)
    return new_paper_sae(d_in, k=k, d_sae=d_sae, metadata=make_metadata(hook_name=hook))


@pytest.fixture
def sae_dir(tmp_path):
    from sae_bilingual.sae.files import save_sae

    return save_sae(tiny_sae(), tmp_path / "sae")


def docs(langs: list[str], ids: list[list[int]]):
    from datasets import Dataset

    return Dataset.from_dict({"lang": langs, "input_ids": ids, "doc_id": list(range(len(langs)))})


# ============================================================================ 1. recipe


def test_unknown_recipe_field_names_the_valid_ones():
    with pytest.raises(ConfigError) as e:
        from_dict(Recipe, {"sae": {"kk": 8}})
    names_problem_and_fix(e.value, "sae.kk", "unknown field", fix=("valid fields", "k, expansion"))


def test_wrong_type_names_field_and_expected_type():
    with pytest.raises(ConfigError) as e:
        from_dict(Recipe, {"sae": {"k": "eight"}})
    names_problem_and_fix(e.value, "sae.k", "'eight'", fix=("expected an integer",))


def test_wrong_literal_lists_choices():
    with pytest.raises(ConfigError) as e:
        from_dict(Recipe, {"executor": "kubernetes"})
    names_problem_and_fix(e.value, "executor", "kubernetes", fix=("'local'",))


def test_recipe_yaml_with_python_tag_is_refused_by_safe_load(tmp_path):
    """Security: YAML is read with safe_load, so a !!python tag cannot run code."""
    p = tmp_path / "evil.yaml"
    marker = tmp_path / "pwned"
    p.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(p)
    names_problem_and_fix(e.value, str(p), "not valid YAML")
    assert not marker.exists()


def test_n_not_positive():
    with pytest.raises(ConfigError) as e:
        recipe(Path("/tmp/x"), **{"sae.expansion": 0})
    names_problem_and_fix(e.value, "sae.expansion", "must be positive", fix=("got 0",))
    with pytest.raises(ConfigError) as e:
        recipe(Path("/tmp/x"), **{"sae.d_sae": -4})
    names_problem_and_fix(e.value, "sae.d_sae", "positive")


def test_k_not_below_n_with_explicit_d_sae():
    with pytest.raises(ConfigError) as e:
        recipe(Path("/tmp/x"), **{"sae.k": 64, "sae.d_sae": 64})
    names_problem_and_fix(e.value, "sae.k = 64", "sae.d_sae = 64", fix=("lower sae.k",))


def test_k_not_below_n_from_expansion_check():
    """n = expansion x d_model is only known from the model: the preflight check."""
    from sae_bilingual.study.preflight import check_k_below_n

    rec = recipe(Path("/tmp/x"), **{"sae.k": 256, "sae.expansion": 4})
    with pytest.raises(ConfigError) as e:
        check_k_below_n(rec, 64, "toy")
    names_problem_and_fix(e.value, "sae.k = 256", "n = 256", fix=("lower sae.k",))
    check_k_below_n(recipe(Path("/tmp/x"), **{"sae.k": 255, "sae.expansion": 4}), 64, "toy")


def test_k_not_below_n_fails_in_plan(world, tmp_path, no_lm_no_sae, earlier):
    out, before = earlier
    err = run_fails(recipe(out, **{"sae.k": 256, "sae.expansion": 4}), ConfigError)
    names_problem_and_fix(err, "sae.k = 256", fix=("lower sae.k",))
    assert snapshot(out) == before


def test_one_language_in_recipe():
    with pytest.raises(ConfigError) as e:
        recipe(Path("/tmp/x"), **{"data.languages": ["en", "en"]})
    names_problem_and_fix(e.value, "data.languages", "two", fix=("[en, ja]",))


# ============================================================================ 2. plan (models)


def test_layer_out_of_range_fails_in_plan(world, no_lm_no_sae, earlier):
    out, before = earlier
    rec = recipe(out)
    rec.models[0].layers = [1, 7]
    err = run_fails(rec, ConfigError)  # LayerError is a ConfigError
    names_problem_and_fix(err, "layer 7", "out of range", fix=("0..2",))
    assert snapshot(out) == before


def test_checkpoint_not_in_catalogue(world, no_lm_no_sae, earlier):
    out, before = earlier
    rec = recipe(out)
    rec.models[0].checkpoints = [12345]
    err = run_fails(rec, CheckpointError)
    names_problem_and_fix(err, "12345", fix=("available iterations",))
    assert "120" in str(err)  # the valid choices are listed
    assert snapshot(out) == before


def test_model_source_missing(tmp_path, no_lm_no_sae, earlier):
    out, before = earlier
    rec = recipe(out)
    rec.models[0].source = str(tmp_path / "no_such_root")
    err = run_fails(rec, CheckpointError)
    names_problem_and_fix(err, "no_such_root", "does not exist", fix=("pass an existing root",))
    assert snapshot(out) == before


def test_unknown_model_family(no_lm_no_sae, earlier):
    out, before = earlier
    rec = recipe(out)
    rec.models[0].family = "gpt-17"
    err = run_fails(rec, CheckpointError)
    names_problem_and_fix(err, "gpt-17", fix=("registered:", "register_family"))
    assert snapshot(out) == before


def test_intervention_layer_not_analysed(world, no_lm_no_sae, earlier):
    out, before = earlier
    rec = recipe(out)
    rec.models[0].layers = [1]
    rec.intervention.layer = 2
    err = run_fails(rec, ConfigError)
    names_problem_and_fix(err, "intervention.layer 2", fix=("add it to models[0].layers",))
    assert snapshot(out) == before


def test_different_recipe_in_same_output_dir_is_refused(world, tmp_path, no_lm_no_sae):
    from sae_bilingual.study.outdir import prepare_output_dir

    out = tmp_path / "s"
    prepare_output_dir(recipe(out))
    (out / "manifest.json").write_text(json.dumps({"recipe_hash": "other", "units": {"toy/iter_0000001": {}}}))
    before = snapshot(out)
    with pytest.raises(ConfigError) as e:
        prepare_output_dir(recipe(out, **{"sae.k": 4}))
    names_problem_and_fix(e.value, "different recipe", fix=("another output_dir", "--force"))
    assert snapshot(out) == before


# ============================================================================ 3. corpus


def test_corpus_with_one_language_only():
    from sae_bilingual.data.corpus import make_windows

    with pytest.raises(DataError) as e:
        make_windows(docs(["en", "en"], [[1, 5, 6], [1, 7]]), None, context=8)
    names_problem_and_fix(e.value, "only one", "['en']", fix=("add documents",))


def test_empty_corpus():
    from sae_bilingual.data.corpus import make_windows

    with pytest.raises(DataError) as e:
        make_windows(docs([], []), None, context=8)
    names_problem_and_fix(e.value, "empty", fix=("give a dataset",))


def test_all_documents_shorter_than_two_tokens():
    from sae_bilingual.data.corpus import make_windows

    with pytest.raises(DataError) as e:
        make_windows(docs(["en", "ja", "en"], [[1], [1], []]), None, context=8)
    names_problem_and_fix(e.value, "fewer than 2 tokens", fix=("check the text column",))


def test_token_budget_larger_than_corpus():
    from sae_bilingual.data.corpus import make_windows

    with pytest.raises(DataError) as e:
        make_windows(docs(["en", "ja"], [[1, 5, 6], [1, 7, 8]]), None, context=8, tokens_per_lang=100)
    names_problem_and_fix(e.value, "budget 100", "larger than the corpus", fix=("lower tokens_per_lang",))


def test_token_budget_larger_than_corpus_before_any_lm_pass(world, no_lm_no_sae, tmp_path):
    """Today the eval windows are built before the first activation pass (run_lr_grid)."""
    err = run_fails(recipe(tmp_path / "s", **{"data.eval_tokens_per_lang": 10**9}), DataError)
    names_problem_and_fix(err, "larger than the corpus", fix=("lower tokens_per_lang",))


def test_train_budget_too_large_fails_in_plan(world, no_lm_no_sae, earlier):
    out, before = earlier
    err = run_fails(recipe(out, **{"data.train_tokens_per_lang": 10**9}), DataError)
    names_problem_and_fix(err, "larger than the corpus")
    assert snapshot(out) == before  # failed before prepare_output_dir


def test_preflight_catches_budget(world, tmp_path):
    from sae_bilingual.study.preflight import preflight
    from sae_bilingual.study.context import StudyContext
    from sae_bilingual.study.plan import plan_study

    ok = recipe(tmp_path / "s")
    ctx = StudyContext(ok, progress=False)
    plan = plan_study(ok, ctx)
    preflight(ok, plan, ctx)  # the smoke recipe passes
    rec = recipe(tmp_path / "s", **{"data.train_tokens_per_lang": 10**9})
    with pytest.raises(DataError):
        preflight(rec, plan, StudyContext(rec, progress=False))


# ============================================================================ 4. SAE files


def test_sae_dir_missing_file(tmp_path):
    from sae_bilingual.sae.files import load_sae

    (tmp_path / "empty").mkdir()
    with pytest.raises(SAEFileError) as e:
        load_sae(tmp_path / "empty")
    names_problem_and_fix(e.value, "cfg.json", fix=("retrain",))


def test_corrupt_sae_weights(sae_dir):
    from sae_bilingual.sae.files import load_sae

    w = sae_dir / "sae_weights.safetensors"
    w.write_bytes(b"\x00garbage" * 50)
    with pytest.raises(SAEFileError) as e:
        load_sae(sae_dir)
    names_problem_and_fix(e.value, "sae_weights.safetensors", "corrupt", fix=("retrain", "re-download"))


def test_truncated_sae_weights_ours_and_saelens(sae_dir):
    from sae_lens import SAE

    from sae_bilingual.sae.files import load_sae

    w = sae_dir / "sae_weights.safetensors"
    blob = w.read_bytes()
    w.write_bytes(blob[: len(blob) - 100])  # a write cut short
    with pytest.raises(SAEFileError) as e:
        load_sae(sae_dir)
    names_problem_and_fix(e.value, str(w), fix=("retrain", "re-download"))
    # SAELens's own loader cannot be made to raise our type, but it must not load silently.
    with pytest.raises(Exception) as e2:
        SAE.load_from_disk(sae_dir)
    assert not isinstance(e2.value, AssertionError)


def test_cfg_json_missing_fields(sae_dir):
    from sae_bilingual.sae.files import load_sae

    cfg_path = sae_dir / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["d_sae"]
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(SAEFileError) as e:
        load_sae(sae_dir)
    names_problem_and_fix(e.value, "cfg.json", "d_sae", fix=("retrain",))


def test_cfg_json_not_json(sae_dir):
    from sae_bilingual.sae.files import load_sae

    (sae_dir / "cfg.json").write_text('{"d_in": 16, ')
    with pytest.raises(SAEFileError) as e:
        load_sae(sae_dir)
    names_problem_and_fix(e.value, "cfg.json", "not valid JSON", fix=("retrain",))


def test_weights_that_do_not_fit_cfg(sae_dir):
    from safetensors.torch import save_file

    from sae_bilingual.sae.files import load_sae

    save_file({"W_enc": torch.zeros(3, 3), "W_dec": torch.zeros(3, 3), "b_dec": torch.zeros(3)},
              str(sae_dir / "sae_weights.safetensors"))
    with pytest.raises(SAEFileError) as e:
        load_sae(sae_dir)
    names_problem_and_fix(e.value, "do not fit cfg.json", fix=("retrain",))


def test_good_sae_still_loads(sae_dir):
    from sae_bilingual.sae.files import load_sae

    sae = load_sae(sae_dir)
    assert sae.cfg.d_sae == 64 and sae.cfg.k == 4


def test_corrupt_codes_file(tmp_path):
    from sae_bilingual.analysis.codes import Codes

    p = tmp_path / "codes.safetensors"
    p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(SAEFileError) as e:
        Codes.load(p)
    names_problem_and_fix(e.value, str(p), fix=("rerun",))


# ============================================================================ 5. SAE vs model


def test_sae_width_differs_from_model_intervention():
    from sae_bilingual.intervention.hook import FeatureInjection

    mid, final = tiny_lm(d_model=16), tiny_lm(d_model=16, seed=1)
    with pytest.raises(SAEFileError) as e:
        FeatureInjection(tiny_sae(d_in=32), mid_model=mid, final_model=final, layer=1)
    names_problem_and_fix(e.value, "d_in=32", "d_model=16", fix=("trained on this model",))


def test_sae_width_differs_from_model_splice():
    from sae_bilingual.sae.metrics import ce_metrics

    with pytest.raises(SAEFileError) as e:
        ce_metrics(tiny_lm(d_model=16), tiny_sae(d_in=32), windows([[1, 2, 3]]))
    names_problem_and_fix(e.value, "d_in=32", "d_model is 16", fix=("trained on this model",))


def test_sae_at_a_different_hook():
    from sae_bilingual.intervention.hook import FeatureInjection

    mid, final = tiny_lm(), tiny_lm(seed=1)
    with pytest.raises(SAEFileError) as e:
        FeatureInjection(tiny_sae(hook="blocks.0.hook_resid_post"), mid_model=mid, final_model=final, layer=2)
    names_problem_and_fix(e.value, "blocks.0.hook_resid_post", "paper layer 2", fix=("pass layer=1",))


def test_sae_hook_missing_from_model_splice():
    from sae_bilingual.sae.metrics import ce_metrics

    with pytest.raises(SAEFileError) as e:
        ce_metrics(tiny_lm(n_layers=2), tiny_sae(hook="blocks.5.hook_resid_post"), windows([[1, 2, 3]]))
    names_problem_and_fix(e.value, "blocks.5.hook_resid_post", fix=("trained on this model",))


# ============================================================================ 6. activations


def test_nan_activation_names_hook_document_position():
    from sae_bilingual.data.store import collect_activations

    model = tiny_lm()
    with torch.no_grad():
        model.W_E[9] = float("nan")
    # (a NaN at position p leaks to every position of its row in TL's attention: 0 * NaN)
    w = windows([[1, 2, 3, 4], [1, 9, 5, 6, 7]], doc_ids=[40, 41])
    with pytest.raises(DataError) as e:
        collect_activations(model, w, ["blocks.0.hook_resid_post"], batch_size=2)
    names_problem_and_fix(e.value, "blocks.0.hook_resid_post", "document 41", "position 1",
                          fix=("float32", "check its weights"))


def test_token_ids_beyond_model_vocab():
    from sae_bilingual.data.store import collect_activations

    w = windows([[1, 2, 3], [1, 60, 4]])
    with pytest.raises(DataError) as e:
        collect_activations(tiny_lm(d_vocab=50), w, ["blocks.0.hook_resid_post"])
    names_problem_and_fix(e.value, "token id 60", "d_vocab=50", fix=("model family's own tokenizer",))


def test_tokenizer_larger_than_model_vocab_at_family_load(world):
    from sae_bilingual.models.registry import HFLlamaFamily

    tok = copy.deepcopy(world.tokenizer)
    tok.add_tokens([f"extra_token_{i}" for i in range(400)])
    fam = HFLlamaFamily(name="toy", source=world.root, tokenizer_source=tok)
    with pytest.raises(CheckpointError) as e:
        fam.load(None)
    names_problem_and_fix(e.value, "d_vocab", f"{len(tok)} tokens", fix=("tokenizer saved with these checkpoints",))


# ============================================================================ 7. intervention


def test_class_with_fewer_than_m_features():
    from sae_bilingual.intervention.masks import class_mask

    df = pd.DataFrame({"cls": ["en"] * 5 + ["mixed"] * 2, "dead": [False] * 7})
    with pytest.raises(DataError) as e:
        class_mask(df, "mixed", m=3, seed=0)
    names_problem_and_fix(e.value, "'mixed'", "only 2", "m=3", fix=("lower m",))


def test_comet_requested_without_environment(monkeypatch, tmp_path):
    from sae_bilingual.intervention.comet_bridge import ENV_MODEL, ENV_PYTHON, comet_score

    monkeypatch.delenv(ENV_PYTHON, raising=False)
    monkeypatch.delenv(ENV_MODEL, raising=False)
    with pytest.raises(ExtraMissingError) as e:
        comet_score(["a"], ["b"], ["c"])
    names_problem_and_fix(e.value, ENV_PYTHON, fix=("pip install unbabel-comet",))


def test_comet_requested_in_recipe_checked_up_front(tmp_path):
    from sae_bilingual.study.preflight import check_comet

    rec = recipe(tmp_path, **{"intervention.comet_python": str(tmp_path / "nope" / "python")})
    with pytest.raises(ExtraMissingError) as e:
        check_comet(rec)
    names_problem_and_fix(e.value, "does not exist", fix=("pip install unbabel-comet",))


def test_comet_missing_fails_in_plan(world, tmp_path, no_lm_no_sae, earlier):
    out, before = earlier
    err = run_fails(recipe(out, **{"intervention.comet_python": str(tmp_path / "nope")}), ExtraMissingError)
    names_problem_and_fix(err, "does not exist")
    assert snapshot(out) == before


# ============================================================================ 8. output


def test_output_dir_not_writable(world, tmp_path, no_lm_no_sae):
    """Root ignores chmod, so the output dir sits under a regular file."""
    f = tmp_path / "a_file"
    f.write_text("not a dir")
    err = run_fails(recipe(f / "out"), OutputError)
    names_problem_and_fix(err, str(f / "out"), "not writable", fix=("--output-dir",))
    assert f.read_text() == "not a dir"


def test_atomic_write_into_unwritable_place(tmp_path):
    from sae_bilingual.io import atomic_write_json

    f = tmp_path / "a_file"
    f.write_text("x")
    with pytest.raises(OutputError) as e:
        atomic_write_json(f / "sub" / "x.json", {"a": 1})
    names_problem_and_fix(e.value, "cannot write", fix=("writable output directory",))


def test_disk_full_during_write_keeps_old_file(tmp_path, monkeypatch):
    from sae_bilingual import io as sio

    target = tmp_path / "summary.json"
    sio.atomic_write_json(target, {"old": True})
    before = target.read_bytes()
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[: len(data) // 2])  # part of it lands, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(sio.os, "fdopen", lambda fd, *a, **k: Full(real_fdopen(fd, *a, **k)))
    with pytest.raises(OutputError) as e:
        sio.atomic_write_json(target, {"new": list(range(1000))})
    monkeypatch.undo()
    names_problem_and_fix(e.value, str(target), "No space left", fix=("free disk space",))
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]  # no temp left


def test_disk_full_inside_atomic_dir_keeps_old_dir(tmp_path):
    from sae_bilingual.io import atomic_dir

    d = tmp_path / "sae"
    d.mkdir()
    (d / "cfg.json").write_text("old")
    with pytest.raises(OSError):
        with atomic_dir(d) as tmp:
            (tmp / "cfg.json").write_text("new")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert (d / "cfg.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]


# ============================================================================ 9. security


PKG = REPO / "sae_bilingual"
SOURCES = {p: p.read_text(encoding="utf-8") for p in PKG.rglob("*.py")}


def test_torch_load_only_with_weights_only():
    import re

    for p, src in SOURCES.items():
        for m in re.finditer(r"torch\.load\(", src):
            call = src[m.start(): src.find("\n", m.start()) + 200]
            assert "weights_only=True" in call.split(")")[0] + call, f"{p}: torch.load without weights_only=True"


def test_no_pickle_joblib_or_unsafe_yaml():
    import re

    for p, src in SOURCES.items():
        assert not re.search(r"^\s*(import|from)\s+(pickle|joblib|dill|cloudpickle)\b", src, re.M), p
        assert not re.search(r"\bpd\.read_pickle|\bnp\.load\([^)]*allow_pickle=True", src), p
        assert not re.search(r"yaml\.(load|unsafe_load|full_load)\(", src), f"{p}: use yaml.safe_load"


def test_trust_remote_code_defaults_false():
    import inspect

    from sae_bilingual.models import hf

    for fn in (hf.load_hf_llama, hf.load_hooked):
        assert inspect.signature(fn).parameters["trust_remote_code"].default is False
    for p, src in SOURCES.items():
        assert "trust_remote_code=True" not in src, p


def test_pickled_sae_weights_are_refused(tmp_path):
    """convert.py reads .pth with weights_only=True: a pickle carrying code is an SAEFileError."""
    from sae_bilingual.sae.convert import _load_tensors

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    p = tmp_path / "sae.pth"
    torch.save({"W_enc": Evil()}, p)
    with pytest.raises(SAEFileError) as e:
        _load_tensors(p)
    names_problem_and_fix(e.value, "weights_only=True", fix=("never pickled code",))
    assert not (tmp_path / "pwned").exists()


def test_family_names_cannot_escape_the_output_dir():
    from sae_bilingual.models.registry import get_family, register_family

    for bad in ("../evil", "a/b", "..", ".hidden"):
        with pytest.raises(CheckpointError) as e:
            register_family(bad, lambda **k: None)
        names_problem_and_fix(e.value, bad, fix=("letters, digits",))
    with pytest.raises(CheckpointError):
        get_family("../../etc", source="/tmp")


def test_unit_path_part_check():
    from sae_bilingual.study.preflight import check_path_part

    for bad in ("../x", "a/b", "..", "", ".git", "x\\..\\y"):
        with pytest.raises(OutputError):
            check_path_part(bad)
    assert check_path_part("llm-jp-3-1.8b") == "llm-jp-3-1.8b"


def test_unit_dir_refuses_escape(tmp_path):
    from sae_bilingual.study.unit import Unit

    with pytest.raises(SaeBilingualError):
        Unit(0, "../../outside", 1, 1, [1]).dir(tmp_path)


# ============================================================================ 10. CLI


def test_cli_prints_one_line_not_a_traceback(tmp_path, capsys):
    from sae_bilingual.cli import main

    p = tmp_path / "r.yaml"
    p.write_text("sae: {k: eight}\n")
    assert main(["study", str(p), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: sae.k")


def test_cli_bad_set_syntax(capsys):
    from sae_bilingual.cli import main

    assert main(["study", "smoke", "--set", "sae.k", "--dry-run"]) == 2
    assert "FIELD=VALUE" in capsys.readouterr().err


def test_warm_start_needs_the_local_executor():
    with pytest.raises(ConfigError, match="warm_start.*executor: local"):
        load_recipe(REPO / "recipes" / "smoke.yaml", {"sae.warm_start": True, "executor": "ray"})


# ============================================================================ 11. issue 21: refused before any work


def refused(rec: Recipe, exc: type[BaseException] = SaeBilingualError) -> BaseException:
    """run_study fails with ``exc`` and the output dir was never created."""
    err = run_fails(rec, exc)
    assert not Path(rec.output_dir).exists(), f"{rec.output_dir} was created for a refused recipe"
    return err


def test_two_models_with_one_family_name_are_refused_at_load(tmp_path):
    with pytest.raises(ConfigError) as e:
        recipe(tmp_path / "s", models=[{"family": "toy"}, {"family": "toy", "source": str(tmp_path)}])
    names_problem_and_fix(e.value, "models[0]", "models[1]", "units/toy", fix=("name:",))
    with pytest.raises(ConfigError) as e:
        recipe(tmp_path / "s", models=[{"family": "toy"}, {"name": "toy", "family": "toy"}])
    names_problem_and_fix(e.value, "models[0]", "models[1]", fix=("name:",))
    with pytest.raises(ConfigError) as e:
        recipe(tmp_path / "s", models=[{"name": "../up", "family": "toy"}])
    names_problem_and_fix(e.value, "models[0].name", fix=("letters, digits",))


def test_named_models_get_their_own_units(world, tmp_path):
    from sae_bilingual.study.context import StudyContext
    from sae_bilingual.study.plan import plan_study

    rec = recipe(tmp_path / "s", models=[
        {"name": "toy-a", "family": "toy", "checkpoints": "final", "layers": [1]},
        {"name": "toy-b", "family": "toy", "source": str(world.root), "checkpoints": "final", "layers": [1]},
    ], **{"intervention.enabled": False})
    assert [m.name for m in rec.models] == ["toy-a", "toy-b"]
    plan = plan_study(rec, StudyContext(rec, progress=False))
    assert [u.id for u in plan.units] == ["toy-a/iter_0000120", "toy-b/iter_0000120"]
    assert [u.dir(tmp_path).relative_to(tmp_path).as_posix() for u in plan.units] == [
        "units/toy-a/iter_0000120", "units/toy-b/iter_0000120"]
    text = plan.describe(rec)
    assert "toy-a/iter_0000120" in text and "toy-b/iter_0000120" in text


@pytest.mark.slow
def test_two_models_of_one_family_both_reach_the_summary(world, tmp_path):
    """Before: both wrote units/toy/iter_0000120 and the summary had one row."""
    from sae_bilingual.study.run import run_study

    rec = recipe(tmp_path / "s", models=[
        {"name": "toy-a", "family": "toy", "checkpoints": "final", "layers": [1]},
        {"name": "toy-b", "family": "toy", "source": str(world.root), "checkpoints": "final", "layers": [1]},
    ], **{"intervention.enabled": False, "sae.lr": 0.001, "data.train_tokens_per_lang": 2048,
          "data.eval_tokens_per_lang": 1024})
    run_study(rec, progress=False)
    summary = pd.read_csv(tmp_path / "s" / "tables" / "summary.csv")
    assert sorted(summary["model"]) == ["toy-a", "toy-b"]
    for name in ("toy-a", "toy-b"):
        assert (tmp_path / "s" / "units" / name / "iter_0000120" / "L01" / "features.parquet").is_file()


@pytest.mark.parametrize("field,value", [
    ("intervention.draws", 0), ("intervention.ms", [0]), ("intervention.ms", []),
    ("intervention.alphas", []), ("intervention.alphas", [float("nan")]),
    ("intervention.eval_docs_per_lang", 0), ("intervention.max_new_tokens", 0),
    ("intervention.few_shot", -1), ("intervention.translation_pairs", -1),
    ("intervention.conditions", []), ("intervention.mid_checkpoint", -5),
    ("analysis.ce_docs_per_lang", 0), ("analysis.n_examples", -1), ("analysis.n_browser_features", -1),
    ("sae.warmup_steps", -1), ("sae.geometric_median_sample", 0), ("sae.adam_eps", 0.0), ("seed", -1),
])
def test_counts_and_numbers_are_validated_at_load(field, value):
    with pytest.raises(ConfigError) as e:
        recipe(Path("/tmp/x"), **{field: value})
    names_problem_and_fix(e.value, field)


@pytest.mark.parametrize("field,value", [
    ("sae.lr", float("nan")), ("sae.lr", float("inf")), ("sae.lr", -1e-3), ("sae.lr", "nan"),
    ("sae.lr_grid", []), ("sae.lr_grid", [1e-3, float("nan")]), ("sae.lr_grid", [-1e-3]),
    ("sae.lr_grid", [float("inf")]),
])
def test_learning_rates_must_be_finite_and_positive(field, value):
    with pytest.raises(ConfigError) as e:
        recipe(Path("/tmp/x"), **{field: value})
    names_problem_and_fix(e.value, field, fix=("e.g.", "> 0", "positive"))


def test_set_indexes_into_lists():
    """`--set models.0.layers=1` used to crash with AttributeError ('list' has no setdefault)."""
    smoke = REPO / "recipes" / "smoke.yaml"
    assert load_recipe(smoke, {"models.0.layers": 1}).models[0].layers == 1
    for bad, word in (({"models.3.layers": 1}, "models.3"), ({"sae.k.x": 1}, "sae.k"),
                      ({"models.first.layers": 1}, "models.first")):
        with pytest.raises(ConfigError) as e:
            load_recipe(smoke, bad)
        names_problem_and_fix(e.value, word, fix=("index", "mapping"))


def test_unknown_intervention_condition_refused_at_load():
    with pytest.raises(ConfigError) as e:
        recipe(Path("/tmp/x"), **{"intervention.conditions": ["none", "en", "fr"]})
    names_problem_and_fix(e.value, "intervention.conditions", "'fr'", fix=("none, en, ja, mixed",))


def test_device_that_is_not_a_device(world, no_lm_no_sae, tmp_path):
    """Before: accepted, then a RuntimeError traceback when the first model loaded."""
    with pytest.raises(ConfigError) as e:
        recipe(tmp_path / "s", device="banana")
    names_problem_and_fix(e.value, "device", "banana", fix=("cpu", "cuda"))
    from sae_bilingual.study.preflight import check_device  # (the preflight's own check)

    with pytest.raises(ConfigError):
        check_device("banana")
    assert not (tmp_path / "s").exists()


def test_cuda_without_a_gpu(world, no_lm_no_sae, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = refused(recipe(tmp_path / "s", device="cuda"), ConfigError)
    names_problem_and_fix(err, "device", "cuda", "no GPU", fix=("device: cpu",))


def test_context_longer_than_the_model_window(world, no_lm_no_sae, tmp_path):
    err = refused(recipe(tmp_path / "s", **{"data.context": 129}), ConfigError)
    names_problem_and_fix(err, "data.context = 129", "128", fix=("lower data.context",))


def test_truncated_checkpoint_safetensors(world, no_lm_no_sae, tmp_path):
    import shutil

    root = tmp_path / "ckpts"
    shutil.copytree(world.root, root)
    bad = root / "iter_0000120" / "model.safetensors"
    blob = bad.read_bytes()
    bad.write_bytes(blob[: len(blob) - 1000])
    rec = recipe(tmp_path / "s")
    rec.models[0].source = str(root)
    err = refused(rec, CheckpointError)
    names_problem_and_fix(err, str(bad), "truncated", fix=("download", "copy"))


def test_corpus_file_errors_fail_before_the_output_dir(world, no_lm_no_sae, tmp_path):
    en, ja = tmp_path / "en.txt", tmp_path / "ja.txt"
    en.write_text("the cat sat\nthe dog ran\n")
    ja.write_bytes("猫が座った\n".encode() + b"\xff\xfe broken\n")
    rec = recipe(tmp_path / "s", **{"data.corpus": "text", "data.paths": {"en": str(en), "ja": str(ja)},
                                   "intervention.enabled": False})
    err = refused(rec, DataError)
    names_problem_and_fix(err, f"{ja}:2", "UTF-8", fix=("re-encode", "convert"))


def test_sae_weights_all_nan_refused_at_load(tmp_path):
    from sae_bilingual.sae.files import load_sae, save_sae

    sae = tiny_sae()
    with torch.no_grad():
        sae.W_enc.fill_(float("nan"))
    path = save_sae(sae, tmp_path / "sae")
    with pytest.raises(SAEFileError) as e:
        load_sae(path)
    names_problem_and_fix(e.value, "W_enc", "NaN", fix=("retrain",))


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("family,repo", [("llm-jp-3-150m", "llm-jp/llm-jp-3-150m"),
                                         ("pythia-160m", "EleutherAI/pythia-160m")])
def test_hub_model_without_source_offline(world, no_lm_no_sae, tmp_path, offline, family, repo):
    rec = recipe(tmp_path / "s", models=[{"family": family, "checkpoints": "final", "layers": [1]}],
                 **{"intervention.enabled": False})
    err = refused(rec)
    names_problem_and_fix(err, "offline", repo, fix=("pass a local source",))


def test_hf_corpus_offline(world, no_lm_no_sae, tmp_path, offline):
    rec = recipe(tmp_path / "s", **{"data.corpus": "hf", "data.hf_name": "someone/some-corpus"})
    err = refused(rec)
    names_problem_and_fix(err, "offline", "someone/some-corpus", fix=("pass a local source",))


def test_unreachable_hub_is_detected_quickly(world, no_lm_no_sae, tmp_path, monkeypatch):
    """No HF_HUB_OFFLINE, but the Hub endpoint refuses connections: one probe, no retries."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    rec = recipe(tmp_path / "s", models=[{"family": "llm-jp-3-150m", "checkpoints": "final", "layers": [1]}],
                 **{"intervention.enabled": False})
    err = refused(rec)
    names_problem_and_fix(err, "offline", fix=("pass a local source",))


def test_recipe_naming_a_program_says_it_runs_it(tmp_path, caplog):
    """intervention.comet_python / comet_model name a program to run and a pickle to load:
    a recipe with them is code, and loading one says so (and the README documents it)."""
    import logging

    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({**SMOKE, "intervention": {**SMOKE["intervention"],
                                                           "comet_python": "/usr/bin/python3"}}))
    with caplog.at_level(logging.WARNING):
        load_recipe(p)
    msg = " ".join(r.getMessage() for r in caplog.records)
    for word in ("intervention.comet_python", "/usr/bin/python3", "runs", "trust"):
        assert word in msg, f"{word!r} not in the warning: {msg!r}"
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "comet_python" in readme and "code" in readme.split("comet_python", 1)[1][:600]


def test_translation_pair_files_checked_before_any_work(world, no_lm_no_sae, tmp_path):
    """Read only at the intervention (after every unit trained) before; now in the preflight."""
    en, ja = tmp_path / "test.en", tmp_path / "test.ja"
    en.write_text("a cat .\nthe dog .\nhello .\n")
    ja.write_text("猫 。\n犬 。\n")
    err = refused(recipe(tmp_path / "s", **{"intervention.pairs_paths": {"en": str(en), "ja": str(ja)}}), DataError)
    names_problem_and_fix(err, "line-aligned", "{'en': 3, 'ja': 2}", fix=("one sentence pair per line",))
    err = refused(recipe(tmp_path / "s", **{"intervention.pairs_paths": {"en": str(en),
                                                                       "ja": str(tmp_path / "nope.ja")}}), DataError)
    names_problem_and_fix(err, "intervention.pairs_paths.ja", "does not exist")


def test_intervention_fields_are_not_checked_when_it_is_off():
    """An [en, fr] study without the intervention keeps the default (en/ja) conditions."""
    rec = recipe(Path("/tmp/x"), **{"data.languages": ["en", "fr"], "intervention.enabled": False})
    assert rec.intervention.conditions == ["none", "en", "ja", "mixed"]
    with pytest.raises(ConfigError, match="'ja' is not a condition"):
        recipe(Path("/tmp/x"), **{"data.languages": ["en", "fr"]})
