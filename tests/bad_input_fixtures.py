"""Helpers and fixtures for the catalogue of bad inputs (spread over tests/test_<module>.py):
each bad input gives ONE clear SaeBilingualError, early, touching nothing.

Every case asserts (a) the error type (a ``SaeBilingualError`` subclass, so the CLI prints
one line instead of a traceback), (b) that the message names the problem AND the fix,
(c) where it matters, that no LM forward / SAE training ran before the error and that an
earlier study's files are byte-for-byte unchanged.

The helpers are imported explicitly (``from tests.bad_input_fixtures import recipe, ...``); the
fixtures (``world``, ``no_lm_no_sae``, ``earlier``, ``sae_dir``, ``offline``) reach every test module
through ``pytest_plugins`` in tests/conftest.py (same names, same scopes as before the split).
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import pytest
import torch
import yaml

from sae_bilingual.config import Recipe, from_dict
from sae_bilingual.errors import SaeBilingualError

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




def refused(rec: Recipe, exc: type[BaseException] = SaeBilingualError) -> BaseException:
    """run_study fails with ``exc`` and the output dir was never created."""
    err = run_fails(rec, exc)
    assert not Path(rec.output_dir).exists(), f"{rec.output_dir} was created for a refused recipe"
    return err


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

