"""Bad inputs refused by the preflight (sae_bilingual/study/preflight.py), before any LM pass,
SAE training or output directory.

Moved from the catalogue of bad inputs (tests/bad_input_fixtures.py has its helpers)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sae_bilingual.errors import CheckpointError, ConfigError, DataError, ExtraMissingError, OutputError
from tests.bad_input_fixtures import snapshot, names_problem_and_fix, recipe, run_fails, refused


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


def test_unit_path_part_check():
    from sae_bilingual.study.preflight import check_path_part

    for bad in ("../x", "a/b", "..", "", ".git", "x\\..\\y"):
        with pytest.raises(OutputError):
            check_path_part(bad)
    assert check_path_part("llm-jp-3-1.8b") == "llm-jp-3-1.8b"


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

