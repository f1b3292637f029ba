"""Bad inputs: SAE directories on disk (sae_bilingual/sae/files.py: load_sae / save_sae).

Moved from the catalogue of bad inputs (tests/bad_input_fixtures.py has its helpers)."""

from __future__ import annotations

import json

import pytest
import torch

from sae_bilingual.errors import SAEFileError
from tests.bad_input_fixtures import names_problem_and_fix, tiny_sae


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


def test_sae_weights_all_nan_refused_at_load(tmp_path):
    from sae_bilingual.sae.files import load_sae, save_sae

    sae = tiny_sae()
    with torch.no_grad():
        sae.W_enc.fill_(float("nan"))
    path = save_sae(sae, tmp_path / "sae")
    with pytest.raises(SAEFileError) as e:
        load_sae(path)
    names_problem_and_fix(e.value, "W_enc", "NaN", fix=("retrain",))

