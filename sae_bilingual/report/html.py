"""Self-contained HTML report of a study: recipe, run info, figures, tables, feature browser.

``write_report(study_dir)`` writes ``<study_dir>/report.html``, a single file that opens
from disk with no network: figures are base64 PNG data URIs, CSS and JS are inline, the
feature browser's data is embedded as JSON (``<script type="application/json">``, with
``<``, ``>`` and ``&`` escaped so no token can close the script element). Every piece of
text from the study (recipe, manifest, tokens) is escaped; the browser script inserts
data with ``textContent`` only.

The page's size is bounded: at most ``max_saes`` SAEs get a feature table, each with at
most ``max_features`` features (those that have stored examples first) and
``max_examples`` examples per feature; the page says when something was left out.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import logging
import re
from importlib import resources
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd

from sae_bilingual.study.layout import RECIPE_FILE, SUMMARY_TABLE, WORLD_META, tables_dir
from sae_bilingual import __version__
from sae_bilingual.study.controls import controls_table, world_label
from sae_bilingual.errors import DataError
from sae_bilingual.io import atomic_write_text
from sae_bilingual.study.manifest import read_json
from sae_bilingual.report.crosscoder_section import crosscoder_body
from sae_bilingual.report.browser import NOSPACE_LANGUAGES, _esc, _json_default, browser, discover_units
from sae_bilingual.report.figures import FIGURE_CAPTIONS, make_all_figures
from sae_bilingual.study.timing import TIMINGS_FILE, last_run_split
from sae_bilingual.study.unit import layer_path

log = logging.getLogger(__name__)

__all__ = ["write_report", "discover_units", "NOSPACE_LANGUAGES"]

_FIG_ORDER = ("lang_dist", "heatmaps", "span", "sizes", "lr_grid", "intervention")


def _template(name: str) -> str:
    return (resources.files("sae_bilingual") / "templates" / name).read_text(encoding="utf-8")


def _table_html(df: pd.DataFrame, max_rows: int = 1000, index: bool = False) -> str:
    """DataFrame → escaped HTML table (floats to 4 significant digits), capped at max_rows."""
    note = ""
    if len(df) > max_rows:
        note = f'<p class="note">First {max_rows} of {len(df)} rows shown; the full table is in tables/.</p>'
        df = df.head(max_rows)
    df = df.copy()
    for c in df.columns:
        if df[c].dtype == object:
            df[c] = df[c].map(lambda v: json.dumps(v, ensure_ascii=False, default=_json_default)
                              if isinstance(v, (list, dict, np.ndarray)) else v)
    body = df.to_html(index=index, escape=True, border=0, classes="data", na_rep="",
                      float_format=lambda v: f"{v:.4g}")
    return f'{note}<div class="scroll">{body}</div>'


# --------------------------------------------------------------------------- sections
def _section(sec_id: str, title: str, inner: str) -> str:
    return f'<section id="{_esc(sec_id)}"><h2>{_esc(title)}</h2>\n{inner}\n</section>\n'


def _recipe_section(study: Path) -> str:
    p = study / RECIPE_FILE
    if not p.exists():
        return _section("recipe", "Recipe", '<p class="meta">recipe.yaml not found.</p>')
    return _section("recipe", "Recipe", f"<pre>{_esc(p.read_text(encoding='utf-8', errors='replace'))}</pre>")


def _manifest_section(study: Path) -> str:
    p = study / "manifest.json"
    if not p.exists():
        return _section("run", "Run info", '<p class="meta">manifest.json not found.</p>')
    try:
        man = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        return _section("run", "Run info", f'<p class="note">manifest.json is not valid JSON ({_esc(e)}).</p>')
    parts = []
    units = man.get("units") if isinstance(man, dict) else None
    if isinstance(man, dict):
        scalars = {k: v for k, v in man.items() if not isinstance(v, (list, dict))}
        if scalars:
            parts.append(_table_html(pd.DataFrame({"key": list(scalars), "value": [str(v) for v in scalars.values()]})))
    if isinstance(units, dict):
        units = [{"unit": k, **(v if isinstance(v, dict) else {"value": v})} for k, v in units.items()]
    if isinstance(units, list) and units and all(isinstance(u, dict) for u in units):
        udf = pd.DataFrame(units)
        lines = [f"{len(udf)} units"]
        if "status" in udf:
            lines.append(", ".join(f"{_esc(k)}: {int(v)}" for k, v in udf["status"].value_counts().items()))
        for col in [c for c in udf.columns if "second" in str(c).lower()]:
            tot = cast(pd.Series, pd.to_numeric(udf[col], errors="coerce")).sum()  # a Series in, a Series out
            lines.append(f"total {_esc(col)}: {tot:.1f} s ({tot / 3600:.2f} h)")
        parts.append(f"<p>{'; '.join(lines)}</p>")
        parts.append(f"<details><summary>units</summary>{_table_html(udf, max_rows=2000)}</details>")
    split = last_run_split(tables_dir(study) / TIMINGS_FILE)  # the study's time per stage (latest run)
    if split is not None:
        parts.insert(0, f"<p>Time per stage of the latest run, started {_esc(split[1])} (every run, and the time "
                        f"spent writing this page: tables/{TIMINGS_FILE}):</p>{_table_html(split[0])}")
    raw = json.dumps(man, indent=1, ensure_ascii=False, default=str)
    if len(raw) > 200_000:
        raw = raw[:200_000] + "\n… (truncated)"
    parts.append(f"<details><summary>manifest.json</summary><pre>{_esc(raw)}</pre></details>")
    return _section("run", "Run info", "\n".join(parts))


def _figure_sort_key(name: str) -> tuple[int, str]:
    for i, pre in enumerate(_FIG_ORDER):
        if name.startswith(pre):
            return (i, name)
    return (len(_FIG_ORDER), name)


def _caption(name: str) -> str:
    for pre, cap in FIGURE_CAPTIONS.items():
        if name.startswith(pre):
            return cap
    return ""


def _figure_html(png: Path) -> str:
    """One embedded figure (base64 PNG) with its caption and the SVG's name."""
    b64 = base64.b64encode(png.read_bytes()).decode("ascii")
    return (f'<figure id="fig-{_esc(png.stem)}"><img alt="{_esc(png.stem)}" src="data:image/png;base64,{b64}">'
            f"<figcaption><b>{_esc(png.stem)}</b>. {_esc(_caption(png.stem))} "
            f"(vector version: figures/{_esc(png.stem)}.svg)</figcaption></figure>")


