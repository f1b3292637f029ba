"""What a residual hook cannot see by itself: the token ids of each pass, and the final model's residuals.

Under ``model.generate`` with a KV cache each forward pass shows a hook only the new positions,
and a hook never sees token ids. :class:`TokenCapture` puts two light PyTorch hooks on a
HookedTransformer: one on ``model.embed`` records every token id the model embeds (``forward``
and ``generate`` both go through it), one on ``blocks[0]`` reads the KV-cache length
(``pos_offset``) of each pass. :class:`FinalLockstep` runs the final model on the same growing
prefix with its *own* KV cache (only up to the hook), re-running from scratch when a call does
not continue the previous prefix; the result equals step-by-step recomputation without a cache.
"""

from __future__ import annotations

from typing import Any

import torch
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from sae_bilingual.residuals import residuals_at


class TokenCapture:
    """The full token prefix ``tokens`` [B, pos_offset + n] and its attention mask, of the model's current pass."""

    def __init__(self, model: Any) -> None:
        self.tokens: torch.Tensor | None = None
        self.attention_mask: torch.Tensor | None = None
        self.pos_offset = 0
        self._stream: torch.Tensor | None = None  # token ids embedded so far
        self._handles = [
            model.embed.register_forward_pre_hook(self._on_embed),
            model.blocks[0].register_forward_pre_hook(self._on_block0, with_kwargs=True),
        ]

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def close(self) -> None:
        """Remove the hooks from the model."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self.reset()

    def reset(self) -> None:
        self._stream = self.tokens = self.attention_mask = None
        self.pos_offset = 0

    def _on_embed(self, module: Any, args: tuple) -> None:
        tokens = args[0] if args else None
        if not isinstance(tokens, torch.Tensor) or tokens.dtype.is_floating_point:
            return
        if tokens.ndim == 1:
            tokens = tokens[None]
        tokens = tokens.detach()
        s = self._stream
        if s is None or s.shape[0] != tokens.shape[0] or s.device != tokens.device:
            self._stream = tokens
        else:
            self._stream = torch.cat([s, tokens], dim=1)

    def _on_block0(self, module: Any, args: tuple, kwargs: dict) -> None:
        resid = args[0] if args else kwargs["resid_pre"]
        entry = kwargs.get("past_kv_cache_entry")
        offset = 0 if entry is None else int(entry.past_keys.shape[1])
        n = int(resid.shape[1])
        total = offset + n
        self.pos_offset = offset
        s = self._stream
        if s is not None and s.shape[0] == resid.shape[0] and s.shape[1] >= total:
            self.tokens = s[:, s.shape[1] - total :]
            self._stream = self.tokens  # keep the buffer bounded
        else:
            self.tokens = None
        am = kwargs.get("attention_mask")
        self.attention_mask = am if am is not None and tuple(am.shape) == (resid.shape[0], total) else None


class FinalLockstep:
    """The final model's residual at ``hook_name`` for a growing token prefix, memoised with its own KV cache.

    ``n_groups`` G: when a batch is G stacked copies of one prompt, the final model runs on
    one copy and its result (and KV cache) is tiled.
    """

    def __init__(self, model: Any, hook_name: str, *, n_groups: int = 1, kv_cache: bool = True) -> None:
        self.model = model
        self.hook_name = hook_name
        self.n_groups = int(n_groups)
        self.kv_cache = bool(kv_cache)
        self.reset()

    def reset(self) -> None:
        self._tokens: torch.Tensor | None = None
        self._resid: torch.Tensor | None = None
        self._cache: Any = None

    def residuals(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, S, d] for ``tokens`` [B, S]; continues the previous call's prefix when it can."""
        memo, memo_resid = self._tokens, self._resid
        padded = attention_mask is not None and not bool(attention_mask.all())
        if (
            memo is not None
            and memo_resid is not None
            and memo.shape[0] == tokens.shape[0]
            and memo.shape[1] <= tokens.shape[1]
            and memo.device == tokens.device
            and torch.equal(tokens[:, : memo.shape[1]], memo)
        ):
            L = memo.shape[1]
            if L == tokens.shape[1]:
                return memo_resid
            if self._cache is not None and not padded:
                new = self.run(tokens[:, L:], cache=self._cache)
                self._tokens = tokens
                self._resid = torch.cat([memo_resid, new.to(memo_resid.device)], dim=1)
                return self._resid
        G = self.n_groups
        tile = G > 1 and _stacked(tokens, G) and (attention_mask is None or _stacked(attention_mask, G))
        run = tokens[: tokens.shape[0] // G] if tile else tokens
        am = attention_mask if padded else None
        if tile and am is not None:
            am = am[: run.shape[0]]
        cache = None
        if self.kv_cache and not padded:
            cfg = self.model.cfg
            cache = TransformerLensKeyValueCache.init_cache(cfg, cfg.device, run.shape[0])
        resid = self.run(run, cache=cache, attention_mask=am)
        if tile:
            resid = resid.repeat(G, *([1] * (resid.ndim - 1)))
            _tile_cache(cache, G)
        self._cache = cache
        self._tokens = tokens
        self._resid = resid
        return resid

    def run(self, tokens: torch.Tensor, cache: Any = None, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One forward of the final model up to the hook (extending ``cache`` when given)."""
        kwargs: dict[str, Any] = {}
        if cache is not None:
            kwargs["past_kv_cache"] = cache
            # with a cache TL wants an explicit mask; our prefixes are never padded here
            kwargs["attention_mask"] = torch.ones_like(tokens)
        elif attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        return residuals_at(self.model, tokens.to(self.model.cfg.device), [self.hook_name], **kwargs)[self.hook_name]


def _stacked(t: torch.Tensor, G: int) -> bool:
    """True when ``t`` [G * b, ...] is G copies of its first b rows."""
    if t.shape[0] % G:
        return False
    b = t.shape[0] // G
    return torch.equal(t, t[:b].repeat(G, *([1] * (t.ndim - 1))))


def _tile_cache(cache: Any, G: int) -> None:
    """Repeat a TransformerLens KV cache G times along the batch (group-major), in place."""
    if cache is None:
        return
    for e in cache.entries:
        e.past_keys = e.past_keys.repeat(G, 1, 1, 1)
        e.past_values = e.past_values.repeat(G, 1, 1, 1)
    cache.previous_attention_mask = cache.previous_attention_mask.repeat(G, 1)
