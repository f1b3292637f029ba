"""SAE files: save and load in SAELens's layout, and the export as a stock SAELens "topk" SAE.

The layout is SAELens's own (``cfg.json`` + ``sae_weights.safetensors``), so
``SAE.load_from_disk`` reads what :func:`save_sae` writes once ``sae_bilingual`` is imported;
:func:`load_sae` adds errors that name the bad file and the fix. Beside every unit-norm
``paper_topk`` SAE, :func:`save_sae` also writes its stock SAELens ``topk`` form (``stock/``)
and a ``README.md`` saying how to load each: a process that never imports this package gets
SAELens's bare ``KeyError: 'paper_topk'`` from the first, and loads the second. The authors'
released weights are converted by :mod:`sae_bilingual.sae.convert`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from sae_lens.saes.sae import SAE, SAEMetadata
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

from sae_bilingual.errors import ConfigError, SAEFileError
from sae_bilingual.io import atomic_dir
from sae_bilingual.sae.model import PaperTopKSAE, PaperTopKTrainingSAE, to_inference
from sae_bilingual.sae.topk_config import ARCHITECTURE


STOCK_DIR = "stock"
"""Subfolder of a saved paper_topk SAE holding its stock SAELens "topk" form."""
README_FILE = "README.md"
STOCK_DIFFERENCE = (
    "Stored as a stock SAELens 'topk' SAE (normalize_activations='constant_norm_rescale'), rescaled so its "
    "pre-activations equal the paper's (u - b_pre) @ W_enc on the unit-normalised residual u. Stock TopK "
    "applies ReLU to the K selected pre-activations; the paper's TopK keeps them signed. On tokens whose "
    "top-K pre-activations are all positive the codes and reconstructions are identical; where a selected "
    "pre-activation is negative, the stock SAE outputs 0 for that latent."
)
"""What the stock form changes, stated in every exported cfg.json, release card and SAE README."""


def save_sae(sae: SAE, path: str | Path, *, stock: bool = True) -> Path:
    """Save an SAE atomically in SAELens's layout (cfg.json + sae_weights.safetensors).

    With ``stock`` (default) a unit-norm paper_topk SAE also gets ``stock/`` (the same SAE as a
    stock SAELens ``topk``, :func:`export_stock_topk`) and ``README.md`` (how to load each form).
    Why: a plain SAELens user, who never imports sae_bilingual, cannot build ``paper_topk``
    (``KeyError: 'paper_topk'``); the README in the folder names the way past it.
    """
    if isinstance(sae, PaperTopKTrainingSAE):
        sae = to_inference(sae)
    with atomic_dir(path) as tmp:
        sae.save_model(tmp)
        if stock and isinstance(sae, PaperTopKSAE) and _has_stock_form(sae):
            stock_topk(sae).save_model(tmp / STOCK_DIR)
            (tmp / README_FILE).write_text(sae_folder_readme(sae), encoding="utf-8")
    return Path(path)


def _has_stock_form(sae: SAE) -> bool:
    return sae.cfg.architecture() == ARCHITECTURE and sae.cfg.normalize_activations == "unit_norm"


def sae_folder_readme(sae: SAE) -> str:
    """The README.md beside a saved paper_topk SAE: its two forms and how to load each."""
    md = sae.cfg.metadata
    return "\n".join([
        "# A paper_topk SAE (sae-bilingual)", "",
        f"Hook `{md.hook_name}`, d_in {sae.cfg.d_in}, d_sae {sae.cfg.d_sae}, k {sae.cfg.k}; each token's "
        "residual is L2-normalised before encoding and the norm is restored on decode.", "",
        "## This folder: architecture `paper_topk` (needs sae-bilingual)", "",
        "```python", "import sae_bilingual            # registers \"paper_topk\" with SAELens",
        "from sae_lens import SAE", 'sae = SAE.load_from_disk("THIS_FOLDER")', "```", "",
        "Without `import sae_bilingual`, SAELens stops with `KeyError: 'paper_topk'` (an architecture "
        "it does not know): install sae-bilingual, or load the stock form below.", "",
        f"## `{STOCK_DIR}/`: stock SAELens `topk` (plain SAELens, no plugin)", "",
        "```python", "from sae_lens import SAE", f'sae = SAE.load_from_disk("THIS_FOLDER/{STOCK_DIR}")', "```", "",
        STOCK_DIFFERENCE, "",
        "## Spliced into `HookedSAETransformer`", "",
        "`hook_sae_output` is the reconstruction at residual scale. In the `paper_topk` form "
        "`hook_sae_recons` fires before the norm is restored (unit-norm space), in the stock form before "
        "the constant-norm rescale is undone: compute an FVU from `hook_sae_input` and `hook_sae_output`.", "",
    ])


_REQUIRED_CFG = ("architecture", "d_in", "d_sae")
_FIX = "retrain this SAE (rerun the study: unfinished layers are redone) or re-download it"


def load_sae(path: str | Path, device: str = "cpu", dtype: str | None = None) -> SAE:
    """``SAE.load_from_disk`` with errors that name the bad file and the fix.

    Why: SAELens reports a truncated weights file or a cfg.json without ``d_sae`` as a
    bare safetensors/TypeError; a study resumed after a crash should say which file is bad.
    """
    p = Path(path)
    for f in ("cfg.json", "sae_weights.safetensors"):
        if not (p / f).exists():
            raise SAEFileError(f"{p} has no {f}: not an SAE directory (expected cfg.json + "
                               f"sae_weights.safetensors, as written by save_sae / SAELens); {_FIX}")
    cfg_path = p / "cfg.json"
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SAEFileError(f"{cfg_path} is not valid JSON ({e}); {_FIX}") from e
    if not isinstance(cfg, dict):
        raise SAEFileError(f"{cfg_path} must hold a JSON object, got {type(cfg).__name__}; {_FIX}")
    missing = [k for k in _REQUIRED_CFG if k not in cfg]
    if cfg.get("architecture") == ARCHITECTURE and "k" not in cfg:
        missing.append("k")
    if missing:
        raise SAEFileError(f"{cfg_path} lacks the field(s) {missing}; {_FIX}")
    weights = p / "sae_weights.safetensors"
    try:
        with safe_open(str(weights), framework="pt") as f:
            names = set(f.keys())
    except Exception as e:  # safetensors raises its own (non-OSError) types on bad headers
        raise SAEFileError(f"{weights} is corrupt or truncated ({e}); {_FIX}") from e
    try:
        sae = SAE.load_from_disk(p, device=device, dtype=dtype)
    except SAEFileError:
        raise
    except ConfigError as e:
        raise SAEFileError(f"{cfg_path}: {e}; {_FIX}") from e
    except Exception as e:  # noqa: BLE001  shapes / dtypes / data region that do not fit cfg.json
        raise SAEFileError(
            f"cannot load the SAE in {p} ({type(e).__name__}: {e}); tensors in {weights.name}: "
            f"{sorted(names)}. The weights do not fit cfg.json or the file is damaged; {_FIX}"
        ) from e
    check_finite(sae.state_dict(), weights, _FIX)
    return sae


def check_finite(tensors: Mapping[str, torch.Tensor], where: str | Path, fix: str) -> None:
    """Refuse SAE weights holding NaN/inf: every code and reconstruction would be NaN (and
    SAELens loads such a file without a word)."""
    for name, t in tensors.items():
        bad = int((~torch.isfinite(t)).sum()) if t.is_floating_point() else 0
        if bad:
            raise SAEFileError(f"{where}: tensor {name} holds {bad} NaN/inf values of {t.numel()}; the SAE "
                               f"is unusable (training diverged?); {fix}")


def export_stock_topk(sae: PaperTopKSAE, path: str | Path) -> Path:
    """Write ``sae`` as a stock SAELens "topk" SAE that loads without this package
    (atomically; the maths in :func:`stock_topk`)."""
    stock = stock_topk(sae)
    with atomic_dir(path) as tmp:
        stock.save_model(tmp)
    return Path(path)


@torch.no_grad()
def stock_topk(sae: PaperTopKSAE) -> TopKSAE:
    """``sae`` as a stock SAELens "topk" SAE (in memory, on the CPU).

    Stock topk with normalize_activations="constant_norm_rescale" computes, for residual x,
      s = sqrt(d)/||x||;  pre = (s x - b_dec') @ W_enc' + b_enc';  z' = ReLU(TopK(pre));
      x_hat = (z' @ W_dec' + b_dec') / s.
    With b_dec' = sqrt(d) b_pre, W_enc' = W_enc / sqrt(d), b_enc' = b_enc (0 in the paper), W_dec' = sqrt(d) W_dec:
      pre = (u - b_pre) @ W_enc = the paper's pre-activation exactly, so the codes are equal,
      and x_hat = ||x|| (z W_dec + b_pre), the paper's reconstruction at residual scale.
    Difference: stock TopK applies ReLU to the selected values, so a token whose selected
    pre-activation is negative gets 0 there (the paper keeps the negative value). On inputs
    whose top-K pre-activations are all positive both agree exactly.
    """
    if sae.cfg.normalize_activations != "unit_norm":
        raise ConfigError("export_stock_topk needs a unit_norm paper_topk SAE")
    d = sae.cfg.d_in
    r = math.sqrt(d)
    md = SAEMetadata(**{**sae.cfg.metadata.to_dict(), "exported_from": ARCHITECTURE})
    cfg = TopKSAEConfig(d_in=d, d_sae=sae.cfg.d_sae, k=sae.cfg.k, dtype=sae.cfg.dtype,
                        device="cpu",
                        # SAELens applies it at run time; its Literal type omits it
                        normalize_activations="constant_norm_rescale",  # pyright: ignore[reportArgumentType]
                        apply_b_dec_to_input=True, rescale_acts_by_decoder_norm=False, metadata=md)
    stock = TopKSAE(cfg)
    b_enc = sae.b_enc.detach() if sae.cfg.encoder_bias else torch.zeros(sae.cfg.d_sae)
    stock.load_state_dict({
        "W_enc": sae.W_enc.detach().cpu() / r,
        "W_dec": sae.W_dec.detach().cpu() * r,
        "b_dec": sae.b_dec.detach().cpu() * r,
        "b_enc": b_enc.cpu().to(sae.W_enc.dtype),
    })
    return stock
