"""Feature masks for the intervention: which m features of a class are injected, per draw.

``class_mask`` draws m live features of one class (English, Japanese, Mixed, ...) with a seed;
``scale_m`` converts the paper's m (for 32,768 latents) to an SAE of another width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from sae_bilingual.errors import ConfigError, DataError

D_SAE_PAPER = 32768


def mask_tensor(mask: torch.Tensor | np.ndarray | Sequence[int] | None, d_sae: int) -> torch.Tensor:
    """A float mask [d_sae] from None (all ones), a bool/float vector [d_sae] (or [G, d_sae]:
    one mask per group), or int feature ids.

    Integer inputs are always read as feature indices (so ``[0, 1]`` selects features 0 and 1).
    """
    if mask is None:
        return torch.ones(d_sae)
    t = mask if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask))
    if t.dtype == torch.bool or t.dtype.is_floating_point:
        if t.shape[-1:] != (d_sae,) or t.ndim > 2:
            raise ConfigError(f"mask has shape {tuple(t.shape)}; expected ({d_sae},) or (G, {d_sae}) for this SAE")
        return t.detach().float().cpu()
    idx = t.long().reshape(-1).cpu()
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= d_sae):
        raise ConfigError(f"mask feature indices must lie in 0..{d_sae - 1}")
    out = torch.zeros(d_sae)
    out[idx] = 1.0
    return out


def _class_column(features_df: pd.DataFrame) -> pd.Series:
    if "cls" not in features_df.columns:
        raise DataError(
            "the features table has no 'cls' column; produce it with "
            "sae_bilingual.analysis.features.analyse_features"
        )
    cls = features_df["cls"].astype(str)
    if "dead" in features_df.columns:
        cls = cls.where(~features_df["dead"].astype(bool), "dead")
    return cls


def class_features(features_df: pd.DataFrame, cls: str) -> np.ndarray:
    """Indices (feature ids) of live features of class ``cls`` ("en", "ja", "mixed", ...)."""
    col = _class_column(features_df)
    if cls == "dead":
        raise ConfigError("dead features are never injected; choose a language code or 'mixed'")
    ids = features_df.index[(col == cls).to_numpy()]
    return np.asarray(ids, dtype=np.int64)


def class_mask(features_df: pd.DataFrame, cls: str, m: int, seed: int, d_sae: int | None = None) -> torch.Tensor:
    """0/1 mask [d_sae] selecting ``m`` live features of class ``cls`` drawn with ``seed``."""
    d = int(d_sae) if d_sae is not None else int(len(features_df))
    ids = class_features(features_df, cls)
    if m < 0:
        raise ConfigError(f"m must be >= 0, got {m}")
    if len(ids) < m:
        counts = _class_column(features_df).value_counts().to_dict()
        raise DataError(
            f"class {cls!r} has only {len(ids)} live features but m={m} were requested; "
            f"lower m (e.g. with scale_m) to at most {len(ids)} (features per class: {counts})"
        )
    if len(ids) and int(ids.max()) >= d:
        raise ConfigError(f"feature ids go up to {int(ids.max())} but d_sae={d}")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(ids, size=m, replace=False) if m else np.zeros(0, dtype=np.int64)
    out = torch.zeros(d)
    out[torch.as_tensor(chosen, dtype=torch.long)] = 1.0
    return out


def class_masks(features_df: pd.DataFrame, cls: str, m: int, n_draws: int, seed: int, d_sae: int | None = None) -> list[torch.Tensor]:
    """``n_draws`` independent masks (seeds ``seed, seed+1, ...``) for the averaged rows."""
    return [class_mask(features_df, cls, m, seed + i, d_sae) for i in range(n_draws)]


def scale_m(m_paper: int, d_sae: int, d_sae_paper: int = D_SAE_PAPER) -> int:
    """Scale the paper's m (for 32,768 latents) to an SAE with ``d_sae`` latents (>= 1)."""
    if m_paper <= 0:
        return 0
    return max(1, int(math.floor(m_paper * d_sae / d_sae_paper + 0.5)))
