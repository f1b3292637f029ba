"""Second adversarial probe (issue 30): inputs that contradict each other, or that the machine
cannot hold, are refused with one error line before any work (and before the output folder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save, save_file

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

N, D = 64, 8


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


def _safetensors_bytes() -> bytes:
    return save(_released())


def _damaged(kind: str) -> bytes:
    good = _safetensors_bytes()
    n = int.from_bytes(good[:8], "little")
    header = json.loads(good[8:8 + n])
    if kind == "huge header length":
        return (2**60).to_bytes(8, "little") + good[8:]
    if kind == "garbage header":
        return (12).to_bytes(8, "little") + b"\x00not json!\xff" + good[8 + n:]
    if kind == "zero bytes":
        return b""
    if kind == "truncated":
        return good[: len(good) // 2]
    first = next(k for k in header if k != "__metadata__")  # offsets past the end of the data
    header[first]["data_offsets"][1] += 10**6
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + good[8 + n:]


@pytest.mark.parametrize("kind", ["huge header length", "garbage header", "zero bytes", "truncated",
                                  "offsets past the end"])
def test_convert_of_a_damaged_safetensors_file_is_one_line(tmp_path: Path, capsys, kind: str) -> None:
    src = tmp_path / "sae.safetensors"
    src.write_bytes(_damaged(kind))
    line = one_error(["convert", str(src), str(tmp_path / "out")], capsys)
    assert f"{src} is not a readable safetensors file" in line and "re-download it" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change, words", [
    ({"b_dec": torch.zeros(D + 1)}, f"b_dec has shape ({D + 1},); a released SAE of d_in = {D} needs ({D},)"),
    ({"encoder.bias": torch.zeros(N - 1)}, f"encoder.bias has shape ({N - 1},); a released SAE of {N} latents needs ({N},)"),
    ({"encoder.weight": torch.zeros(N * D)}, f"encoder.weight has shape ({N * D},); it must be 2-D [latents, d_in]"),
])
def test_convert_of_tensors_of_the_wrong_shape_is_one_line(tmp_path: Path, capsys, change, words) -> None:
    assert words in _convert_error(tmp_path, capsys, _released(**change))


@pytest.mark.parametrize("text, words", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "must hold a JSON object (model_type, d_in, num_latents, k), got list"),
    ('{"k": "eight"}', "k = 'eight' must be a whole number"),
])
def test_convert_of_a_bad_config_json_is_one_line(tmp_path: Path, capsys, text: str, words: str) -> None:
    src = tmp_path / "hf"
    src.mkdir()
    save_file(_released(), str(src / "model.safetensors"))
    (src / "config.json").write_text(text)
    line = one_error(["convert", str(src), str(tmp_path / "out")], capsys)
    assert f"{src / 'config.json'}" in line and words in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("seed", [10**23, 2**32])
def test_a_huge_seed_is_refused_before_the_output_folder(tmp_path: Path, capsys, seed: int) -> None:
    """Before: an overflow traceback from torch.Generator.manual_seed, the output folder made."""
    line = one_error(["study", "smoke", "--set", f"seed={seed}", "--output-dir", str(tmp_path / "o")], capsys)
    assert line == f"error: seed = {seed} is too large: use a whole number from 0 to 4294967295 (2^32 - 1)"
    assert not (tmp_path / "o").exists()


def test_the_largest_seed_is_accepted(tmp_path: Path) -> None:
    assert load_recipe(_recipe(tmp_path, "seed: 4294967295\n")).seed == 2**32 - 1


@pytest.mark.parametrize("tail", ["a" * 300, "/".join(["b" * 99] * 46)], ids=["300-char name", "4.6 KB path"])
def test_an_output_dir_too_long_for_the_filesystem_is_one_line(tmp_path: Path, capsys, tail: str) -> None:
    """Before: an ENAMETOOLONG traceback."""
    line = one_error(["study", "smoke", "--output-dir", str(tmp_path / tail)], capsys)
    if len(tail) == 300:
        assert "output_dir: the folder name aaaaaaaaaaaaaaaaaaaaaaaa... is 300 bytes long" in line
    else:
        n = len(str(tmp_path / tail).encode())
        assert f"output_dir: the path is {n} bytes long; paths here may have 4096 bytes" in line


@pytest.mark.parametrize("command, field", [
    (["report", "{long}"], "study_dir"), (["export", "{long}", "{tmp}/rel"], "run_dir"),
    (["export", "{tmp}", "{long}"], "out"), (["convert", "{long}", "{tmp}/sae"], "src"),
    (["convert", "{tmp}", "{long}"], "dst")])
@pytest.mark.parametrize("tail", ["a" * 300, "/".join(["b" * 200] * 24)])
def test_a_path_too_long_on_the_command_line_is_one_line(tmp_path: Path, capsys, command: list[str],
                                                         field: str, tail: str) -> None:
    """Paths given straight to report/export/convert: before, an ENAMETOOLONG traceback."""
    argv = [a.format(long=tmp_path / tail, tmp=tmp_path) for a in command]
    line = one_error(argv, capsys)
    what = "the folder name" if len(tail) == 300 else f"the path is {len(str(tmp_path / tail).encode())} bytes long"
    assert line.startswith(f"error: {field}: {what}")


def test_an_export_folder_name_leaves_room_for_its_build_folder(tmp_path: Path) -> None:
    ok = load_recipe(_recipe(tmp_path, f"export: {{path: {tmp_path / ('c' * 200)}}}\n"))
    assert ok.export.path.endswith("c" * 200)
    with pytest.raises(ConfigError, match=r"export\.path: the folder name c+\.\.\. is 250 bytes long"):
        load_recipe(_recipe(tmp_path, f"export: {{path: {tmp_path / ('c' * 250)}}}\n"))


def test_a_cache_that_is_a_file_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    """Before: NotADirectoryError traceback."""
    (tmp_path / "cache").write_text("")
    monkeypatch.setenv("SAE_BILINGUAL_CACHE", str(tmp_path / "cache"))
    line = one_error(["world", "--tiny", "-q"], capsys)
    assert line.startswith(f"error: the toy-world cache {tmp_path / 'cache'} cannot be written (Not a directory")
    assert "set SAE_BILINGUAL_CACHE to a folder you can write" in line


def test_a_read_only_cache_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    """Before: PermissionError traceback. (Tests may run as root, who writes anywhere: the
    refusal of a read-only folder is stood in for by mkdir raising as the kernel would.)"""
    cache = tmp_path / "ro"
    cache.mkdir()
    mkdir = Path.mkdir

    def read_only(self: Path, *a, **k) -> None:
        if self.is_relative_to(cache):
            raise PermissionError(13, "Permission denied", str(self))
        mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", read_only)
    monkeypatch.setenv("SAE_BILINGUAL_CACHE", str(cache))
    line = one_error(["study", "smoke", "--dry-run"], capsys)
    assert line.startswith(f"error: the toy-world cache {cache} cannot be written (Permission denied: {cache}/world)")
