"""Paper layer numbering <-> TransformerLens hook names, in one place.

The paper (and llm-jp-sae) counts layer 0 as the embedding output and layer l >= 1 as the
output of decoder block l-1. So paper layer 0 is ``blocks.0.hook_resid_pre`` and paper
layer l >= 1 is ``blocks.{l-1}.hook_resid_post`` (HF ``hidden_states[l]``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from sae_bilingual.errors import ConfigError

_RESID_POST = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")
_RESID_PRE0 = "blocks.0.hook_resid_pre"


class LayerError(ConfigError):
    """A layer number or hook name that does not exist in the model."""


def hook_for_layer(layer: int, n_layers: int | None = None) -> str:
    """Hook name for paper layer ``layer`` (0 = embeddings, l = output of block l-1)."""
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise LayerError(f"layer must be an int, got {layer!r}")
    upper = "" if n_layers is None else f"..{n_layers}"
    if layer < 0 or (n_layers is not None and layer > n_layers):
        raise LayerError(
            f"layer {layer} is out of range: paper layers run 0{upper} "
            f"(0 = embeddings, l = output of block l-1)"
            + ("" if n_layers is None else f" for this {n_layers}-block model")
        )
    return _RESID_PRE0 if layer == 0 else f"blocks.{layer - 1}.hook_resid_post"


def layer_for_hook(hook: str) -> int:
    """Paper layer of a residual-stream hook name; the inverse of :func:`hook_for_layer`."""
    if hook == _RESID_PRE0:
        return 0
    m = _RESID_POST.match(hook)
    if m:
        return int(m.group(1)) + 1
    pre = re.match(r"^blocks\.(\d+)\.hook_resid_pre$", hook)
    if pre:  # blocks.l.hook_resid_pre == blocks.(l-1).hook_resid_post
        return int(pre.group(1))
    raise LayerError(
        f"{hook!r} is not a residual-stream hook; expected 'blocks.0.hook_resid_pre' or "
        "'blocks.<i>.hook_resid_post'"
    )


def stop_at_layer_for(hooks: Iterable[str]) -> int:
    """``stop_at_layer`` for ``HookedTransformer.forward`` that still runs every hook given.

    TransformerLens runs blocks ``[0, stop_at_layer)``; the deepest paper layer l needs
    block l-1, so we stop at ``max(l)`` (at least 1 so that ``blocks.0.hook_resid_pre`` fires).
    """
    layers = [layer_for_hook(h) for h in hooks]
    if not layers:
        raise LayerError("no hooks requested")
    return max(1, max(layers))


def parse_layers(spec: str | int | Sequence[int | str], n_layers: int) -> list[int]:
    """Expand a recipe's layer spec into sorted paper layers.

    Accepts ``"all"`` (1..n_layers), ``"mid"`` (n_layers // 2, the paper's LR-grid layer),
    ``"all+emb"`` (0..n_layers), an int, a range string ``"2-6"``, or a list of those.
    """
    if isinstance(spec, (list, tuple)):
        out: set[int] = set()
        for item in spec:
            out.update(parse_layers(item, n_layers))
        if not out:
            raise LayerError("empty layer list; use e.g. 'all', 'mid', 3 or '2-6'")
        return sorted(out)
    if isinstance(spec, int) and not isinstance(spec, bool):
        hook_for_layer(spec, n_layers)
        return [spec]
    if isinstance(spec, str):
        s = spec.strip().lower()
        if s == "all":
            return list(range(1, n_layers + 1))
        if s == "all+emb":
            return list(range(0, n_layers + 1))
        if s == "mid":
            return [n_layers // 2]
        if re.fullmatch(r"\d+", s):
            return parse_layers(int(s), n_layers)
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", s)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if lo > hi:
                raise LayerError(f"layer range {spec!r} is empty (start > end)")
            for edge in (lo, hi):
                hook_for_layer(edge, n_layers)
            return list(range(lo, hi + 1))
    raise LayerError(
        f"cannot read layer spec {spec!r}; use 'all', 'all+emb', 'mid', an int 0..{n_layers}, "
        "a range like '2-6', or a list of these"
    )
