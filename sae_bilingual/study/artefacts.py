"""A layer's summary.json: written last, with the sizes and checksums of its files.

Why: ``summary.json`` (written last) marks a layer finished, but a file damaged on disk
afterwards (a bad block, a partial copy, a stray edit) used to be trusted on resume and
made every later run crash in lineage. The summary now lists every artefact of the layer
with its size and SHA-256; a resume redoes a layer whose files no longer match.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from sae_bilingual.io import atomic_write_json, is_temp_name

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
"""A layer's summary row, written last: its presence marks the layer finished."""
ARTEFACTS_KEY = "artefacts"
"""Key of the {relative path: {size, sha256}} record in summary.json."""
_CHUNK = 1 << 20


def read_json(path: Path) -> Any | None:
    """Parsed JSON, or None when the file is missing or unreadable (a crash leftover)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


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
    return bad


def write_unit_summary(ldir: Path, row: dict[str, Any]) -> None:
    """The last artefact of a layer (``ldir/summary.json``): its presence marks the layer
    finished. It records the size and SHA-256 of the layer's other files, checked when the
    study resumes."""
    atomic_write_json(Path(ldir) / SUMMARY_FILE, {**row, ARTEFACTS_KEY: fingerprint(Path(ldir))})


def layer_finished(ldir: Path) -> bool:
    """The layer's summary.json parses and its artefacts still match their checksums."""
    row = read_json(ldir / SUMMARY_FILE)
    if not isinstance(row, dict):
        return False
    bad = mismatches(ldir, row.get(ARTEFACTS_KEY))
    if bad:
        log.warning("%s: %s changed on disk since the layer finished: redoing it", ldir, ", ".join(bad))
    return not bad