def _figures_section(study: Path) -> tuple[str, int]:
    pngs = sorted((study / "figures").glob("*.png"), key=lambda p: _figure_sort_key(p.stem))
    pngs = [p for p in pngs if not p.name.startswith((".", "lineage_", "world_", "crosscoder_"))]
    if not pngs:
        return _section("figures", "Figures", '<p class="meta">No figures (no summary table yet).</p>'), 0
    return _section("figures", "Figures", "\n".join(_figure_html(p) for p in pngs)), len(pngs)


def _summary_section(study: Path) -> str:
    p = tables_dir(study) / SUMMARY_TABLE
    if not p.exists():
        return _section("summary", "Summary tables", '<p class="meta">tables/summary.parquet not found.</p>')
    df = pd.read_parquet(p)
    if df.empty:
        return _section("summary", "Summary tables", '<p class="meta">The summary table is empty.</p>')
    sort = [c for c in ("model", "layer", "tokens") if c in df.columns]
    df = df.sort_values(sort) if sort else df
    parts = []
    models = df["model"].astype(str).unique() if "model" in df.columns else ["all"]
    for i, m in enumerate(models):
        sub: pd.DataFrame = df.loc[df["model"].astype(str) == m] if "model" in df.columns else df
        parts.append(f"<details{' open' if i == 0 else ''}><summary>{_esc(m)} ({len(sub)} rows)</summary>"
                     f"{_table_html(sub)}</details>")
    return _section("summary", "Summary tables", "\n".join(parts))


