"""LM forward throughput (tokens/s) of a random-weight LLM-jp-3 3.7B-shaped Llama, bf16, GPU.

Shapes from LLMJP.md (3.7b: d 3072, 28 layers, 24 heads = KV heads, d_head 128, d_mlp 8192,
vocab 99584, rope_theta 10000). Windows of 64 tokens, ``--batch`` windows per forward. The
forward stops after the deepest layer the study reads (paper layer 28 = the last block's
output): HF runs the base ``LlamaModel`` with every block's hidden state returned (no LM head);
TransformerLens (``--impl tl``) runs ``run_with_cache(names_filter=<28 resid hooks>,
stop_at_layer=28)`` as the store does. Random weights: throughput does not depend on them.

    python benchmarks/bench_lm_forward.py --device cuda --batch 256 --impl hf,tl
Last line: ``TOKENS/s <impl> = N``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from common import machine_line, sync  # noqa: E402

SHAPE = dict(d_model=3072, n_layers=28, n_heads=24, d_head=128, d_mlp=8192, d_vocab=99584)


def time_fn(fn, device: str, warmup: int, reps: int) -> list[float]:
    for _ in range(warmup):
        fn()
    sync(device)
    ts = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        ts.append(time.perf_counter() - t0)
    return ts


def bench_hf(a, toks) -> dict:
    from transformers import LlamaConfig, LlamaModel

    s = {**SHAPE, **a.shape_override}
    cfg = LlamaConfig(hidden_size=s["d_model"], num_hidden_layers=s["n_layers"],
                      num_attention_heads=s["n_heads"], num_key_value_heads=s["n_heads"],
                      head_dim=s["d_head"], intermediate_size=s["d_mlp"], vocab_size=s["d_vocab"],
                      max_position_embeddings=4096, rope_theta=10000.0, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(a.device):
        model = LlamaModel(cfg).to(torch.bfloat16).eval()
    n_params = sum(p.numel() for p in model.parameters())

    @torch.no_grad()
    def fwd():
        out = model(input_ids=toks, output_hidden_states=True, use_cache=False)
        return out.hidden_states  # (n_layers + 1) x (B, T, d): resid_pre 0 + every block output

    ts = time_fn(fwd, a.device, a.warmup, a.reps)
    model = None  # free it now (fwd still refers to the name)
    gc.collect()
    return {"n_params": n_params, "times": ts}


def bench_tl(a, toks) -> dict:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    s = {**SHAPE, **a.shape_override}
    cfg = HookedTransformerConfig(
        d_model=s["d_model"], n_layers=s["n_layers"], n_heads=s["n_heads"], d_head=s["d_head"],
        d_mlp=s["d_mlp"], d_vocab=s["d_vocab"], n_ctx=4096, act_fn="silu", normalization_type="RMS",
        positional_embedding_type="rotary", rotary_dim=s["d_head"], rotary_base=10000,
        gated_mlp=True, final_rms=True, original_architecture="LlamaForCausalLM",
        device=a.device, dtype=torch.bfloat16, init_weights=True, seed=0)
    with torch.device(a.device):
        model = HookedTransformer(cfg).eval()
    hooks = ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post" for i in range(s["n_layers"])]
    want = set(hooks)

    @torch.no_grad()
    def fwd():
        _, cache = model.run_with_cache(toks, names_filter=lambda n: n in want,
                                        stop_at_layer=s["n_layers"], return_type=None)
        return cache

    ts = time_fn(fwd, a.device, a.warmup, a.reps)
    n_params = sum(p.numel() for p in model.parameters())
    model = None  # free it now (fwd still refers to the name)
    gc.collect()
    return {"n_params": n_params, "times": ts}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=256, help="64-token windows per forward")
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--impl", default="hf", help="comma list of hf, tl")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=8)
    p.add_argument("--tiny", action="store_true", help="toy shapes (a CPU smoke test)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    a.shape_override = (dict(d_model=128, n_layers=4, n_heads=4, d_head=32, d_mlp=256, d_vocab=1000)
                        if a.tiny else {})
    print(f"# {machine_line()}")
    vocab = {**SHAPE, **a.shape_override}["d_vocab"]
    g = torch.Generator().manual_seed(0)
    toks = torch.randint(vocab, (a.batch, a.context), generator=g).to(a.device)
    n_tok = a.batch * a.context
    res: dict = {"args": {k: v for k, v in vars(a).items()}, "machine": machine_line()}
    last = None
    for impl in a.impl.split(","):
        try:
            r = {"hf": bench_hf, "tl": bench_tl}[impl](a, toks)
        except Exception as e:  # report and go on with the next implementation
            print(f"{impl}: FAILED {type(e).__name__}: {str(e).splitlines()[0][:300]}")
            res[impl] = {"error": repr(e)[:500]}
            continue
        ts = sorted(r["times"])
        med = ts[len(ts) // 2]
        s = {**SHAPE, **a.shape_override}
        mm_params = r["n_params"] - s["d_vocab"] * s["d_model"]  # embedding lookup is no matmul
        r.update(median_s=med, tokens_per_s=n_tok / med, flops_per_token=2 * mm_params)
        r["achieved_tflops"] = 2 * mm_params * n_tok / med / 1e12  # matmul-params estimate
        if a.device.startswith("cuda"):
            r["max_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
        res[impl] = r
        print(f"{impl}: {r['n_params'] / 1e9:.2f}B params, batch {a.batch}x{a.context} = {n_tok} tokens, "
              f"median {med * 1e3:.1f} ms -> {n_tok / med:,.0f} tokens/s (~{r['achieved_tflops']:.0f} TFLOP/s)")
        last = (impl, n_tok / med)
        torch.cuda.empty_cache() if a.device.startswith("cuda") else None
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1, default=str)
    if last:
        print(f"TOKENS/s {last[0]} = {last[1]:.0f}")
    return res


if __name__ == "__main__":
    main()
