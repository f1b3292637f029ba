"""A layer's summary.json: written last, with the sizes and checksums of its files.

Why: ``summary.json`` (written last) marks a layer finished, but a file damaged on disk
afterwards (a bad block, a partial copy, a stray edit) used to be trusted on resume and
made every later run crash in lineage. The summary now lists every artefact of the layer
with its size and SHA-256; a resume redoes a layer whose files no longer match.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from sae_bilingual.io import atomic_write_json, atomic_write_text, is_temp_name, save_parquet
from sae_bilingual.study.manifest import SUMMARY_FILE, read_json

log = logging.getLogger(__name__)

ARTEFACTS_KEY = "artefacts"
"""Key of the {relative path: {size, sha256}} record in summary.json."""
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(ldir: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {size, sha256}} of every file under a layer folder but summary.json."""
    out: dict[str, dict[str, Any]] = {}
    for p in sorted(ldir.rglob("*")):
        rel = p.relative_to(ldir).as_posix()
        if not p.is_file() or rel == SUMMARY_FILE or any(is_temp_name(x) for x in p.relative_to(ldir).parts):
            continue
        out[rel] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    return out


def mismatches(ldir: Path, recorded: Any) -> list[str]:
    """The recorded artefacts that are missing or differ (size first, then checksum).

    A summary without a record (written before checksums existed) has nothing to check.
    """
    if not isinstance(recorded, dict):
        return []
    bad = []
    for rel, rec in recorded.items():
        p = ldir / rel
        try:
            if p.stat().st_size != rec.get("size") or sha256_file(p) != rec.get("sha256"):
                bad.append(rel)
        except (OSError, AttributeError):
            bad.append(rel)
    if bad:
        log.warning("%s: %s changed on disk since the layer finished: redoing it", ldir, ", ".join(bad))
    return bad


def write_unit_summary(path: Path, row: dict[str, Any]) -> None:
    """The last artefact of a layer: its presence marks the layer finished. It records the
    size and SHA-256 of the layer's other files, checked when the study resumes."""
    atomic_write_json(path, {**row, ARTEFACTS_KEY: fingerprint(Path(path).parent)})


def layer_finished(unit: Any, out: Path, layer: int) -> bool:
    """The layer's summary.json parses and its artefacts still match their checksums."""
    ldir = unit.layer_dir(out, layer)
    row = read_json(ldir / SUMMARY_FILE)
    return isinstance(row, dict) and not mismatches(ldir, row.get(ARTEFACTS_KEY))


def collect_summary(out: Path) -> Any:
    """Stack every layer's summary.json into tables/summary.{parquet,csv} (a DataFrame)."""
    import pandas as pd

    rows = [read_json(p) for p in sorted((out / "units").glob(f"*/*/L*/{SUMMARY_FILE}"))]
    df = pd.DataFrame([{k: v for k, v in r.items() if k != ARTEFACTS_KEY} for r in rows if isinstance(r, dict)])
    if len(df):
        df = df.sort_values(["model", "iteration", "layer"]).reset_index(drop=True)
    save_parquet(df, out / "tables" / "summary.parquet")
    atomic_write_text(out / "tables" / "summary.csv", df.to_csv(index=False))
    return df
