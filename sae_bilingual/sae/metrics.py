"""An SAE's own metrics: reconstruction (MSE, FVU, L0, dead latents) and CE loss recovered.

:class:`ReconstructionStats` accumulates them over the (streamed) evaluation vectors in the
SAE's unit-norm space;
:func:`ce_metrics_many` splices each SAE into the LM at its hook and compares the next-token
loss with the clean and the zero-ablated model (losses from :mod:`sae_bilingual.lm_loss`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from sae_bilingual.errors import ConfigError, DataError, SAEFileError
from sae_bilingual.layers import layer_for_hook
from sae_bilingual.lm_loss import DEFAULT_LOGITS_BUDGET_BYTES, cache_and_final_residual, final_residual, nll_rows
from sae_bilingual.sae.model import PaperTopKSAE
from sae_bilingual.sae.saebench import density_fractions, kl_div_score, kl_rows

log = logging.getLogger(__name__)


class ReconstructionStats:
    """Reconstruction metrics of one SAE, accumulated exactly over batches of unit-norm vectors.

    Why: the evaluation streams (one LM batch at a time), so no metric may need the whole
    evaluation set. Sums are float64 (the squared error per batch in float32 first, as a
    plain float32 reduction gives it); the total variance uses a shift (the first batch's
    mean), ``sum ||x - s||^2 - M ||mean - s||^2``, which equals the two-pass value to float64
    rounding. Metrics (SAEBench's core reconstruction set, in the SAE's unit-norm space):
    ``mse`` (sum over d, mean over vectors), ``fvu``, ``explained_variance`` (1 - fvu,
    mean-centred), ``cossim`` (mean cosine of x and x_hat), ``l2_ratio`` (mean
    ||x_hat|| / ||x||), ``l0``, ``n_dead`` / ``n_live`` (latents never selected), and
    ``frac_alive``, ``frac_firing_gt_1pct``, ``frac_firing_gt_10pct`` (saebench.density_fractions).
    """

    def __init__(self, d_sae: int):
        self.counts = torch.zeros(int(d_sae), dtype=torch.int64)  # vectors each latent was selected on
        self.m = 0
        self.se = self.l0 = self.cos = self.l2_ratio = 0.0
        self._shift: torch.Tensor | None = None
        self._sum_sq = 0.0  # sum ||x - s||^2
        self._sum: torch.Tensor | None = None  # sum (x - s), float64 [d]

    @torch.no_grad()
    def update(self, x: torch.Tensor, rec: torch.Tensor, idx: torch.Tensor, val: torch.Tensor) -> None:
        """Add one batch: inputs ``x`` [m, d], reconstructions ``rec``, codes ``idx``/``val`` [m, K]."""
        if x.shape[0] == 0:
            return
        self.se += float((rec - x).pow(2).sum())
        self.l0 += float((val != 0).sum())
        self.counts += torch.bincount(idx[val != 0].reshape(-1).cpu(), minlength=self.counts.numel())
        x64, r64 = x.to(torch.float64), rec.to(torch.float64)
        nx, nr = x64.norm(dim=-1), r64.norm(dim=-1)
        self.cos += float(((x64 * r64).sum(-1) / (nx * nr).clamp_min(1e-300)).sum())
        self.l2_ratio += float((nr / nx.clamp_min(1e-300)).sum())
        if self._shift is None or self._sum is None:
            self._shift = x64.mean(0)
            self._sum = torch.zeros_like(self._shift)
        c = x64 - self._shift
        self._sum_sq += float(c.pow(2).sum())
        self._sum = self._sum + c.sum(0)
        self.m += int(x.shape[0])

    def result(self) -> dict[str, float]:
        """The metrics over every vector seen (raises when there were none)."""
        if self.m == 0:
            raise DataError("no evaluation vectors")
        M = self.m
        assert self._sum is not None  # set by the first update
        var = self._sum_sq - float(self._sum.pow(2).sum()) / M
        fvu = self.se / var if var > 0 else float("nan")
        return {"mse": self.se / M, "fvu": fvu, "explained_variance": 1.0 - fvu, "cossim": self.cos / M,
                "l2_ratio": self.l2_ratio / M, "l0": self.l0 / M,
                "n_dead": int((self.counts == 0).sum()), "n_live": int((self.counts > 0).sum()),
                **density_fractions(self.counts, M)}


@torch.no_grad()
def encode_decode(sae: PaperTopKSAE, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(idx, val, reconstruction) of unit-norm vectors ``u`` in the SAE's unit-norm space.

    The one encode/decode of the evaluation (codes and reconstruction metrics come from the
    same call), the decode from the dense code as :meth:`decode_normalized` does it.
    """
    idx, val = sae.encode_topk(u)
    z = torch.zeros(u.shape[0], sae.cfg.d_sae, dtype=u.dtype, device=u.device).scatter_(-1, idx, val)
    return idx, val, sae.decode_normalized(z)


