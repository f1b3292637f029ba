"""Second adversarial probe (issue 30): recipe and command-line inputs that were taken silently
or ended in a traceback now give one error line naming the problem and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from sae_bilingual.cli import main
from sae_bilingual.config import load_recipe
from sae_bilingual.config_loading import load_yaml
from sae_bilingual.errors import ConfigError


def one_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI expecting rc 2 and one ``error:`` line; return that line."""
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if l.startswith("error: ")]
    assert len(lines) == 1, err
    assert err.rstrip("\n").splitlines()[-1] == lines[0], err  # the message is one line, and last
    return lines[0]


def test_repeated_yaml_section_is_refused_naming_both_lines(tmp_path, capsys) -> None:
    recipe = tmp_path / "dup.yaml"
    recipe.write_text("name: dup\nsae:\n  batch_size: 128\n  warmup: 10\nsae:\n  k: 4\n")
    line = one_error(["study", str(recipe), "--dry-run"], capsys)
    assert "'sae' appears twice" in line and "line 2" in line and "line 5" in line


def test_repeated_key_inside_a_section_is_refused(tmp_path) -> None:
    recipe = tmp_path / "dup.yaml"
    recipe.write_text("sae:\n  k: 8\n  batch_size: 128\n  k: 4\n")
    with pytest.raises(ConfigError, match=r"'k' appears twice \(line 2 and line 4\)"):
        load_recipe(recipe)


def test_yaml_merge_keys_may_be_overridden() -> None:
    assert load_yaml("a: &a {x: 1, y: 3}\nb:\n  <<: *a\n  x: 2\n") == {"a": {"x": 1, "y": 3}, "b": {"x": 2, "y": 3}}


def test_set_with_broken_yaml_is_one_line(capsys) -> None:
    line = one_error(["study", "--set", "sae.k=[1,", "--dry-run"], capsys)
    assert line.startswith("error: --set 'sae.k=[1,': not valid YAML (") and "line 1, column 4" in line


def test_set_with_a_python_tag_says_nothing_was_executed(tmp_path: Path, capsys) -> None:
    canary = tmp_path / "ran"
    line = one_error(["study", "--set", f'sae.k=!!python/object/apply:os.system ["touch {canary}"]', "--dry-run"],
                     capsys)
    assert "the tag !!python/object/apply:os.system at line 1, column 1 is refused" in line
    assert "nothing was executed" in line
    assert not canary.exists()


def test_a_recipe_of_broken_yaml_is_one_line(tmp_path: Path, capsys) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("sae:\n  k: [1,\n")
    line = one_error(["study", str(recipe), "--dry-run"], capsys)
    assert line.startswith(f"error: recipe {recipe}: not valid YAML (while parsing a flow node")
