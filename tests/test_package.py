"""Security rules over the whole package's sources (sae_bilingual/**.py): no unsafe torch.load,
pickle or YAML loaders, no trust_remote_code=True.

Moved from the catalogue of bad inputs (tests/bad_input_fixtures.py has its helpers)."""

from __future__ import annotations

from tests.bad_input_fixtures import REPO


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

