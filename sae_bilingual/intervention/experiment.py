"""Rows of the paper's Tables 1 and 4: the mid model under each (condition, alpha, m, draw).

:func:`run_intervention_table` evaluates every condition and draw together: perplexity from
one mid-model pass up to the hook and one X_full per batch of windows
(:mod:`sae_bilingual.intervention.batch`), and translation with the conditions stacked along
the generation batch (one :class:`FeatureInjection` with one mask per copy; the final
model runs a shared prompt once). :func:`run_intervention_table_one_at_a_time` is the plain
path -- one full evaluation per condition and draw -- kept as the reference the batched one
is tested against (equal up to float rounding).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from transformers import PreTrainedTokenizerBase

from sae_bilingual.lm_loss import DEFAULT_LOGITS_BUDGET_BYTES
from sae_bilingual.intervention.comet_bridge import comet_available, comet_score
from sae_bilingual.config_intervention import InterventionSpec
from sae_bilingual.defaults import PAPER_LANGUAGES
from sae_bilingual.errors import ConfigError
from sae_bilingual.intervention.metrics import PromptTemplate, chrf, perplexity, split_pairs, translate
from sae_bilingual.intervention.hook import FeatureInjection
from sae_bilingual.intervention.batch import Injection, perplexities_under_injections
from sae_bilingual.intervention.masks import class_mask, scale_m

log = logging.getLogger(__name__)


class _Setup:
    """What both paths share: languages, translation directions and split, COMET, the cells."""

    def __init__(self, sae: Any, features_df: pd.DataFrame, spec: InterventionSpec, seed: int, windows: Any,
                 pairs: pd.DataFrame | None, languages: Sequence[str] | None, comet: bool | None) -> None:
        if windows is None and pairs is None:
            raise ConfigError("run_intervention_table needs eval windows=, pairs= or both")
        if languages is None:
            languages = tuple(getattr(windows, "languages", None) or PAPER_LANGUAGES)
        self.languages = tuple(languages)
        if comet is None and (spec.comet_python or spec.comet_model):
            comet = True  # the spec names a COMET environment: a missing one is an error, not NaN
        self.use_comet = comet_available() if comet is None else bool(comet)
        if comet is None and not self.use_comet:
            log.info("COMET environment not configured; comet_* columns will be NaN")
        self.comet_kwargs: dict[str, Any] = {"python": spec.comet_python, "model_path": spec.comet_model} if self.use_comet else {}
        self.directions: list[tuple[str, str]] = []
        self.shots_df = self.test_df = pd.DataFrame()  # no directions without pairs: never translated
        if pairs is not None:
            self.directions = [(a, b) for a, b in itertools.permutations(self.languages, 2) if a in pairs and b in pairs]
            self.shots_df, self.test_df = split_pairs(pairs, spec.few_shot)
        d_sae = int(sae.cfg.d_sae)
        # one row per cell; the clean model ("none") is evaluated once and repeated per (alpha, m)
        self.cells: list[dict[str, Any]] = []
        for a, m_paper in itertools.product(spec.alphas, spec.ms):
            m_eff = scale_m(int(m_paper), d_sae) if spec.scale_m else int(m_paper)
            for cond in spec.conditions:
                for draw in range(1 if cond == "none" else spec.draws):
                    mask = None if cond == "none" else class_mask(features_df, cond, m_eff, seed=seed + draw, d_sae=d_sae)
                    self.cells.append({"condition": cond, "alpha": float(a), "m": int(m_paper),
                                       "m_eff": 0 if cond == "none" else m_eff, "draw": draw, "mask": mask})

    def translation_metrics(self, hyps: dict[tuple[str, str], list[str]]) -> dict[str, float]:
        """chrF (and COMET, else NaN) per direction from the hypotheses of one condition."""
        row: dict[str, float] = {}
        for a, b in self.directions:
            refs = self.test_df[b].astype(str).tolist()
            row[f"chrf_{a}_{b}"] = chrf(hyps[(a, b)], refs)
            row[f"comet_{a}_{b}"] = float("nan")
            if self.use_comet:
                res = comet_score(self.test_df[a].astype(str).tolist(), hyps[(a, b)], refs, **self.comet_kwargs)
                row[f"comet_{a}_{b}"] = 100.0 * res.system_score
        return row

    def rows(self, results: list[dict[str, float]]) -> pd.DataFrame:
        """The table: one row per cell, "none" repeated in every (alpha, m) cell."""
        clean = next((r for c, r in zip(self.cells, results) if c["condition"] == "none"), None)
        out = []
        for c, r in zip(self.cells, results):
            res = clean if c["condition"] == "none" and clean is not None else r
            out.append({k: v for k, v in c.items() if k != "mask"} | res)
        return pd.DataFrame(out)


def run_intervention_table(
    final_model: Any, mid_model: Any, sae: Any, features_df: pd.DataFrame, layer: int,
    spec: InterventionSpec | None = None, *, seed: int = 0, windows: Any = None, pairs: pd.DataFrame | None = None,
    languages: Sequence[str] | None = None, tokenizer: PreTrainedTokenizerBase | None = None, template: PromptTemplate | None = None,
    batch_size: int = 8, skip_bos: bool = True, comet: bool | None = None,
    logits_budget_bytes: int = DEFAULT_LOGITS_BUDGET_BYTES,
) -> pd.DataFrame:
    """Rows (condition, alpha, m, m_eff, draw, ppl_*, chrf_*_*, comet_*_*) for Tables 1 and 4.

    ``spec`` is the recipe's ``intervention:`` section (default: the paper's settings); its
    ``alphas`` x ``ms`` form the Table 4 grid, ``ms`` in the paper's units (32,768 latents),
    scaled with :func:`scale_m` to this SAE when ``spec.scale_m``. The "none" condition is
    evaluated once and repeated in every (alpha, m) cell. COMET runs when ``comet`` is True or
    the spec names a COMET environment, or when None and one is configured (NaN otherwise). Up
    to ``spec.stack`` conditions x draws share one batched pass (memory grows with it).
    """
    spec = spec or InterventionSpec()
    stack, scale, add_bias = spec.stack, spec.scale, spec.add_bias
    st = _Setup(sae, features_df, spec, seed, windows, pairs, languages, comet)
    if stack < 1:
        raise ConfigError(f"intervention stack must be >= 1, got {stack}")
    keep = [i for i, c in enumerate(st.cells) if c["condition"] != "none" or i == _first_none(st.cells)]
    results: list[dict[str, float]] = [{} for _ in st.cells]
    if windows is not None:
        log.info("perplexity under %d conditions x draws (%d per pass)", len(keep), min(stack, len(keep)))
        ppl = perplexities_under_injections(
            mid_model, final_model, sae, windows, [Injection(st.cells[i]["mask"], st.cells[i]["alpha"]) for i in keep],
            layer, languages=st.languages, scale=scale, add_bias=add_bias, skip_bos=skip_bos,
            batch_size=batch_size, stack=stack, logits_budget_bytes=logits_budget_bytes)
        for i, p in zip(keep, ppl):
            results[i].update({k: v for k, v in p.items() if k.startswith("ppl_")})
    d_sae = int(sae.cfg.d_sae)
    for g0 in range(0, len(keep) if st.directions else 0, stack):
        grp = keep[g0 : g0 + stack]
        masks = torch.stack([torch.zeros(d_sae) if st.cells[i]["mask"] is None else st.cells[i]["mask"] for i in grp])
        alphas = [0.0 if st.cells[i]["mask"] is None else st.cells[i]["alpha"] for i in grp]
        log.info("translation under %d conditions x draws in one stacked batch", len(grp))
        hyps: dict[tuple[str, str], list[str]] = {}
        with FeatureInjection(sae, mid_model=mid_model, final_model=final_model, layer=layer, mask=masks,
                              alpha=alphas, scale=scale, add_bias=add_bias, skip_bos=skip_bos) as inj:
            for a, b in st.directions:
                hyps[(a, b)] = translate(mid_model, st.test_df, a, b, spec.few_shot, inj.fwd_hooks(), spec.max_new_tokens,
                                         shots_df=st.shots_df, tokenizer=tokenizer, template=template,
                                         batch_size=batch_size, stack=len(grp))
        n = len(st.test_df)
        for g, i in enumerate(grp):
            results[i].update(st.translation_metrics({d: h[g * n : (g + 1) * n] for d, h in hyps.items()}))
    return st.rows(results)


def _first_none(cells: list[dict[str, Any]]) -> int:
    return next((i for i, c in enumerate(cells) if c["condition"] == "none"), -1)


def run_intervention_table_one_at_a_time(
    final_model: Any, mid_model: Any, sae: Any, features_df: pd.DataFrame, layer: int,
    spec: InterventionSpec | None = None, *, seed: int = 0, windows: Any = None, pairs: pd.DataFrame | None = None,
    languages: Sequence[str] | None = None, tokenizer: PreTrainedTokenizerBase | None = None, template: PromptTemplate | None = None,
    batch_size: int = 8, skip_bos: bool = True, comet: bool | None = None,
) -> pd.DataFrame:
    """The same table as :func:`run_intervention_table`, one full evaluation per condition and
    draw (a FeatureInjection hook on the whole mid model, the final model run alongside): the
    reference for the batched path (``spec.stack`` is not used)."""
    spec = spec or InterventionSpec()
    scale, add_bias = spec.scale, spec.add_bias
    st = _Setup(sae, features_df, spec, seed, windows, pairs, languages, comet)

    def evaluate(hooks: list | None) -> dict[str, float]:
        row: dict[str, float] = {}
        if windows is not None:
            ppl = perplexity(mid_model, windows, languages=st.languages, fwd_hooks=hooks, batch_size=batch_size)
            row.update({k: v for k, v in ppl.items() if k.startswith("ppl_")})
        hyps = {(a, b): translate(mid_model, st.test_df, a, b, spec.few_shot, hooks, spec.max_new_tokens, shots_df=st.shots_df,
                                  tokenizer=tokenizer, template=template, batch_size=batch_size)
                for a, b in st.directions}
        return row | st.translation_metrics(hyps)

    results: list[dict[str, float]] = []
    for i, c in enumerate(st.cells):
        if c["mask"] is None:
            results.append(evaluate(None) if i == _first_none(st.cells) else {})
            continue
        log.info("condition %s alpha=%s m=%d (eff %d) draw %d", c["condition"], c["alpha"], c["m"], c["m_eff"], c["draw"])
        with FeatureInjection(sae, mid_model=mid_model, final_model=final_model, layer=layer, mask=c["mask"],
                              alpha=c["alpha"], scale=scale, add_bias=add_bias, skip_bos=skip_bos) as inj:
            results.append(evaluate(inj.fwd_hooks()))
    return st.rows(results)