def _csv_section(study: Path, name: str, sec_id: str, title: str) -> str:
    p = tables_dir(study) / name
    if not p.exists():
        return ""
    df = pd.read_csv(p)
    return _section(sec_id, title, _table_html(df))


def _controls_section(study: Path) -> str:
    """The study beside its control worlds at the last checkpoint (recipe ``controls``)."""
    table = controls_table(study)
    if table.empty:
        return ""
    note = ("<p>Positive control (codeswitch): content words switch language, so bilingual concepts certainly "
            "exist and Mixed features should fire on both forms of their top concept (gt_mixed_precision high; "
            "_pure also asks that concept to carry most of the feature's activation). "
            "Negative control (disjoint): no concept occurs in two languages, so gt_mixed_precision must be "
            "0 and its frac_mixed is the analysis's false-positive floor.</p>")
    return _section("controls", "Controls", note + _table_html(table))


def _world_section(study: Path) -> str:
    """The toy world the study ran on: build wall time, sizes, config and its loss curve."""
    meta = read_json(tables_dir(study) / WORLD_META)
    if not isinstance(meta, dict):
        return ""
    facts = {
        "world": world_label(meta.get("config", {})),
        "build wall time": f"{float(meta.get('build_seconds', float('nan'))):.1f} s "
                           f"(corpus {float(meta.get('corpus_seconds', float('nan'))):.1f} s, "
                           f"pre-training {float(meta.get('pretrain_seconds', float('nan'))):.1f} s)",
        **{k: meta[k] for k in ("n_params", "vocab_size", "n_concepts", "tokens_per_iteration", "key") if k in meta},
    }
    parts = [_table_html(pd.DataFrame({"": list(facts), "value": [str(v) for v in facts.values()]}))]
    png = study / "figures" / "world_loss.png"
    if png.exists():
        parts.append(_figure_html(png))
    ck = tables_dir(study) / "world_checkpoints.csv"
    if ck.exists():
        parts.append("<p>Held-out loss of each saved checkpoint:</p>" + _table_html(pd.read_csv(ck)))
    if isinstance(meta.get("config"), dict):
        cfg = json.dumps(meta["config"], indent=1, ensure_ascii=False)
        parts.append(f"<details><summary>world config</summary><pre>{_esc(cfg)}</pre></details>")
    return _section("world", "Toy world", "\n".join(parts))


_LINEAGE_RE = re.compile(r"^lineage_(.+)_L(\d+)\.csv$")


