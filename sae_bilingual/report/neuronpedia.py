"""Export one analysed SAE unit's features as Neuronpedia-style JSON.

Schema written (one JSON document per SAE)::

    {
      "modelId": str,            # e.g. "llm-jp-3-1.8b@iter_0988240"
      "layer": str,              # Neuronpedia "source"/SAE id, e.g. "12-res-paper-topk"
      "paper_layer": int|null,   # paper layer numbering (layer 0 = embeddings), ours
      "hook_name": str|null,     # TransformerLens hook, ours
      "languages": [str, ...],   # ours
      "features": [
        {
          "modelId": str, "layer": str, "index": str,     # feature id (string, as Neuronpedia)
          "maxActApprox": float,                          # max activation over the eval set
          "frac_nonzero": float|null,                     # share of eval tokens where it is in the TopK
          "explanations": [],                             # none: we do not auto-interpret
          "activations": [                                # top examples, highest first
            {"tokens": [str...], "values": [float...],
             "maxValue": float, "maxValueTokenIndex": int, "minValue": float,
             "dataIndex": int|null,                       # our doc_id
             "lang": str}                                 # ours: document language
          ],
          "sae_bilingual": {"cls": str, "p_<lang>": float..., "R": float, "H_tok": float,
                            "H_sem": float, "span_mean": float, "top_token_ids": [int...]}
        }, ...
      ]
    }

The per-feature keys (``modelId``, ``layer``, ``index``, ``maxActApprox``, ``frac_nonzero``,
``activations``) and per-activation keys (``tokens``, ``values``, ``maxValue``,
``maxValueTokenIndex``, ``minValue``, ``dataIndex``) follow the field names of Neuronpedia's
``Neuron`` and ``Activation`` records (github.com/hijohnnylin/neuronpedia, webapp database
schema; the same names its feature API returns) as far as they apply. Fields Neuronpedia
fills from a model run we do not do here (logit lists ``pos_str``/``neg_str``, DFA values,
histograms) are left out rather than faked; our own metrics sit under ``sae_bilingual`` and
a few top-level keys marked "ours" above. Neuronpedia's ``layer`` is a source id string such
as ``"12-res-jb"``; pass it as ``sae_id``.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sae_bilingual.study.schemas import read_features
from sae_bilingual.study.layout import FEATURES_FILE
from sae_bilingual.errors import DataError
from sae_bilingual.io import atomic_write_json
from sae_bilingual.models.catalogue import iter_dirname
from sae_bilingual.study.artefacts import SUMMARY_FILE
from sae_bilingual.study.unit import layer_dirname, layer_dirs

log = logging.getLogger(__name__)

__all__ = ["export_neuronpedia", "neuronpedia_payload"]


def _f(v: Any) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def _activation(ex: dict[str, Any]) -> dict[str, Any]:
    vals = [float(a) for a in ex.get("acts", [])]
    toks = [str(t) for t in ex.get("tokens", [])]
    if len(vals) != len(toks):
        raise DataError(f"an example has {len(toks)} tokens but {len(vals)} activations; "
                        "rerun the analysis step that writes examples.json.")
    arr = np.asarray(vals) if vals else np.zeros(1)
    return {"tokens": toks, "values": [round(v, 5) for v in vals],
            "maxValue": round(float(arr.max()), 5), "maxValueTokenIndex": int(arr.argmax()),
            "minValue": round(float(arr.min()), 5),
            "dataIndex": int(ex["doc_id"]) if ex.get("doc_id") is not None else None,
            "lang": str(ex.get("lang", ""))}


def neuronpedia_payload(features: pd.DataFrame, examples: dict[str, list], model_id: str, sae_id: str,
                        *, n_tokens: int | None = None, include_dead: bool = False,
                        extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build the export document from a per-feature table and examples (see module docstring).

    ``n_tokens`` (evaluation tokens) turns ``n_fired`` into ``frac_nonzero``.
    """
    langs = [c[2:] for c in features.columns if c.startswith("p_")]
    if not include_dead and "dead" in features.columns:
        features = features.loc[~features["dead"].astype(bool)]
    metric_cols = ["cls"] + [f"p_{lang}" for lang in langs] + ["R", "H_tok", "H_sem", "span_mean", "span_max",
                                                              "n_fired", "n_active"]
    out = []
    for fid, row in features.iterrows():
        key = str(fid)
        acts = sorted((_activation(e) for e in examples.get(key, [])), key=lambda a: -a["maxValue"])
        ours: dict[str, Any] = {}
        for c in metric_cols:
            if c in features.columns:
                ours[c] = str(row[c]) if c == "cls" else _f(row[c])
        if "top_token_ids" in features.columns and row["top_token_ids"] is not None:
            ours["top_token_ids"] = [int(t) for t in list(row["top_token_ids"])]
        n_fired = _f(row["n_fired"]) if "n_fired" in features.columns else None
        out.append({
            "modelId": model_id, "layer": sae_id, "index": key,
            "maxActApprox": _f(row["max_act"]) if "max_act" in features.columns else
            (max((a["maxValue"] for a in acts), default=None)),
            "frac_nonzero": (n_fired / n_tokens) if (n_fired is not None and n_tokens) else None,
            "explanations": [],
            "activations": acts,
            "sae_bilingual": ours,
        })
    doc = {"modelId": model_id, "layer": sae_id, "languages": langs}
    doc.update(extra or {})
    doc["features"] = out
    return doc


