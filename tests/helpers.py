"""Shared test helpers: locating the read-only ../shared data (skipping when it is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_path(*parts: str) -> Path:
    """Path under the read-only shared folder; skips the test when it is absent."""
    root = Path(os.environ.get("SAE_BILINGUAL_SHARED", REPO.parent / "shared"))
    p = root.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data {p} is absent (set SAE_BILINGUAL_SHARED to the shared/ folder)")
    return p