def _lineage_section(study: Path, max_features: int = 40) -> str:
    """Per (model, layer) with a tables/lineage_*.csv: the flow figure, the origin counts
    of the final features and an ancestry table (one column per earlier checkpoint) for the
    final features that have stored examples (those shown in the feature browser)."""
    tabs = sorted(p for p in tables_dir(study).glob("lineage_*.csv") if _LINEAGE_RE.match(p.name))
    if not tabs:
        return ""
    parts = []
    for p in tabs:
        m = _LINEAGE_RE.match(p.name)
        assert m is not None  # tabs holds only names the pattern matches
        model, layer = m.group(1), int(m.group(2))
        parts.append(f"<h3>{_esc(model)}, layer {layer}</h3>")
        png = study / "figures" / f"{p.stem}.png"
        if png.exists():
            parts.append(_figure_html(png))
        sj = tables_dir(study) / f"{p.stem}_summary.json"
        if sj.exists():
            try:
                summ = json.loads(sj.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                summ = {}
            org = summ.get("origins_final") or {}
            if org:
                odf = pd.DataFrame(org).T.fillna(0).astype(int)
                odf.index.name = "final class"
                parts.append("<p>Origin of the final features from the previous checkpoint "
                             f"(stable ancestors: Jaccard &ge; {_esc(summ.get('threshold', ''))}):</p>")
                parts.append(_table_html(odf.reset_index()))
            prec = {k: v for k, v in summ.items() if k.startswith(("precision_", "chance_"))}
            if prec:
                parts.append("<p>Lineage edges sharing the dominant ground-truth concept: "
                             + ", ".join(f"{_esc(k)} {float(v):.3f}" for k, v in sorted(prec.items())) + "</p>")
        df = pd.read_csv(p)
        if df.empty or "feature" not in df.columns:
            continue
        final_iter = summ.get("final_iteration") if sj.exists() else None
        unit = None
        if final_iter is not None:
            unit = layer_path(study, model, int(final_iter), layer)
        feats: list[int] = []
        if unit is not None and (unit / "examples.json").exists():
            try:
                feats = [int(f) for f in json.loads((unit / "examples.json").read_text(encoding="utf-8"))]
            except (json.JSONDecodeError, ValueError):
                feats = []
        if not feats:
            feats = df.loc[df["cls"] == "mixed", "feature"].drop_duplicates().head(max_features).tolist()
        sub = df[df["feature"].isin(feats[:max_features])].copy()
        if sub.empty:
            continue
        sub["cell"] = [f"{int(a)} ({c}, J={j:.2f})" if a >= 0 else "—"
                       for a, c, j in zip(sub["ancestor"], sub["ancestor_cls"].fillna(""), sub["jaccard"])]
        wide = sub.pivot_table(index="feature", columns="iteration", values="cell", aggfunc="first")
        wide.columns = [f"iter {c}" for c in wide.columns]
        first = sub.drop_duplicates("feature").set_index("feature")
        keep = [c for c in ("cls", "origin", "ancestor_langs") if c in first.columns]
        wide = first[keep].join(wide).reset_index()
        parts.append("<p>Best ancestor (feature, class, Jaccard) of each final feature with stored "
                     "examples, at every earlier checkpoint; origin is from the previous checkpoint "
                     f"(full table: tables/{_esc(p.name)}).</p>")
        parts.append(_table_html(wide))
    return _section("lineage", "Lineage", "\n".join(parts))


# --------------------------------------------------------------------------- entry point
def write_report(study_dir: str | Path, *, make_figures: bool = True, max_saes: int = 12,
                 max_features: int = 200, max_examples: int = 5) -> Path:
    """Write ``<study_dir>/report.html`` (self-contained) and return its path.

    ``make_figures`` redraws the figures first (so the page matches the tables); otherwise
    the PNGs already in ``figures/`` are embedded.
    """
    study = Path(study_dir)
    if not study.is_dir():
        raise DataError(f"study directory {study} does not exist; pass the study's output_dir.")
    if make_figures:
        make_all_figures(study)
    figs, n_figs = _figures_section(study)
    cc = crosscoder_body(study, _figure_html, _table_html)  # "" without crosscoders
    sections = [
        ("recipe", "Recipe", _recipe_section(study)),
        ("run", "Run info", _manifest_section(study)),
        ("world", "Toy world", _world_section(study)),
        ("figures", f"Figures ({n_figs})", figs),
        ("summary", "Summary tables", _summary_section(study)),
        ("controls", "Controls", _controls_section(study)),
        ("lr-grid", "LR grid", _csv_section(study, "lr_grid.csv", "lr-grid", "LR grid")),
        ("intervention", "Intervention", _csv_section(study, "intervention.csv", "intervention", "Intervention")),
        ("lineage", "Lineage", _lineage_section(study)),
        ("crosscoder", "Crosscoder", _section("crosscoder", "Crosscoder", cc) if cc else ""),
    ]
    sections = [s for s in sections if s[2]]
    nav = " ".join(f'<a href="#{_esc(i)}">{_esc(t)}</a>' for i, t, _ in sections)
    nav += ' <a href="#browser">Feature browser</a>'
    note, data = browser(study, max_saes, max_features, max_examples)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    fill = {
        "title": _esc(f"sae-bilingual study: {study.resolve().name}"),
        "meta": _esc(f"{study.resolve()} · generated {now} · sae-bilingual {__version__}"),
        "nav": nav,
        "body": "".join(s[2] for s in sections),
        "browser_note": note,
        "browser_data": data,
        "script": _template("report.js"),
    }
    page = re.sub(r"\{\{(\w+)\}\}", lambda m: fill[m.group(1)], _template("report.html"))
    out = atomic_write_text(study / "report.html", page)
    log.info("wrote %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return out
