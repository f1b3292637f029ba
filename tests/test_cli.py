"""Every `sae-bilingual` subcommand runs from `main(argv)`, and bad paths give one error line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sae_bilingual.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
TESTED = {"study", "world", "report", "convert", "recipes", "export"}  # export: tests/test_export.py


def test_every_subcommand_has_a_test():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == TESTED, "add a CLI test for the new subcommand(s)"


def test_study_dry_run(world_cache, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["study", "smoke", "--dry-run", "--output-dir", str(out), "-q"]) == 0
    assert "total: 3 units, 6 SAEs" in capsys.readouterr().out
    assert not out.exists()


def test_world(world_cache, capsys):
    assert main(["world", "--tiny", "-q"]) == 0
    assert "world: " in capsys.readouterr().out


def test_recipes(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "smoke" in out and "toy" in out


def test_convert(tmp_path, capsys):
    from sae_lens import SAE

    g = torch.Generator().manual_seed(0)
    sd = {"encoder.weight": torch.randn(64, 8, generator=g), "encoder.bias": torch.zeros(64),
          "W_dec": torch.randn(64, 8, generator=g), "b_dec": torch.zeros(8)}  # n = 64 > k = 32 (the default)
    torch.save(sd, tmp_path / "sae.pth")
    dst = tmp_path / "out"
    assert main(["convert", str(tmp_path / "sae.pth"), str(dst), "--hook", "blocks.0.hook_resid_post"]) == 0
    assert f"converted: {dst}" in capsys.readouterr().out
    sae = SAE.load_from_disk(dst)
    assert torch.equal(sae.W_enc.detach(), sd["encoder.weight"].T)
    # a folder of other files is refused (one error line) and left as it was
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("x")
    assert main(["convert", str(tmp_path / "sae.pth"), str(other)]) == 2
    assert "--force" in capsys.readouterr().err and sorted(p.name for p in other.iterdir()) == ["todo.txt"]


def test_report(world_cache, tmp_path, capsys):
    from sae_bilingual.config import load_recipe
    from sae_bilingual.study.outdir import prepare_output_dir

    out = tmp_path / "s"
    prepare_output_dir(load_recipe(REPO / "recipes" / "smoke.yaml", {"output_dir": str(out)}))
    assert main(["report", str(out)]) == 0
    assert f"report: {out / 'report.html'}" in capsys.readouterr().out
    assert (out / "report.html").stat().st_size > 1000


def test_report_of_a_missing_folder_creates_nothing(tmp_path, capsys):
    """Before: `report NO_SUCH_DIR` created the folder and an empty report, rc 0."""
    missing = tmp_path / "no_such_dir"
    assert main(["report", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "does not exist" in err
    assert not missing.exists()


def test_report_of_a_folder_that_is_not_a_study(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8")
    assert main(["report", str(tmp_path / "photos")]) == 2
    assert "not a study folder" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == ["cat.jpg"]


@pytest.mark.parametrize("path", ["/no_such_dir/smoke.yaml", "no_such_dir/smoke", "smoke.yaml", "./smoke.yml"])
def test_recipe_path_typo_is_an_error(path, capsys, tmp_path, monkeypatch):
    """Before: a missing path ending in smoke.yaml silently ran the packaged smoke recipe."""
    monkeypatch.chdir(tmp_path)
    assert main(["study", path, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert path in err and "does not exist" in err


def test_bare_recipe_name_finds_the_embedded_recipe(world_cache, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["study", "smoke", "--dry-run"]) == 0
    assert "study 'smoke'" in capsys.readouterr().out


def test_set_into_a_list_from_the_command_line(world_cache, capsys):
    assert main(["study", "smoke", "--dry-run", "--set", "models.0.layers=1"]) == 0
    assert "layers=1" in capsys.readouterr().out


# ======== bad inputs (moved from test_bad_inputs.py): bad command lines (cli.py)


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

