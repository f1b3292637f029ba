"""The report's feature browser: which SAEs it embeds, and each one's features and examples.

At most ``max_saes`` SAEs are embedded (each model's final checkpoint and middle layers
first); the browser opens on the final checkpoint's middle layer of the first model (the
index entry marked ``"default": true``), as the page's note says. The data is JSON in
``<script type="application/json">`` elements that no token can break out of.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import yaml

from sae_bilingual.config_analysis import AnalysisSpec
from sae_bilingual.study.schemas import read_features
from sae_bilingual.study.layout import FEATURES_FILE, RECIPE_FILE, SUMMARY_TABLE, WORLD_META, tables_dir
from sae_bilingual.study.controls import world_label
from sae_bilingual.errors import DataError
from sae_bilingual.models.catalogue import iter_dirname
from sae_bilingual.study.manifest import read_json
from sae_bilingual.study.unit import layer_dirs

#: Languages whose tokens are joined without spaces when an example is displayed.
NOSPACE_LANGUAGES = ("ja", "zh", "th", "ko_nospace")


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


def discover_units(study_dir: str | Path) -> list[dict[str, Any]]:
    """SAE units with a features.parquet: [{model, iteration, layer, path}], sorted."""
    out = [{"model": d.family, "iteration": d.iteration, "layer": d.layer, "path": d.path}
           for d in layer_dirs(study_dir, having=(FEATURES_FILE,))]
    return sorted(out, key=lambda u: (u["model"], u["iteration"], u["layer"]))


def _finals_and_middles(units: list[dict[str, Any]], n_layers: dict[str, int]) -> tuple[dict, dict]:
    """Per model: its final (largest) iteration, and its middle layer -- the analysed layer
    nearest ``n_layers // 2`` (the study's "mid", where the LR grid and the intervention run),
    else the lower middle of the analysed layers."""
    final: dict[str, int] = {}
    layers: dict[str, set[int]] = {}
    for u in units:
        final[u["model"]] = max(final.get(u["model"], -1), u["iteration"])
        layers.setdefault(u["model"], set()).add(u["layer"])
    mid = {}
    for m, v in layers.items():
        v = sorted(v)
        target = n_layers[m] // 2 if m in n_layers else v[(len(v) - 1) // 2]
        mid[m] = min(v, key=lambda l: (abs(l - target), l))
    return final, mid


def _pick_units(units: list[dict[str, Any]], max_saes: int, n_layers: dict[str, int] | None = None
                ) -> list[dict[str, Any]]:
    """Keep at most max_saes units, preferring each model's final checkpoint and middle layers."""
    if len(units) <= max_saes:
        return units
    final, mid = _finals_and_middles(units, n_layers or {})

    def score(u: dict[str, Any]) -> tuple:
        return (u["iteration"] != final[u["model"]], abs(u["layer"] - mid[u["model"]]), u["model"], u["iteration"])

    keep = sorted(units, key=score)[:max_saes]
    return sorted(keep, key=lambda u: (u["model"], u["iteration"], u["layer"]))


def default_unit(units: list[dict[str, Any]], n_layers: dict[str, int] | None = None) -> dict[str, Any] | None:
    """The SAE the browser opens on: the first model's final checkpoint, middle layer."""
    if not units:
        return None
    final, mid = _finals_and_middles(units, n_layers or {})
    m = min(final)
    at_final = [u for u in units if (u["model"], u["iteration"]) == (m, final[m])]
    return min(at_final, key=lambda u: (abs(u["layer"] - mid[m]), u["layer"]))


def _n_layers(study: Path) -> dict[str, int]:
    """Blocks per model from the summary table (empty when it is absent)."""
    p = tables_dir(study) / SUMMARY_TABLE
    if not p.exists():
        return {}
    df = pd.read_parquet(p, columns=None)
    if not {"model", "n_layers"} <= set(df.columns):
        return {}
    per_model = cast(pd.Series, df.groupby("model")["n_layers"].max())  # pandas types the max as any scalar
    return {str(m): int(n) for m, n in per_model.items()}


