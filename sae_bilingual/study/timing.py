"""Wall time per stage: one log line per stage, a split at the end, a table in the study.

Why: a study's time must be accountable stage by stage (world build, units, LR grid,
intervention, figures, report), and a unit's time likewise (model load, LM + SAE training,
evaluation activations, clusters, CE metrics, per-layer analysis), or the slow part hides in
an unlogged gap. :class:`StageTimer` measures; :func:`append_timings` keeps every run's split
in ``tables/timings.csv`` (the report shows it under run info).
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from sae_bilingual.io import atomic_write_text

log = logging.getLogger(__name__)
T = TypeVar("T")

TIMINGS_FILE = "timings.csv"
"""Under ``<study>/tables/``: columns run, started, stage, seconds (one row per stage and run)."""


class StageTimer:
    """Accumulates wall seconds per named stage, in first-use order."""

    def __init__(self, label: str, logger: logging.Logger | None = None) -> None:
        self.label = label
        self.log = logger or log
        self.seconds: dict[str, float] = {}
        self.started = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
        self._t0 = time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the ``with`` block as ``name`` (added to earlier time of that stage) and log it."""
        t = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t
            self.seconds[name] = self.seconds.get(name, 0.0) + dt
            self.log.info("%s: %s took %.1f s", self.label, name, dt)

    def call(self, name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` timed as stage ``name``."""
        with self.stage(name):
            return fn(*args, **kwargs)

    def elapsed(self) -> float:
        """Wall seconds since the timer was made (stages plus any untimed gaps)."""
        return time.perf_counter() - self._t0

    def split(self) -> str:
        """``"a 1.0 s (10%), b 9.0 s (90%); total 10.0 s"`` over the timed stages and the gaps."""
        total = self.elapsed()
        other = max(0.0, total - sum(self.seconds.values()))
        items = [*self.seconds.items(), *([("other", other)] if other >= 0.05 else [])]
        parts = [f"{k} {v:.1f} s ({100 * v / total:.0f}%)" if total > 0 else f"{k} {v:.1f} s" for k, v in items]
        return ", ".join(parts) + f"; total {total:.1f} s"

    def log_split(self) -> None:
        """One line with every stage's share of the time so far."""
        self.log.info("%s time split: %s", self.label, self.split())

    def frame(self) -> pd.DataFrame:
        """Columns stage, seconds: the timed stages, then 'other' (gaps) and 'total'."""
        total = self.elapsed()
        rows = [*self.seconds.items(), ("other", max(0.0, total - sum(self.seconds.values()))), ("total", total)]
        return pd.DataFrame({"stage": [r[0] for r in rows], "seconds": [round(r[1], 2) for r in rows]})


def append_timings(timer: StageTimer, path: Path) -> pd.DataFrame:
    """Add this run's split to ``path`` (a CSV of every run: run, started, stage, seconds).

    A run that was already appended (same ``started``) is replaced, so the split can be
    written before the report and again, complete, after it.
    """
    old = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["run", "started", "stage", "seconds"])
    mine = old.loc[old["started"] == timer.started]
    run = int(mine["run"].iloc[0]) if len(mine) else (int(old["run"].max()) + 1 if len(old) else 1)
    new = timer.frame()
    new.insert(0, "started", timer.started)
    new.insert(0, "run", run)
    df = pd.concat([old.loc[old["started"] != timer.started], new], ignore_index=True) if len(old) else new
    atomic_write_text(path, df.to_csv(index=False))
    return df


def last_run_split(path: Path) -> tuple[pd.DataFrame, str] | None:
    """(stage, seconds, share of the run) of the latest run in a timings CSV, and when it
    started; None when there is no such file or it is unreadable."""
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError):
        return None
    if df.empty or not {"run", "started", "stage", "seconds"} <= set(df.columns):
        return None
    last = df.loc[df["run"] == df["run"].max(), ["stage", "seconds"]].reset_index(drop=True)
    total = last.loc[last["stage"] == "total", "seconds"].sum()
    last["share"] = [f"{100 * s / total:.0f}%" if total > 0 else "" for s in last["seconds"]]
    return last, str(df.loc[df["run"] == df["run"].max(), "started"].iloc[0])