def reconstruction_metrics(sae: PaperTopKSAE, x_unit: torch.Tensor, batch_size: int = 8192) -> dict[str, float]:
    """:class:`ReconstructionStats` of vectors held in memory (tests, small sets); the study
    streams its evaluation instead (:mod:`sae_bilingual.analysis.stream`)."""
    if x_unit.shape[0] == 0:
        raise DataError("no evaluation vectors")
    stats = ReconstructionStats(sae.cfg.d_sae)
    dev = sae.W_enc.device
    for s in range(0, x_unit.shape[0], batch_size):
        u = x_unit[s:s + batch_size].to(dev, sae.W_enc.dtype)
        idx, val, rec = encode_decode(sae, u)
        stats.update(u, rec, idx, val)
    return stats.result()


def _check_splice(model: Any, sae: Any) -> str:
    """The SAE's hook, after checking that it fits this model (width and hook)."""
    hook = sae.cfg.metadata.hook_name
    if int(sae.cfg.d_in) != int(model.cfg.d_model):
        raise SAEFileError(f"the SAE reads d_in={sae.cfg.d_in} but the model's d_model is "
                           f"{model.cfg.d_model}; splice an SAE trained on this model")
    if hook not in model.hook_dict:
        raise SAEFileError(f"the SAE was trained at hook {hook!r}, which this model does not have "
                           f"({model.cfg.n_layers} blocks); use an SAE trained on this model")
    return hook


def ce_recovered(ce_clean: float, ce_sae: float, ce_zero: float) -> tuple[float, str]:
    """(CE recovered, why it is undefined or ""): ``(CE_zero - CE_sae) / (CE_zero - CE_clean)``.

    The ratio measures how much of the loss that ablating the layer costs the SAE wins back; it
    is undefined (NaN) when zero-ablation costs nothing, i.e. CE_zero is not above CE_clean (an
    untrained early checkpoint can even do better without the layer's residual), where the
    ratio would be meaningless (e.g. 1.27).
    """
    if not ce_zero - ce_clean > 1e-12:
        return float("nan"), (f"zero-ablation loss {ce_zero:.4f} is not above the clean loss {ce_clean:.4f}: "
                              "ablating the layer costs nothing to recover")
    return (ce_zero - ce_sae) / (ce_zero - ce_clean), ""


