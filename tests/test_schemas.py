"""study/schemas.py: features.parquet and the summary row are checked against one schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from sae_bilingual.analysis.features import analyse_features, summarise
from sae_bilingual.errors import DataError
from sae_bilingual.study.schemas import check_summary_row, read_features, write_features
from tests.test_analysis import hand_codes


def test_the_analysis_output_round_trips(tmp_path: Path):
    df = analyse_features(hand_codes(), 5)
    write_features(df, tmp_path / "features.parquet")
    back = read_features(tmp_path / "features.parquet")
    assert back.index.name == "feature" and list(back.columns) == list(df.columns)
    assert back["cls"].tolist() == df["cls"].tolist()


def test_a_missing_or_mistyped_column_is_named(tmp_path: Path):
    df = analyse_features(hand_codes(), 5)
    with pytest.raises(DataError, match="no column 'cls'"):
        write_features(df.drop(columns=["cls"]), tmp_path / "f.parquet")
    with pytest.raises(DataError, match="column 'dead' is .*string, expected bool"):
        write_features(df.assign(dead=df["dead"].astype(str)), tmp_path / "f.parquet")
    assert not (tmp_path / "f.parquet").exists()  # nothing written when the table is wrong


def test_a_damaged_file_is_a_data_error(tmp_path: Path):
    path = tmp_path / "features.parquet"
    write_features(analyse_features(hand_codes(), 5), path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="not a readable Parquet file.*rerun the study"):
        read_features(path)
    with pytest.raises(DataError, match="not found"):
        read_features(tmp_path / "absent.parquet")


def test_the_summary_row_needs_its_core_keys():
    df = analyse_features(hand_codes(), 5)
    row = {"model": "toy", "iteration": 600, "tokens": 1000, "layer": 3, "hook": "blocks.2.hook_resid_post",
           "d_sae": 5, "k": 2, **summarise(df)}
    check_summary_row(row, ["en", "ja"])
    with pytest.raises(DataError, match=r"lacks \['frac_fr'\]"):
        check_summary_row(row, ["en", "ja", "fr"])
    with pytest.raises(DataError, match="column 'iteration'"):
        check_summary_row(row | {"iteration": "six hundred"}, ["en", "ja"])
