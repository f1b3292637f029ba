"""COMET bridge plumbing with a fake `comet` module run by the current interpreter."""

from __future__ import annotations

import os
import sys
import textwrap

import pytest

from sae_bilingual.intervention.comet_bridge import ENV_MODEL, ENV_PYTHON, SETUP_ENV, comet_available, comet_score
from sae_bilingual.errors import DataError, ExtraMissingError
from tests.bad_input_fixtures import names_problem_and_fix

FAKE = textwrap.dedent(
    """
    from types import SimpleNamespace

    class _Model:
        def __init__(self, path):
            self.path = path

        def predict(self, data, batch_size=8, gpus=0, progress_bar=True):
            scores = [(len(d["mt"]) + 10 * len(d["src"])) / (len(d["ref"]) + 1) for d in data]
            return SimpleNamespace(scores=scores, system_score=sum(scores) / len(scores))

    def load_from_checkpoint(path):
        with open(path) as f:
            assert f.read() == "ckpt"
        return _Model(path)
    """
)


@pytest.fixture()
def fake_comet(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "comet"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(FAKE)
    ckpt = tmp_path / "model" / "checkpoints" / "model.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_text("ckpt")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv(ENV_PYTHON, sys.executable)
    monkeypatch.setenv(ENV_MODEL, str(tmp_path / "model"))  # a dir: checkpoints/model.ckpt is found
    return tmp_path


def test_scores_come_back_aligned(fake_comet):
    srcs = ["a", "bb", "ccc", "日本語"]
    hyps = ["xyz", "", "hello", "こんにちは"]
    refs = ["r", "refs", "", "参照"]
    res = comet_score(srcs, hyps, refs)
    want = [(len(h) + 10 * len(s)) / (len(r) + 1) for s, h, r in zip(srcs, hyps, refs)]
    assert res.scores == pytest.approx(want)
    assert res.system_score == pytest.approx(sum(want) / len(want))
    assert comet_available()


def test_missing_env_is_extra_missing_with_setup_line(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_PYTHON, raising=False)
    with pytest.raises(ExtraMissingError) as e:
        comet_score(["a"], ["b"], ["c"], model_path=tmp_path)
    assert SETUP_ENV in str(e.value)
    assert "python -m venv ~/.venvs/comet && ~/.venvs/comet/bin/pip install unbabel-comet" in str(e.value)
    with pytest.raises(ExtraMissingError):
        comet_score(["a"], ["b"], ["c"], python=str(tmp_path / "nope" / "python"))
    assert not comet_available()


def test_missing_model_and_missing_module(fake_comet, monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_MODEL)
    with pytest.raises(ExtraMissingError, match="download_model"):
        comet_score(["a"], ["b"], ["c"])
    with pytest.raises(ExtraMissingError, match="does not exist"):
        comet_score(["a"], ["b"], ["c"], model_path=tmp_path / "missing")
    monkeypatch.setenv("PYTHONPATH", "")
    with pytest.raises(ExtraMissingError, match="no `comet` module"):
        comet_score(["a"], ["b"], ["c"], model_path=fake_comet / "model")


def test_misaligned_inputs(fake_comet):
    with pytest.raises(DataError, match="aligned"):
        comet_score(["a", "b"], ["b"], ["c"])


# ======== bad inputs (moved from test_bad_inputs.py): COMET without its environment


def test_comet_requested_without_environment(monkeypatch, tmp_path):
    from sae_bilingual.intervention.comet_bridge import ENV_MODEL, ENV_PYTHON, comet_score

    monkeypatch.delenv(ENV_PYTHON, raising=False)
    monkeypatch.delenv(ENV_MODEL, raising=False)
    with pytest.raises(ExtraMissingError) as e:
        comet_score(["a"], ["b"], ["c"])
    names_problem_and_fix(e.value, ENV_PYTHON, fix=("pip install unbabel-comet",))

