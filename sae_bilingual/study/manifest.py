"""The study manifest: which work units are done, written atomically, rebuildable.

The manifest is a cache of what the artefacts on disk already say: a layer is finished
exactly when its ``summary.json`` (written last, atomically) exists and parses. So a
corrupted or missing manifest is rebuilt from the unit directories, and a unit killed
half-way is simply redone.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sae_bilingual.io import atomic_write_json
from sae_bilingual.study.artefacts import SUMMARY_FILE, read_json
from sae_bilingual.study.unit import Unit, layer_dirs

log = logging.getLogger(__name__)

@dataclass
class Manifest:
    """Unit status of one study directory."""

    path: Path
    recipe_hash: str
    units: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def open(cls, out_dir: Path, recipe_hash: str) -> Manifest:
        """Load ``manifest.json``; rebuild it from the artefacts when absent or corrupt."""
        path = out_dir / "manifest.json"
        data = read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("units"), dict):
            if path.exists():
                log.warning("manifest %s is unreadable: rebuilding it from the unit directories", path)
            m = cls(path, recipe_hash)
            m.rebuild(out_dir)
            m.save()
            return m
        return cls(path, data.get("recipe_hash", recipe_hash), data["units"])

    def rebuild(self, out_dir: Path) -> None:
        """Recover unit status from the ``summary.json`` files on disk."""
        self.units = {}
        for d in layer_dirs(out_dir, having=(SUMMARY_FILE,)):
            row = read_json(d.path / SUMMARY_FILE)
            if not isinstance(row, dict):
                continue
            entry = self.units.setdefault(d.unit_id, {"status": "partial", "layers": {}})
            entry["layers"][str(row.get("layer", d.layer))] = "done"

    def layer_done(self, unit_id: str, layer: int) -> bool:
        return self.units.get(unit_id, {}).get("layers", {}).get(str(layer)) == "done"

    def mark_layer(self, unit_id: str, layer: int) -> None:
        entry = self.units.setdefault(unit_id, {"status": "running", "layers": {}})
        entry["layers"][str(layer)] = "done"
        self.save()

    def mark_finished(self, unit: Unit, missing: list[int]) -> None:
        """Mark the layers of ``unit`` finished on disk (not in ``missing``) that the manifest
        does not list yet (finished before a kill the driver did not see)."""
        for layer in unit.layers:
            if layer not in missing and not self.layer_done(unit.id, layer):
                self.mark_layer(unit.id, layer)

    def mark_unit(self, unit_id: str, status: str, **info: Any) -> None:
        entry = self.units.setdefault(unit_id, {"layers": {}})
        entry["status"] = status
        entry["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        entry.update(info)
        self.save()

    def save(self) -> None:
        atomic_write_json(self.path, {"recipe_hash": self.recipe_hash, "units": self.units})