@torch.no_grad()
def ce_metrics_many(model: Any, saes: Sequence[Any], windows: Any, *, batch_size: int = 64,
                    device: str | None = None, budget_bytes: int = DEFAULT_LOGITS_BUDGET_BYTES
                    ) -> dict[str, dict[str, Any]]:
    """Next-token CE of every SAE's splice, from one clean forward per batch: {hook: metrics}.

    Metrics: ``ce_loss_clean``, ``ce_loss_sae`` (non-BOS positions replaced by the SAE's
    reconstruction), ``ce_loss_zero`` (replaced by zeros), ``ce_recovered`` (NaN when undefined,
    see :func:`ce_recovered`) and ``ce_recovered_note`` (why it is NaN, else ""). Why one call
    for all layers: the clean pass caches every hook's residual, and each spliced /
    zero-ablated pass restarts from that residual at the hook (``start_at_layer``), so the
    blocks below a layer are never recomputed; the losses are taken in chunks of at most
    ``budget_bytes`` of logits. SAEBench's ``kl_div_with_sae``, ``kl_div_with_ablation``,
    ``kl_div_score`` (+ ``kl_div_score_note``) and ``ce_loss_score`` (= ``ce_recovered``) come
    from the same passes (:mod:`sae_bilingual.sae.saebench`).
    """
    hooks = [_check_splice(model, sae) for sae in saes]
    names = set(hooks)
    if len(names) < len(hooks):
        raise ConfigError(f"ce_metrics_many takes one SAE per hook; got hooks {hooks}")
    device = device or str(getattr(model.cfg, "device", "cpu"))
    totals = {h: {"sae": 0.0, "zero": 0.0, "kl_sae": 0.0, "kl_zero": 0.0} for h in hooks}
    clean_total, n_tok = 0.0, 0
    pos = torch.arange(windows.tokens.shape[1])
    for s in range(0, len(windows), batch_size):
        w = windows.subset(slice(s, s + batch_size))
        toks, ln = w.tokens.to(device), w.lengths
        splice_mask = (pos[None, :] < ln[:, None]).to(device)[..., None]
        splice_mask[:, 0] = False  # only non-BOS positions: the SAE never saw BOS
        resid, cache = cache_and_final_residual(model, toks, set(names))
        clean_total += float(nll_rows(model, resid, toks, ln, budget_bytes=budget_bytes).sum())
        n_tok += int((ln - 1).clamp_min(0).sum())
        for sae, hook in zip(saes, hooks):
            act = cache[hook]
            rec = sae(act.to(sae.W_enc.dtype)).to(act.dtype)
            for name, x in (("sae", torch.where(splice_mask, rec, act)),
                            ("zero", torch.where(splice_mask, torch.zeros_like(act), act))):
                out = final_residual(model, x, start_at_layer=layer_for_hook(hook), tokens=toks)
                totals[hook][name] += float(nll_rows(model, out, toks, ln, budget_bytes=budget_bytes).sum())
                totals[hook][f"kl_{name}"] += float(kl_rows(model, resid, out, ln, budget_bytes=budget_bytes).sum())
    clean = clean_total / max(1, n_tok)
    result: dict[str, dict[str, Any]] = {}
    for hook in hooks:
        ce_sae, ce_zero = (totals[hook][k] / max(1, n_tok) for k in ("sae", "zero"))
        rec, why = ce_recovered(clean, ce_sae, ce_zero)
        if why:
            log.info("CE recovered at %s is undefined (NaN): %s", hook, why)
        kl_sae, kl_zero = (totals[hook][k] / max(1, n_tok) for k in ("kl_sae", "kl_zero"))
        kl_score, kl_why = kl_div_score(kl_sae, kl_zero)
        result[hook] = {"ce_loss_clean": clean, "ce_loss_sae": ce_sae, "ce_loss_zero": ce_zero,
                        "ce_recovered": rec, "ce_recovered_note": why, "ce_loss_score": rec,
                        "kl_div_with_sae": kl_sae, "kl_div_with_ablation": kl_zero,
                        "kl_div_score": kl_score, "kl_div_score_note": kl_why}
    return result


def ce_metrics(model: Any, sae: Any, windows: Any, *, batch_size: int = 64, device: str | None = None,
               budget_bytes: int = DEFAULT_LOGITS_BUDGET_BYTES) -> dict[str, Any]:
    """Next-token CE: clean, with the SAE spliced at its hook, and with that hook zero-ablated.

    Only non-BOS positions are replaced (the SAE never saw BOS). CE recovered =
    (CE_zero - CE_sae) / (CE_zero - CE_clean), NaN when CE_zero <= CE_clean. For several SAEs
    of one model use :func:`ce_metrics_many` (one clean pass for all).
    """
    (metrics,) = ce_metrics_many(model, [sae], windows, batch_size=batch_size, device=device,
                                 budget_bytes=budget_bytes).values()
    return metrics


def evaluate_sae(sae: PaperTopKSAE, x_unit: torch.Tensor, model: Any = None, windows: Any = None,
                 **ce_kw: Any) -> dict[str, Any]:
    """Summary metrics: mse, fvu, l0, n_dead, n_live (+ CE clean/SAE/zero, CE recovered with a model)."""
    out = reconstruction_metrics(sae, x_unit)
    if model is not None and windows is not None:
        out.update(ce_metrics(model, sae, windows, **ce_kw))
    return out