def study_act_threshold(study: Path) -> float:
    """The ``analysis.act_threshold`` the study ran with (its recipe.yaml), else the default's."""
    try:
        recipe = yaml.safe_load((study / RECIPE_FILE).read_text(encoding="utf-8"))
        value = recipe["analysis"]["act_threshold"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return AnalysisSpec().act_threshold
    return float(value) if isinstance(value, (int, float)) else AnalysisSpec().act_threshold


def _top_tokens_from_examples(exs: list[dict[str, Any]], act_threshold: float, k: int = 5) -> str:
    """Most frequent tokens at positions above act_threshold x the feature's max over its examples
    (older studies whose features.parquet has no top_tokens column)."""
    acts = [np.asarray(e.get("acts", []), dtype=float) for e in exs]
    m = max((a.max() for a in acts if a.size), default=0.0)
    if m <= 0:
        return ""
    counts: dict[str, int] = {}
    for e, a in zip(exs, acts):
        toks = e.get("tokens", [])
        for j in np.flatnonzero(a > act_threshold * m):
            if j < len(toks):
                counts[toks[j]] = counts.get(toks[j], 0) + 1
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    return " | ".join(t.replace("\n", "\u21b5") for t, _ in top)


def _browser_data(unit: dict[str, Any], max_features: int, max_examples: int,
                  act_threshold: float) -> tuple[dict[str, Any], str]:
    """Per-SAE payload for the browser, plus a one-line description."""
    feats = read_features(unit["path"] / FEATURES_FILE)
    ex_path = unit["path"] / "examples.json"
    examples: dict[str, list] = {}
    if ex_path.exists():
        try:
            examples = json.loads(ex_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{ex_path} is not valid JSON ({e}); rerun the analysis step for this unit.") from e
    langs = [c[2:] for c in feats.columns if c.startswith("p_")]
    if "aligned" in feats.columns and "cls" in feats.columns:  # a sub-class of Mixed: filterable on its own
        feats["cls"] = feats["cls"].where(~feats["aligned"].fillna(False).astype(bool), "aligned")
    counts = feats["cls"].value_counts().to_dict() if "cls" in feats.columns else {}
    n_total = len(feats)
    label = {str(i): i for i in feats.index}
    with_ex = [f for f in examples if f in label]
    order = "n_fired" if "n_fired" in feats.columns else None
    live: pd.DataFrame = feats.loc[~feats["dead"].astype(bool)] if "dead" in feats.columns else feats
    chosen: pd.DataFrame
    if with_ex:
        chosen = feats.loc[[label[f] for f in with_ex]]
    else:
        chosen = live
    if order:
        chosen = chosen.sort_values(order, ascending=False)
    chosen = chosen.head(max_features)
    columns = ["feature", "class"] + [f"p({lang})" for lang in langs] + ["R", "span", "max act", "n_fired", "align", "top tokens"]
    rows = []
    max_act = {}
    ex_out = {}
    for fid, r in chosen.iterrows():
        key = str(fid)
        exs = examples.get(key, [])[:max_examples]
        if "top_tokens" in chosen.columns and r["top_tokens"] is not None and len(r["top_tokens"]):
            top = " | ".join(str(t) for t in list(r["top_tokens"])[:5])
        elif exs:
            top = _top_tokens_from_examples(exs, act_threshold)
        elif "top_token_ids" in chosen.columns and r["top_token_ids"] is not None:
            top = " ".join(f"#{int(t)}" for t in list(r["top_token_ids"])[:5])
        else:
            top = ""

        def num(col: str) -> float | None:
            v = r.get(col) if col in chosen.columns else None
            return None if v is None or not np.isfinite(float(v)) else round(float(v), 4)

        rows.append([int(key) if key.isdigit() else key, str(r.get("cls", ""))]
                    + [num(f"p_{lang}") for lang in langs]
                    + [num("R"), num("span_mean"), num("max_act"),
                       int(r.at["n_fired"]) if "n_fired" in chosen.columns else None, num("align_score"), top])
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


def browser(study: Path, max_saes: int, max_features: int, max_examples: int) -> tuple[str, str]:
    """(note HTML, data script elements) of the feature browser; it opens on :func:`default_unit`."""
    units = discover_units(study)
    n_layers = _n_layers(study)
    chosen = _pick_units(units, max_saes, n_layers)
    opens = default_unit(units, n_layers)  # _pick_units ranks it first, so it is kept
    first = next((i for i, u in enumerate(chosen) if u is opens), 0)
    act_threshold = study_act_threshold(study)
    index, scripts = [], []
    for i, u in enumerate(chosen):
        payload, summary = _browser_data(u, max_features, max_examples, act_threshold)
        index.append({"label": f"{u['model']} / {iter_dirname(u['iteration'])} / layer {u['layer']}",
                      "summary": summary, "default": i == first})
        scripts.append(_json_script(payload, f"fb-sae-{i}"))
    note = (f'<p class="note">{len(chosen)} of {len(units)} SAEs embedded'
            + (" (each model's final checkpoint and middle layers first)" if len(chosen) < len(units) else "")
            + (f"; it opens on {html.escape(index[first]['label'])}, the final checkpoint's middle layer" if chosen else "")
            + f"; per SAE at most {max_features} features and {max_examples} examples per feature. "
            "Token background intensity is proportional to the activation (relative to the feature's "
            "maximum); the outlined token is the example's maximum. Click a column header to sort.</p>")
    world = read_json(tables_dir(study) / WORLD_META)
    if isinstance(world, dict):  # say which world the features come from (a control or the study's)
        note = f'<p class="note">Data: {html.escape(world_label(world.get("config", {})))}.</p>' + note
    if not units:
        note = '<p class="meta">No analysed SAE units (units/*/*/*/features.parquet) yet.</p>'
    return note, _json_script(index, "fb-index") + "".join(scripts)
