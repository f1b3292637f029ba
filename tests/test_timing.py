"""Stage timing: the unit's stages add up to the summary's seconds; the study's split is logged,
kept per run in tables/timings.csv and shown in the report's run info."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest

from sae_bilingual.study.pipeline import UNIT_STAGES
from sae_bilingual.study.timing import StageTimer, append_timings, last_run_split

STUDY_STAGES = ["world", "plan", "LR grid", "units", "summary", "intervention", "lineage", "crosscoder", "figures",
                "neuronpedia", "report", "other", "total"]


def test_stage_timer_accumulates_logs_and_appends_runs(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sae_bilingual.study.timing")
    t = StageTimer("job")
    assert t.call("a", lambda x: x + 1, 1) == 2
    with t.stage("b"):
        pass
    with t.stage("a"):
        pass
    assert list(t.seconds) == ["a", "b"]
    assert [r.message for r in caplog.records].count("job: a took 0.0 s") == 2
    frame = t.frame()
    assert frame["stage"].tolist() == ["a", "b", "other", "total"]
    assert frame["seconds"].iloc[:3].sum() == pytest.approx(frame["seconds"].iloc[3], abs=0.02)
    path = tmp_path / "timings.csv"
    append_timings(t, path)
    append_timings(t, path)  # the same run again: replaced, not duplicated
    t2 = StageTimer("job")
    t2.started = "later"
    with t2.stage("c"):
        pass
    df = append_timings(t2, path)
    assert df.groupby("run").size().tolist() == [4, 3]
    split, started = last_run_split(path)
    assert started == "later" and split["stage"].tolist() == ["c", "other", "total"]
    t.log_split()
    assert "job time split: a " in caplog.records[-1].message and "; total" in caplog.records[-1].message


@pytest.mark.slow
def test_smoke_study_times_every_stage(smoke_study):
    out, report = smoke_study
    summary = pd.read_csv(out / "tables" / "summary.csv")
    stage_cols = [f"seconds_{c}" for c in UNIT_STAGES.values()] + ["seconds_analysis"]
    assert set(stage_cols) <= set(summary.columns)
    # seconds = the unit's shared stages split over its layers + the layer's own analysis
    assert (summary[stage_cols].sum(axis=1) - summary["seconds"]).abs().max() < 0.05
    manifest = json.loads((out / "manifest.json").read_text())
    for it, rows in summary.groupby("iteration"):
        unit = manifest["units"][f"toy/iter_{it:07d}"]
        assert rows["seconds"].sum() <= unit["seconds"] + 0.05  # the whole unit, nothing counted twice
    timings = pd.read_csv(out / "tables" / "timings.csv")
    first = timings[timings["run"] == 1]
    assert first["stage"].tolist() == STUDY_STAGES
    total = first.set_index("stage")["seconds"]
    assert total.drop("total").sum() == pytest.approx(total["total"], abs=0.1)
    html = (out / "report.html").read_text(encoding="utf-8")
    run_info = html.split('<section id="run">')[1].split("</section>")[0]
    assert "Time per stage of the latest run" in run_info and "intervention" in run_info
