"""The report's crosscoder section, and the crosscoders' entries in a SAELens release folder.

Reads what :mod:`sae_bilingual.study.crosscoder_stage` wrote (``crosscoders/<model>/L<layer>/``,
``figures/crosscoder_*.png``, ``tables/crosscoder_*_lineage.csv``). Kept apart from html.py and
release.py (each at its size limit) which call it with a line or two; html.py passes its own
figure and table helpers, so this module imports neither.
"""

from __future__ import annotations

import html
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from sae_bilingual.report.plotting import slug
from sae_bilingual.study.layout import tables_dir

__all__ = ["crosscoder_body", "crosscoder_controls_table", "crosscoder_release"]

CROSSCODER_FILES = ("cfg.json", "sae_weights.safetensors")


def _finished(study: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(folder, summary) of every finished crosscoder of a study (summary.json written last)."""
    out = []
    for s in sorted(Path(study).glob("crosscoders/*/L*/summary.json")):
        out.append((s.parent, json.loads(s.read_text(encoding="utf-8"))))
    return out


def crosscoder_body(study: Path, figure_html: Callable[[Path], str], table_html: Callable[..., str]) -> str:
    """HTML of the crosscoder section ("" when the study has none): per layer the emergence
    figure, FVU per slice beside the SAEs', the counts, and the lineage comparison table."""
    parts = []
    for folder, s in _finished(study):
        stem = f"crosscoder_{slug(s['model'])}_L{int(s['layer']):02d}"
        parts.append(f"<h3>{html.escape(str(s['model']))}, layer {int(s['layer'])}: crosscoder over "
                     f"{int(s['n_checkpoints'])} checkpoints, {int(s['d_sae'])} latents "
                     f"(the SAEs: {int(s['sae_total_latents'])} in all)</h3>")
        png = Path(study) / "figures" / f"{stem}.png"
        if png.exists():
            parts.append(figure_html(png))
        parts.append("<p>FVU of each checkpoint's slice, beside that checkpoint's own SAE:</p>"
                     + table_html(pd.DataFrame(s["slices"])))
        keys = [k for k in ("n_live", "n_mixed", "n_bilingual_concept", "n_mixed_bilingual_concept", "n_exclusive")
                if k in s]
        counts = {k: s[k] for k in keys} | {f"exclusive_{k}": v for k, v in (s.get("exclusive_kinds") or {}).items()}
        parts.append("<p>Latents (alive = decoder-norm share above the emergence threshold somewhere):</p>"
                     + table_html(pd.DataFrame([counts])))
        lin = tables_dir(study) / f"{stem}_lineage.csv"
        if lin.exists():
            df = pd.read_csv(lin)
            rel = df.groupby(["cls", "relation"]).size().unstack(fill_value=0).reset_index()
            parts.append("<p>Each live latent's emergence checkpoint against the lineage birth of its "
                         "best-matching final SAE feature (decoder cosine at the final checkpoint); counts by "
                         f"class, then the latents (full table: tables/{html.escape(lin.name)}):</p>"
                         + table_html(rel) + table_html(df, max_rows=200))
    return "\n".join(parts)


def crosscoder_release(study: Path, tmp: Path, release: str, repo_id: str) -> tuple[dict[str, Any], list[str]]:
    """Copy every finished crosscoder into the release folder ``tmp`` (``<model>/crosscoder/LXX/``)
    and return its pretrained_saes.yaml entries and the card's lines (empty when none).

    The crosscoder is the registered ``paper_crosscoder`` architecture: it loads with
    ``SAE.load_from_disk`` once sae_bilingual is imported (no stock SAELens form exists)."""
    doc: dict[str, Any] = {}
    lines: list[str] = []
    for folder, s in _finished(study):
        src = folder / "crosscoder"
        path = f"{s['model']}/crosscoder/L{int(s['layer']):02d}"
        (tmp / path).mkdir(parents=True, exist_ok=True)
        for name in CROSSCODER_FILES:
            shutil.copyfile(src / name, tmp / path / name)
        its = [x["iteration"] for x in s["slices"]]
        entry = doc.setdefault(f"{release}-{s['model']}-crosscoder", {"repo_id": repo_id, "model": s["model"],
                                                                      "conversion_func": None, "saes": []})
        entry["saes"].append({"id": f"L{int(s['layer']):02d}", "path": path, "l0": round(float(s["l0"]), 3),
                              "variance_explained": round(1 - float(s["fvu"]), 6), "architecture": "paper_crosscoder",
                              "checkpoint_iterations": its, "d_sae": int(s["d_sae"]),
                              "fvu_per_checkpoint": [round(float(x["fvu"]), 6) for x in s["slices"]]})
        if not lines:
            lines = ["", "## Crosscoders", "",
                     "One BatchTopK acausal crosscoder per layer below: a shared encoder over the concatenated "
                     "unit-normalised residuals of the listed checkpoints, one decoder slice per checkpoint. "
                     "Architecture `paper_crosscoder` (registered by sae-bilingual): "
                     "`import sae_bilingual; SAE.load_from_disk(path)`.", "",
                     "| release | id | path | checkpoints | d_sae | L0 | FVU per checkpoint |", "|---|---|---|---|---|---|---|"]
        lines.append(f"| {release}-{s['model']}-crosscoder | `L{int(s['layer']):02d}` | `{path}` | {its} | "
                     f"{int(s['d_sae'])} | {float(s['l0']):.1f} | "
                     + ", ".join(f"{float(x['fvu']):.3f}" for x in s["slices"]) + " |")
    return doc, lines


def crosscoder_controls_table(worlds: dict[str, Path]) -> pd.DataFrame:
    """One row per (world, model, layer) crosscoder: FVU per slice against the SAEs, Mixed and
    concept-bilingual latents (and the first checkpoint where a Mixed concept-bilingual latent
    is alive), exclusive latents by kind, and the crosscoder's time against its SAEs'.

    ``worlds``: label -> a finished study folder. The SAEs' time is the sum over the spanned
    units of their summary rows' ``seconds`` at that layer (their share of the LM pass included);
    the crosscoder's is its stage's ``seconds`` (the C LM passes included)."""
    rows = []
    for label, study in worlds.items():
        for folder, s in _finished(Path(study)):
            sae_s = sum(float(json.loads((Path(study) / "units" / s["model"] / f"iter_{sl['iteration']:07d}"
                                          / f"L{int(s['layer']):02d}" / "summary.json").read_text())["seconds"])
                        for sl in s["slices"])
            em = s.get("mixed_bilingual_emerged") or {}
            first = next((int(k) for k, v in em.items() if v > 0), None)
            ex = s.get("exclusive_kinds") or {}
            rows.append({
                "world": label, "layer": s["layer"], "C": s["n_checkpoints"], "n": s["d_sae"],
                "sae_latents": s["sae_total_latents"],
                "fvu_ratio_per_slice": " ".join(f"{x['ratio']:.2f}" for x in s["slices"]),
                "max_fvu_ratio": round(float(s["max_fvu_ratio"]), 3), "n_live": s["n_live"], "n_mixed": s["n_mixed"],
                "n_mixed_concept_bilingual": s.get("n_mixed_bilingual_concept"),
                "first_mixed_bilingual_iteration": first, "n_exclusive": s["n_exclusive"],
                "exclusive_real": ex.get("real"), "exclusive_artefact": ex.get("artefact"),
                "exclusive_unknown": ex.get("unknown"), "time_ratio": round(float(s["seconds"]) / sae_s, 2) if sae_s else None,
            })
    return pd.DataFrame(rows)
