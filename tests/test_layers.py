"""sae_bilingual.layers: paper layer numbering <-> TransformerLens hooks, checked on a real model."""

from __future__ import annotations

import pytest
import torch

from sae_bilingual.layers import (
    LayerError,
    hook_for_layer,
    layer_for_hook,
    parse_layers,
    stop_at_layer_for,
)


def test_hook_for_layer_hand_worked() -> None:
    # The paper's "14th layer" of the 3.7B is TL blocks.13.hook_resid_post; layer 0 = embeddings.
    assert hook_for_layer(0, 28) == "blocks.0.hook_resid_pre"
    assert hook_for_layer(1, 28) == "blocks.0.hook_resid_post"
    assert hook_for_layer(14, 28) == "blocks.13.hook_resid_post"
    assert hook_for_layer(28, 28) == "blocks.27.hook_resid_post"
    assert hook_for_layer(12) == "blocks.11.hook_resid_post"  # released 1.8B SAEs, no bound given


def test_round_trip_both_ways() -> None:
    n = 24
    for layer in range(n + 1):
        assert layer_for_hook(hook_for_layer(layer, n)) == layer
    assert layer_for_hook("blocks.5.hook_resid_pre") == 5  # == blocks.4.hook_resid_post
    assert hook_for_layer(layer_for_hook("blocks.7.hook_resid_post")) == "blocks.7.hook_resid_post"


@pytest.mark.parametrize("bad", [-1, 25, 100])
def test_out_of_range_names_valid_range(bad: int) -> None:
    with pytest.raises(LayerError, match=r"0\.\.24"):
        hook_for_layer(bad, 24)


@pytest.mark.parametrize("bad", [1.0, "3", True, None])
def test_non_int_layer(bad) -> None:
    with pytest.raises(LayerError, match="int"):
        hook_for_layer(bad, 24)


@pytest.mark.parametrize("hook", ["blocks.3.hook_mlp_out", "hook_embed", "blocks.x.hook_resid_post", ""])
def test_layer_for_hook_rejects_non_residual(hook: str) -> None:
    with pytest.raises(LayerError, match="residual-stream"):
        layer_for_hook(hook)


def test_stop_at_layer_for() -> None:
    assert stop_at_layer_for(["blocks.0.hook_resid_pre"]) == 1
    assert stop_at_layer_for(["blocks.0.hook_resid_post"]) == 1
    assert stop_at_layer_for(["blocks.2.hook_resid_post", "blocks.0.hook_resid_pre"]) == 3
    with pytest.raises(LayerError, match="no hooks"):
        stop_at_layer_for([])


def test_stop_at_layer_runs_every_hook_on_a_real_model() -> None:
    """Against TransformerLens itself: each paper layer's hook fires, and equals the full run."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=3, d_model=16, n_ctx=8, d_head=4, n_heads=4, d_vocab=20, act_fn="relu",
        normalization_type="RMS", device="cpu",
    )
    model = HookedTransformer(cfg).eval()
    toks = torch.randint(0, 20, (2, 5))
    with torch.no_grad():
        _, full = model.run_with_cache(toks)
        for layer in range(cfg.n_layers + 1):
            hooks = [hook_for_layer(layer, cfg.n_layers)]
            stop = stop_at_layer_for(hooks)
            _, part = model.run_with_cache(toks, names_filter=hooks, stop_at_layer=stop)
            assert set(part.keys()) == set(hooks)
            torch.testing.assert_close(part[hooks[0]], full[hooks[0]])
    # paper layer l (l >= 1) is the input of block l: resid_post of block l-1 == resid_pre of block l
    torch.testing.assert_close(full["blocks.0.hook_resid_post"], full["blocks.1.hook_resid_pre"])


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("all", [1, 2, 3, 4, 5, 6]),
        ("ALL+emb", [0, 1, 2, 3, 4, 5, 6]),
        ("mid", [3]),
        (4, [4]),
        ("4", [4]),
        ("2-4", [2, 3, 4]),
        (" 2 - 4 ", [2, 3, 4]),
        ([5, "1-2", 5, "mid"], [1, 2, 3, 5]),
        ((0,), [0]),
    ],
)
def test_parse_layers(spec, expected) -> None:
    assert parse_layers(spec, 6) == expected


def test_parse_layers_mid_is_paper_lr_layer() -> None:
    # PAPER.md: the LR grid uses the middle layer n_layers // 2 (3.7B: 28 blocks -> 14).
    assert parse_layers("mid", 28) == [14]
    assert parse_layers("mid", 7) == [3]


@pytest.mark.parametrize(
    "spec,match",
    [
        ("7", r"0\.\.6"),
        (7, r"0\.\.6"),
        ("5-7", r"0\.\.6"),
        ("4-2", "empty"),
        ([], "empty layer list"),
        ("first", "cannot read layer spec"),
        (2.5, "cannot read layer spec"),
        (True, "cannot read layer spec"),
        ("-1", "cannot read layer spec"),
    ],
)
def test_parse_layers_errors(spec, match) -> None:
    with pytest.raises(LayerError, match=match):
        parse_layers(spec, 6)