def export_neuronpedia(unit_dir: str | Path, out_path: str | Path, model_id: str, sae_id: str,
                       *, include_dead: bool = False) -> Path:
    """Write ``unit_dir``'s features (features.parquet + examples.json) as Neuronpedia-style
    JSON at ``out_path`` (atomically) and return the path.

    ``unit_dir`` is a study unit ``units/<model>/<iter_NNNNNNN>/L<layer>``; ``model_id`` and
    ``sae_id`` become Neuronpedia's ``modelId`` and ``layer`` (source id, e.g.
    ``"14-res-paper-topk"``). Dead features are left out unless ``include_dead``.
    """
    unit = Path(unit_dir)
    features = read_features(unit / FEATURES_FILE)
    examples: dict[str, list] = {}
    if (unit / "examples.json").exists():
        examples = json.loads((unit / "examples.json").read_text(encoding="utf-8"))
    extra: dict[str, Any] = {"paper_layer": None, "hook_name": None}
    m = re.match(r"^L(\d+)$", unit.name)
    if m:
        extra["paper_layer"] = int(m.group(1))
    n_tokens = None
    summ = unit / "summary.json"
    if summ.exists():
        s = json.loads(summ.read_text(encoding="utf-8"))
        extra["hook_name"] = s.get("hook")
        n_tokens = s.get("n_tokens") or s.get("n_eval_tokens")
    doc = neuronpedia_payload(features, examples, model_id, sae_id, n_tokens=n_tokens,
                              include_dead=include_dead, extra=extra)
    # compact (one line): atomic_write_json with indent=None, whose signature takes an int only
    path = atomic_write_json(out_path, doc, indent=None)
    log.info("wrote %d features to %s", len(doc["features"]), path)
    return path


def export_all_neuronpedia(out: Path) -> list[Path]:
    """Every analysed SAE's features as Neuronpedia-style JSON under ``neuronpedia/``."""
    paths = []
    for d in layer_dirs(out, having=(SUMMARY_FILE,)):
        ldir, family, it, layer = d.path, d.family, iter_dirname(d.iteration), layer_dirname(d.layer)
        dst = out / "neuronpedia" / f"{family}_{it}_{layer}.json"
        if not dst.exists():
            export_neuronpedia(ldir, dst, model_id=f"{family}@{it}", sae_id=f"{layer}-paper_topk")
        paths.append(dst)
    return paths
