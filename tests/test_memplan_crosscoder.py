"""The crosscoder's memory plan: the buffer and the model's state counted by hand."""

from __future__ import annotations

from types import SimpleNamespace

from sae_bilingual.config import Recipe, from_dict
from sae_bilingual.study.memplan import LMShape
from sae_bilingual.study.memplan_crosscoder import (
    CrosscoderShape,
    crosscoder_components,
    crosscoder_memory_lines,
    crosscoder_params,
    crosscoder_peak,
)

LM = LMShape(n_layers=4, d_model=64, n_heads=4, n_kv_heads=4, d_head=16, d_mlp=256, d_vocab=100, n_ctx=64)


def _recipe(**cc):
    return from_dict(Recipe, {"device": "cuda", "crosscoder": {"enabled": True, **cc},
                              "data": {"train_tokens_per_lang": 1000, "eval_tokens_per_lang": 100}}).validate()


def test_params_and_buffer_by_hand():
    assert crosscoder_params(3 * 64, 512) == 2 * 192 * 512 + 192 + 512 + 1
    r = _recipe(expansion=4)
    s = CrosscoderShape.from_recipe(r, 64, 3)
    assert (s.d_sae, s.train_rows, s.eval_rows) == (256, 2000, 200)
    comps = {(c.phase, c.name.split(" (")[0]): c.fixed for c in crosscoder_components(r, LM, s)}
    assert comps[("train", "aligned buffer")] == 2000 * (3 * 64 * 4 + 32)  # rows x C*d float32 + labels
    assert comps[("train", "crosscoder weights + grads + Adam state")] == 16 * crosscoder_params(192, 256)
    # twice the checkpoints: the buffer term doubles (its labels do not)
    s2 = CrosscoderShape.from_recipe(r, 64, 6)
    comps2 = {(c.phase, c.name.split(" (")[0]): c.fixed for c in crosscoder_components(r, LM, s2)}
    assert comps2[("train", "aligned buffer")] - 2000 * 32 == 2 * (comps[("train", "aligned buffer")] - 2000 * 32)
    p = crosscoder_peak(r, LM, s)
    assert p["host"] >= comps[("train", "aligned buffer")] and p["device"] > 0


def test_dry_run_lines():
    r = _recipe(layers=[2], checkpoints=[0, 5])
    units = [SimpleNamespace(model_index=0, iteration=it, tokens=it * 10, layers=[1, 2]) for it in (0, 5, 9)]
    fam = SimpleNamespace(hf_config=SimpleNamespace(hidden_size=64, num_attention_heads=4, num_hidden_layers=4,
                                                    intermediate_size=256, vocab_size=100,
                                                    max_position_embeddings=64))
    ctx = SimpleNamespace(family=lambda i: fam)
    lines = crosscoder_memory_lines(r, SimpleNamespace(units=units), ctx)
    assert len(lines) == 2 and "C = 2 checkpoints" in lines[1] and "layer 2" in lines[1]
    off = from_dict(Recipe, {}).validate()
    assert crosscoder_memory_lines(off, SimpleNamespace(units=units), ctx) == []
