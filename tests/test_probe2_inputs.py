"""Second adversarial probe (issue 30): inputs that contradict each other, or that the machine
cannot hold, are refused with one error line before any work (and before the output folder)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sae_bilingual.config import load_recipe
from sae_bilingual.errors import ConfigError
from tests.test_probe2_config import one_error


def _recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_one_corpus_file_for_two_languages_is_refused(tmp_path: Path, capsys) -> None:
    (tmp_path / "both.txt").write_text("hello\n")
    r = _recipe(tmp_path, "data:\n  corpus: text\n  paths: {en: both.txt, ja: ./both.txt}\n")
    line = one_error(["study", str(r), "--dry-run", "--output-dir", str(tmp_path / "o")], capsys)
    assert "data.paths.en and data.paths.ja are the same file" in line and "its own file" in line


def test_a_language_listed_twice_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"names 'en' twice; list each language once, e\.g\. languages: \[en, ja\]"):
        load_recipe(_recipe(tmp_path, "data:\n  languages: [en, ja, en]\n"))


def test_an_empty_output_dir_is_refused_not_ignored(tmp_path: Path, capsys) -> None:
    r = _recipe(tmp_path, f"output_dir: {tmp_path / 'from_recipe'}\n")
    line = one_error(["study", str(r), "--dry-run", "--output-dir", ""], capsys)
    assert "output_dir is empty" in line
    assert not (tmp_path / "from_recipe").exists()


# ----------------------------------------------------------------------------- convert (items 6, 11)

N, D = 16, 8


def _released(**change: torch.Tensor) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sd = {"encoder.weight": torch.randn(N, D, generator=g), "encoder.bias": torch.randn(N, generator=g),
          "W_dec": torch.randn(N, D, generator=g), "b_dec": torch.randn(D, generator=g)}
    return {**sd, **change}


def _convert_error(tmp_path: Path, capsys, sd: dict[str, torch.Tensor]) -> str:
    src = tmp_path / "sae.safetensors"
    save_file(sd, str(src))
    line = one_error(["convert", str(src), str(tmp_path / "out"), "--model", "toy"], capsys)
    assert not (tmp_path / "out").exists()
    return line


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_convert_refuses_nan_or_inf_weights(tmp_path: Path, capsys, bad: float) -> None:
    """Before: rc 0 and an SAE that SAELens loads and that outputs NaN."""
    w = _released()["W_dec"].clone()
    w[3, 2] = bad
    line = _convert_error(tmp_path, capsys, _released(W_dec=w))
    assert "tensor W_dec holds 1 NaN/inf values" in line and "nothing was written" in line
