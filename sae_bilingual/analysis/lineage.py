"""Feature lineage across checkpoints: where the features of a later SAE come from.

Why: the paper sees the share of bilingual ("mixed") features grow during pre-training.
Whether they come from an English and a Japanese feature that *merged*, from one
monolingual feature that *widened*, or appear from nothing is a question about individual
features across checkpoints, answered with the co-firing matches of
:mod:`sae_bilingual.analysis.matching`.

Lineage of one layer over checkpoints c_0 < ... < c_T (`lineage_over_checkpoints`):

- ancestors: every final feature's best match (highest J) at each earlier checkpoint
  (matched directly against the final SAE on the same tokens), with its class.
- origin of each feature of c_{t+1} from c_t, from its ancestors S = features of c_t with
  J >= ``threshold`` ("stable ancestors"): ``none`` (S empty); ``merge`` (S holds
  features of >= 2 different languages); otherwise from the class of the best ancestor:
  ``persist`` (same class), ``widen`` (a language -> mixed), ``narrow`` (mixed -> a
  language), ``switch`` (one language -> another).
- flows: one-to-one pairs (J >= threshold) counted per (class at c_t, class at c_{t+1}).

Reading a study's units and writing the lineage tables and figure is the study's job
(:mod:`sae_bilingual.study.lineage_stage`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from sae_bilingual.analysis.codes import Codes
from sae_bilingual.analysis.matching import MatchConfig, match_codes
from sae_bilingual.errors import DataError

ORIGINS = ("merge", "widen", "persist", "narrow", "switch", "none")
NON_LANGUAGE_CLASSES = ("mixed", "dead")

__all__ = ["Checkpoint", "classify_origins", "edge_precision", "lineage_over_checkpoints"]


def _language_classes(classes: np.ndarray) -> np.ndarray:
    return ~np.isin(classes.astype(str), NON_LANGUAGE_CLASSES)


def classify_origins(cand: pd.DataFrame, cls_prev: np.ndarray, cls_next: np.ndarray,
                     threshold: float) -> pd.DataFrame:
    """Origin of every feature of the later SAE from the earlier one (module docstring).

    ``cand``: candidates of a `match_codes` (earlier = A, later = B); ``cls_prev`` /
    ``cls_next``: class per feature (language code, "mixed", "dead"). Returns a DataFrame
    indexed by the later feature: cls, origin, ancestor (best, -1 none), ancestor_cls,
    jaccard, n_ancestors, ancestor_langs ("en+ja" style, languages among stable ancestors).
    """
    cls_prev = np.asarray(cls_prev).astype(str)
    cls_next = np.asarray(cls_next).astype(str)
    n2 = cls_next.size
    st: pd.DataFrame = cand.loc[cand["jaccard"] >= threshold]
    fb, fa, jac = st["feature_b"].to_numpy(), st["feature_a"].to_numpy(), st["jaccard"].to_numpy()
    n_anc = np.bincount(fb, minlength=n2)
    # best stable ancestor per later feature
    o = np.lexsort((fa, -jac, fb))
    firsts = o[np.r_[True, fb[o][1:] != fb[o][:-1]]] if o.size else o
    best = np.full(n2, -1, dtype=np.int64)
    best_j = np.zeros(n2)
    best[fb[firsts]] = fa[firsts]
    best_j[fb[firsts]] = jac[firsts]
    # distinct languages among stable ancestors
    acls = cls_prev[fa] if fa.size else np.array([], dtype=str)
    is_lang = _language_classes(acls)
    pairs = pd.DataFrame({"fb": fb[is_lang], "lang": acls[is_lang]}).drop_duplicates()
    langs_per = pairs.sort_values(["fb", "lang"]).groupby("fb")["lang"].agg("+".join)
    n_langs = np.bincount(pairs["fb"].to_numpy(dtype=np.int64), minlength=n2)
    bcls = np.where(best >= 0, cls_prev[np.maximum(best, 0)], "")
    next_lang = _language_classes(cls_next)
    best_lang = _language_classes(bcls) & (best >= 0)
    origin = np.select(
        [best < 0, n_langs >= 2, bcls == cls_next, best_lang & (cls_next == "mixed"),
         (bcls == "mixed") & next_lang, best_lang & next_lang],
        ["none", "merge", "persist", "widen", "narrow", "switch"], default="none")
    return pd.DataFrame({
        "cls": cls_next, "origin": origin, "ancestor": best, "ancestor_cls": bcls,
        "jaccard": best_j, "n_ancestors": n_anc,
        "ancestor_langs": langs_per.reindex(np.arange(n2)).fillna("").to_numpy(),
    }, index=pd.RangeIndex(n2, name="feature"))


def edge_precision(edges: pd.DataFrame, concept_a: np.ndarray, concept_b: np.ndarray) -> dict[str, float]:
    """Share of matched pairs whose ``dominant_concept`` is equal at both ends (both >= 0),
    and the share expected for a random pairing of the same features (chance level)."""
    ca = np.asarray(concept_a)[edges["feature_a"].to_numpy(dtype=np.int64)]
    cb = np.asarray(concept_b)[edges["feature_b"].to_numpy(dtype=np.int64)]
    ok = (ca >= 0) & (cb >= 0)
    if not ok.any():
        return {"precision": float("nan"), "chance": float("nan"), "n": 0}
    prec = float(np.mean(ca[ok] == cb[ok]))
    pa = pd.Series(ca[ok]).value_counts(normalize=True)
    pb = pd.Series(cb[ok]).value_counts(normalize=True)
    chance = float((pa * pb.reindex(pa.index).fillna(0)).sum())
    return {"precision": prec, "chance": chance, "n": int(ok.sum())}


@dataclass
class Checkpoint:
    """One analysed SAE of the sequence: iteration, tokens, codes, per-feature classes."""

    iteration: int
    tokens: int
    unit: Path | None
    codes: Codes | None
    features: pd.DataFrame


def lineage_over_checkpoints(checkpoints: list[Checkpoint], cfg: MatchConfig = MatchConfig(),
                             load: Callable[[Checkpoint], Codes] | None = None) -> dict[str, Any]:
    """Lineage of one layer over checkpoints (sorted by iteration; the last is the final SAE).

    ``load(ck) -> Codes`` supplies a checkpoint's codes when ``ck.codes`` is None (so only
    three code sets are in memory at once). Returns {"ancestry": long DataFrame (one row
    per final feature x earlier checkpoint), "origins": DataFrame per (iteration, feature)
    of every later checkpoint, "flows": DataFrame (iteration_a, iteration_b, cls_a, cls_b,
    count), "precision": list of dicts, "summary": dict}.
    """
    if len(checkpoints) < 2:
        raise DataError(f"lineage needs at least 2 checkpoints of the layer, got {len(checkpoints)}.")
    cks = sorted(checkpoints, key=lambda c: c.iteration)

    def codes_of(c: Checkpoint) -> Codes:
        if c.codes is not None:
            return c.codes
        assert load is not None, "a checkpoint without codes needs a load function"
        return load(c)

    final = cks[-1]
    cf = codes_of(final)
    nf = len(final.features)
    cls_f = final.features["cls"].astype(str).to_numpy()
    has_concept = all("dominant_concept" in c.features.columns for c in cks)
    anc_rows, origin_rows, flow_rows, prec_rows = [], [], [], []
    carried = None  # codes of cks[t], loaded as the later side of the previous transition
    for t in range(len(cks) - 1):
        a, b = cks[t], cks[t + 1]
        ca = carried if carried is not None else codes_of(a)
        cb = cf if b is final else codes_of(b)
        n1, n2 = len(a.features), len(b.features)
        cls_a = a.features["cls"].astype(str).to_numpy()
        cls_b = b.features["cls"].astype(str).to_numpy()
        # consecutive: origins and flows
        res = match_codes(ca, cb, n1, n2, cfg)
        org = classify_origins(res.candidates, cls_a, cls_b, cfg.threshold)
        org.insert(0, "iteration", b.iteration)
        org.insert(1, "iteration_prev", a.iteration)
        origin_rows.append(org.reset_index())
        st: pd.DataFrame = res.one_to_one.loc[res.one_to_one["jaccard"] >= cfg.threshold]
        fl = pd.DataFrame({"cls_a": cls_a[st["feature_a"].to_numpy(dtype=np.int64)],
                           "cls_b": cls_b[st["feature_b"].to_numpy(dtype=np.int64)]})
        fl = fl.value_counts().rename("count").reset_index()
        fl.insert(0, "iteration_a", a.iteration)
        fl.insert(1, "iteration_b", b.iteration)
        fl.insert(2, "tokens_a", a.tokens)
        fl.insert(3, "tokens_b", b.tokens)
        flow_rows.append(fl)
        if has_concept:
            p = edge_precision(st, a.features["dominant_concept"].to_numpy(), b.features["dominant_concept"].to_numpy())
            prec_rows.append({"kind": "consecutive", "iteration_a": a.iteration, "iteration_b": b.iteration, **p})
        # direct ancestry of the final features at checkpoint t
        if b is final:
            resf = res
        else:
            resf = match_codes(ca, cf, n1, nf, cfg)
        c = resf.candidates
        bestc = c[c["rank_b"] == 1].set_index("feature_b")
        anc = pd.DataFrame({"feature": np.arange(nf), "cls": cls_f, "iteration": a.iteration, "tokens": a.tokens})
        anc["ancestor"] = bestc["feature_a"].reindex(np.arange(nf)).fillna(-1).to_numpy(dtype=np.int64)
        anc["jaccard"] = bestc["jaccard"].reindex(np.arange(nf)).fillna(0.0).to_numpy()
        anc["corr"] = bestc["corr"].reindex(np.arange(nf)).to_numpy()
        has = anc["ancestor"].to_numpy() >= 0
        anc["ancestor_cls"] = np.where(has, cls_a[np.maximum(anc["ancestor"].to_numpy(), 0)], "")
        if has_concept:
            dc_a = a.features["dominant_concept"].to_numpy()
            dc_f = final.features["dominant_concept"].to_numpy()
            anc["concept"] = dc_f
            anc["ancestor_concept"] = np.where(has, dc_a[np.maximum(anc["ancestor"].to_numpy(), 0)], -1)
            stf: pd.DataFrame = resf.one_to_one.loc[resf.one_to_one["jaccard"] >= cfg.threshold]
            p = edge_precision(stf, dc_a, dc_f)
            prec_rows.append({"kind": "to_final", "iteration_a": a.iteration, "iteration_b": final.iteration, **p})
        anc_rows.append(anc)
        carried = cb
        del ca
    ancestry = pd.concat(anc_rows, ignore_index=True)
    origins = pd.concat(origin_rows, ignore_index=True)
    flows = pd.concat(flow_rows, ignore_index=True)
    last: pd.DataFrame = origins.loc[origins["iteration"] == final.iteration]
    live: pd.DataFrame = last.loc[last["cls"] != "dead"]
    counts = {cl: {o: int(((live["cls"] == cl) & (live["origin"] == o)).sum()) for o in ORIGINS}
              for cl in sorted(live["cls"].unique(), key=lambda s: (s == "mixed", s))}
    summary: dict[str, Any] = {
        "final_iteration": final.iteration, "previous_iteration": cks[-2].iteration,
        "iterations": [c.iteration for c in cks], "threshold": cfg.threshold,
        "n_features": int(nf), "n_live": int(len(live)), "origins_final": counts,
        "mixed_from_merge": counts.get("mixed", {}).get("merge", 0),
        "mixed_from_widen": counts.get("mixed", {}).get("widen", 0),
        "mixed_from_none": counts.get("mixed", {}).get("none", 0),
        "mixed_persist": counts.get("mixed", {}).get("persist", 0),
        "transitions": [
            {"iteration": int(cast(int, it)), **{o: int((g["origin"] == o).sum()) for o in ORIGINS},
             "mixed_merge": int(((g["cls"] == "mixed") & (g["origin"] == "merge")).sum()),
             "mixed_widen": int(((g["cls"] == "mixed") & (g["origin"] == "widen")).sum()),
             "mixed_none": int(((g["cls"] == "mixed") & (g["origin"] == "none")).sum())}
            for it, g in origins[origins["cls"] != "dead"].groupby("iteration")
        ],
    }
    if prec_rows:
        pr = pd.DataFrame(prec_rows)
        ok = pr[pr["n"] > 0]
        summary["edge_precision"] = prec_rows
        for kind in ("consecutive", "to_final"):
            sub = ok[ok["kind"] == kind]
            if len(sub):
                summary[f"precision_{kind}"] = float(np.average(sub["precision"], weights=sub["n"]))
                summary[f"chance_{kind}"] = float(np.average(sub["chance"], weights=sub["n"]))
    return {"ancestry": ancestry, "origins": origins, "flows": flows, "precision": prec_rows,
            "summary": summary}
