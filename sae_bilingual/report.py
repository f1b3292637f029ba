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
import html
import json
import logging
import re
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sae_bilingual.controls import controls_table, world_label
from sae_bilingual.errors import DataError
from sae_bilingual.io import atomic_write_text
from sae_bilingual.manifest import read_json

log = logging.getLogger(__name__)

__all__ = ["write_report", "discover_units", "NOSPACE_LANGUAGES"]

#: Languages whose tokens are joined without spaces when an example is displayed.
NOSPACE_LANGUAGES = ("ja", "zh", "th", "ko_nospace")

_FIG_ORDER = ("lang_dist", "heatmaps", "span", "sizes", "lr_grid", "intervention")
_UNIT_RE = re.compile(r"^iter_(\d+)$")
_LAYER_RE = re.compile(r"^L(\d+)$")


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _json_script(obj: Any, element_id: str) -> str:
    """Embed ``obj`` as JSON in a script element that no string inside can break out of."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_json_default)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f'<script type="application/json" id="{_esc(element_id)}">{text}</script>\n'


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _template(name: str) -> str:
    return resources.files("sae_bilingual").joinpath("templates", name).read_text(encoding="utf-8")


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
    p = study / "recipe.yaml"
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
            tot = pd.to_numeric(udf[col], errors="coerce").sum()
            lines.append(f"total {_esc(col)}: {tot:.1f} s ({tot / 3600:.2f} h)")
        parts.append(f"<p>{'; '.join(lines)}</p>")
        parts.append(f"<details><summary>units</summary>{_table_html(udf, max_rows=2000)}</details>")
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
    from sae_bilingual.figures import FIGURE_CAPTIONS

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
    pngs = [p for p in pngs if not p.name.startswith((".", "lineage_", "world_"))]
    if not pngs:
        return _section("figures", "Figures", '<p class="meta">No figures (no summary table yet).</p>'), 0
    return _section("figures", "Figures", "\n".join(_figure_html(p) for p in pngs)), len(pngs)


def _summary_section(study: Path) -> str:
    p = study / "tables" / "summary.parquet"
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
        sub = df[df["model"].astype(str) == m] if "model" in df.columns else df
        parts.append(f"<details{' open' if i == 0 else ''}><summary>{_esc(m)} ({len(sub)} rows)</summary>"
                     f"{_table_html(sub)}</details>")
    return _section("summary", "Summary tables", "\n".join(parts))


def _csv_section(study: Path, name: str, sec_id: str, title: str) -> str:
    p = study / "tables" / name
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
            "exist and Mixed features should fire on both forms of one concept (gt_mixed_precision high). "
            "Negative control (disjoint): no concept occurs in two languages, so gt_mixed_precision must be "
            "0 and its frac_mixed is the analysis's false-positive floor.</p>")
    return _section("controls", "Controls", note + _table_html(table))


def _world_section(study: Path) -> str:
    """The toy world the study ran on: build wall time, sizes, config and its loss curve."""
    meta = read_json(study / "tables" / "world.json")
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
    ck = study / "tables" / "world_checkpoints.csv"
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
    tabs = sorted(p for p in (study / "tables").glob("lineage_*.csv") if _LINEAGE_RE.match(p.name))
    if not tabs:
        return ""
    parts = []
    for p in tabs:
        m = _LINEAGE_RE.match(p.name)
        model, layer = m.group(1), int(m.group(2))
        parts.append(f"<h3>{_esc(model)}, layer {layer}</h3>")
        png = study / "figures" / f"{p.stem}.png"
        if png.exists():
            parts.append(_figure_html(png))
        sj = study / "tables" / f"{p.stem}_summary.json"
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
            unit = study / "units" / model / f"iter_{int(final_iter):07d}" / f"L{layer:02d}"
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


# --------------------------------------------------------------------------- feature browser
def discover_units(study_dir: str | Path) -> list[dict[str, Any]]:
    """SAE units with a features.parquet: [{model, iteration, layer, path}], sorted."""
    out = []
    root = Path(study_dir) / "units"
    for fp in root.glob("*/*/*/features.parquet") if root.exists() else []:
        unit = fp.parent
        mi, ml = _UNIT_RE.match(unit.parent.name), _LAYER_RE.match(unit.name)
        if not (mi and ml):
            continue
        out.append({"model": unit.parent.parent.name, "iteration": int(mi.group(1)),
                    "layer": int(ml.group(1)), "path": unit})
    return sorted(out, key=lambda u: (u["model"], u["iteration"], u["layer"]))


def _pick_units(units: list[dict[str, Any]], max_saes: int) -> list[dict[str, Any]]:
    """Keep at most max_saes units, preferring each model's final checkpoint and middle layers."""
    if len(units) <= max_saes:
        return units
    final = {}
    layers: dict[str, list[int]] = {}
    for u in units:
        final[u["model"]] = max(final.get(u["model"], -1), u["iteration"])
        layers.setdefault(u["model"], []).append(u["layer"])
    mid = {m: sorted(v)[len(v) // 2] for m, v in layers.items()}

    def score(u: dict[str, Any]) -> tuple:
        return (u["iteration"] != final[u["model"]], abs(u["layer"] - mid[u["model"]]), u["model"], u["iteration"])

    keep = sorted(units, key=score)[:max_saes]
    return sorted(keep, key=lambda u: (u["model"], u["iteration"], u["layer"]))


def _top_tokens_from_examples(exs: list[dict[str, Any]], k: int = 5) -> str:
    """Most frequent tokens at positions above 0.7 x the feature's max over its examples."""
    acts = [np.asarray(e.get("acts", []), dtype=float) for e in exs]
    m = max((a.max() for a in acts if a.size), default=0.0)
    if m <= 0:
        return ""
    counts: dict[str, int] = {}
    for e, a in zip(exs, acts):
        toks = e.get("tokens", [])
        for j in np.flatnonzero(a > 0.7 * m):
            if j < len(toks):
                counts[toks[j]] = counts.get(toks[j], 0) + 1
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    return " | ".join(t.replace("\n", "\u21b5") for t, _ in top)


def _browser_data(unit: dict[str, Any], max_features: int, max_examples: int) -> tuple[dict[str, Any], str]:
    """Per-SAE payload for the browser, plus a one-line description."""
    feats = pd.read_parquet(unit["path"] / "features.parquet")
    ex_path = unit["path"] / "examples.json"
    examples: dict[str, list] = {}
    if ex_path.exists():
        try:
            examples = json.loads(ex_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{ex_path} is not valid JSON ({e}); rerun the analysis step for this unit.") from e
    langs = [c[2:] for c in feats.columns if c.startswith("p_")]
    counts = feats["cls"].value_counts().to_dict() if "cls" in feats.columns else {}
    n_total = len(feats)
    label = {str(i): i for i in feats.index}
    with_ex = [f for f in examples if f in label]
    order = "n_fired" if "n_fired" in feats.columns else None
    live = feats[~feats["dead"].astype(bool)] if "dead" in feats.columns else feats
    if with_ex:
        chosen = feats.loc[[label[f] for f in with_ex]]
    else:
        chosen = live
    if order:
        chosen = chosen.sort_values(order, ascending=False)
    chosen = chosen.head(max_features)
    columns = ["feature", "class"] + [f"p({lang})" for lang in langs] + ["R", "span", "max act", "n_fired", "top tokens"]
    rows = []
    max_act = {}
    ex_out = {}
    for fid, r in chosen.iterrows():
        key = str(fid)
        exs = examples.get(key, [])[:max_examples]
        if "top_tokens" in chosen.columns and r["top_tokens"] is not None and len(r["top_tokens"]):
            top = " | ".join(str(t) for t in list(r["top_tokens"])[:5])
        elif exs:
            top = _top_tokens_from_examples(exs)
        elif "top_token_ids" in chosen.columns and r["top_token_ids"] is not None:
            top = " ".join(f"#{int(t)}" for t in list(r["top_token_ids"])[:5])
        else:
            top = ""

        def num(col: str) -> float | None:
            v = r.get(col) if col in chosen.columns else None
            return None if v is None or not np.isfinite(float(v)) else round(float(v), 4)

        rows.append([int(fid) if str(fid).isdigit() else key, str(r.get("cls", ""))]
                    + [num(f"p_{lang}") for lang in langs]
                    + [num("R"), num("span_mean"), num("max_act"),
                       int(r["n_fired"]) if "n_fired" in chosen.columns else None, top])
        if num("max_act"):
            max_act[key] = num("max_act")
        if exs:
            ex_out[key] = [{"t": [str(t) for t in e.get("tokens", [])],
                            "a": [round(float(a), 3) for a in e.get("acts", [])],
                            "lang": str(e.get("lang", "")), "doc": e.get("doc_id", ""),
                            "mp": int(e.get("max_pos", -1))} for e in exs]
    cls_txt = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    summary = (f"{n_total} features ({cls_txt}); {len(rows)} shown"
               + (" (those with stored examples" if with_ex else " (live features, most frequent first")
               + (f", capped at {max_features})" if len(rows) >= max_features else ")"))
    payload = {"columns": columns, "rows": rows, "examples": ex_out, "max_act": max_act,
               "classes": sorted({row[1] for row in rows}), "nospace": list(NOSPACE_LANGUAGES),
               "default_sort": "n_fired" if order else "feature", "summary": summary}
    return payload, summary


def _browser(study: Path, max_saes: int, max_features: int, max_examples: int) -> tuple[str, str]:
    units = discover_units(study)
    chosen = _pick_units(units, max_saes)
    index, scripts = [], []
    for i, u in enumerate(chosen):
        payload, summary = _browser_data(u, max_features, max_examples)
        index.append({"label": f"{u['model']} / iter_{u['iteration']:07d} / layer {u['layer']}", "summary": summary})
        scripts.append(_json_script(payload, f"fb-sae-{i}"))
    note = (f'<p class="note">{len(chosen)} of {len(units)} SAEs embedded'
            + (" (each model's final checkpoint and middle layers first)" if len(chosen) < len(units) else "")
            + f"; per SAE at most {max_features} features and {max_examples} examples per feature. "
            "Token background intensity is proportional to the activation (relative to the feature's "
            "maximum); the outlined token is the example's maximum. Click a column header to sort.</p>")
    world = read_json(study / "tables" / "world.json")
    if isinstance(world, dict):
        note = f'<p class="note">Data: {_esc(world_label(world.get("config", {})))}.</p>' + note
    if not units:
        note = '<p class="meta">No analysed SAE units (units/*/*/*/features.parquet) yet.</p>'
    return note, _json_script(index, "fb-index") + "".join(scripts)


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
        from sae_bilingual.figures import make_all_figures

        make_all_figures(study)
    figs, n_figs = _figures_section(study)
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
    ]
    sections = [s for s in sections if s[2]]
    nav = " ".join(f'<a href="#{_esc(i)}">{_esc(t)}</a>' for i, t, _ in sections)
    nav += ' <a href="#browser">Feature browser</a>'
    note, data = _browser(study, max_saes, max_features, max_examples)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    from sae_bilingual import __version__

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
