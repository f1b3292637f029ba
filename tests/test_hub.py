"""Bad inputs: the Hugging Face Hub offline or unreachable (sae_bilingual/hub.py).

Moved from the catalogue of bad inputs (tests/bad_input_fixtures.py has its helpers)."""

from __future__ import annotations

import pytest

from tests.bad_input_fixtures import names_problem_and_fix, recipe, refused


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

