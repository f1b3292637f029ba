"""L layers from one LM pass vs L single-layer runs (toy random Llama HookedTransformer).

Two measurements, interleaved (repeats alternate the order; medians):
1. activations only: ``sae_bilingual.data.store.collect_activations`` over the same windows for all
   L hooks at once vs for one hook (the deepest, which needs the whole forward) — what the
   one-pass store saves;
2. end to end: ``ActivationStore`` + ``sae_bilingual.sae.train.train_saes`` (SAELens
   MultiSAETrainer, paper TopK SAE) for all L hooks in one run vs one run per hook.
The one-pass run does the LM forward once and L SAE steps per batch; a single-layer run does
one forward (stopped at its layer) and one SAE step. So (1) should be ~1x, and in (2) the
one pass costs (f + L s)/(f + s) of one single run while L single runs cost L f + L s.

    python benchmarks/bench_one_pass.py           # d=128, 6 layers; ~60 s on 2 idle cores
Last line: ``RATIO one-pass/single = X.XX (activations); L-singles/one-pass = Y.YY (end to end)``.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from common import machine_line  # noqa: E402


def toy_model(d: int, n_layers: int, vocab: int, ctx: int):
    """Random-weight Llama-style HookedTransformer (RMSNorm, rotary, gated SiLU MLP)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        d_model=d, n_layers=n_layers, n_heads=max(1, d // 32), d_head=32, d_mlp=4 * d, d_vocab=vocab,
        n_ctx=ctx, act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
        rotary_dim=32, gated_mlp=True, final_rms=True, original_architecture="LlamaForCausalLM",
        seed=0, device="cpu")
    return HookedTransformer(cfg).eval()


def toy_windows(n: int, ctx: int, vocab: int, seed: int = 0):
    from sae_bilingual.data.corpus import Windows

    g = torch.Generator().manual_seed(seed)
    toks = torch.randint(3, vocab, (n, ctx), generator=g)
    toks[:, 0] = 1  # BOS
    return Windows(tokens=toks, lengths=torch.full((n,), ctx), lang=torch.arange(n) % 2,
                   doc_id=torch.arange(n), languages=("en", "ja"), pad_id=0)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--vocab", type=int, default=2000)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--windows", type=int, default=96, help="windows for the activations-only test")
    p.add_argument("--batch", type=int, default=512, help="SAE batch (vectors)")
    p.add_argument("--steps", type=int, default=6, help="SAE steps per end-to-end run")
    p.add_argument("--expansion", type=int, default=8)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--lm-batch", type=int, default=32)
    p.add_argument("--e2e-reps", type=int, default=1, help="end-to-end repeats (each = 1 + L runs)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from sae_bilingual.layers import hook_for_layer
    from sae_bilingual.data.store import ActivationStore, collect_activations
    from sae_bilingual.config import SAESpec
    from sae_bilingual.sae.train import TrainRun, train_saes

    print(f"# {machine_line()}")
    print(f"# toy Llama d={a.d} layers={a.layers} vocab={a.vocab} ctx={a.context}; SAE n={a.expansion * a.d} "
          f"K=32 B={a.batch} steps={a.steps}")
    torch.manual_seed(0)
    model = toy_model(a.d, a.layers, a.vocab, a.context)
    hooks = [hook_for_layer(layer, a.layers) for layer in range(1, a.layers + 1)]  # paper layers 1..L
    deepest = hooks[-1]
    win = toy_windows(a.windows, a.context, a.vocab)
    n_win_e2e = (a.steps + 2) * a.batch // (a.context - 1) + 8
    win_e2e = toy_windows(n_win_e2e, a.context, a.vocab, seed=1)
    spec = SAESpec(k=32, expansion=a.expansion, batch_size=a.batch, warmup_steps=0, lr=1e-3)
    run = TrainRun(total_steps=a.steps)

    def acts(hs):
        collect_activations(model, win, hs, batch_size=a.lm_batch)

    def e2e(hs):
        store = ActivationStore(model, win_e2e, hs, batch_size=a.batch,
                                buffer_vectors=4 * a.batch, lm_batch_size=a.lm_batch, seed=0)
        train_saes(store, hs, spec, run)

    def t(fn, *args) -> float:
        t0 = time.perf_counter()
        fn(*args)
        return time.perf_counter() - t0

    acts(hooks)  # warm-up
    ta = {"all": [], "one": []}
    te = {"all": [], "one_deepest": [], "singles_sum": []}
    for r in range(a.reps):
        order = ["all", "one"] if r % 2 == 0 else ["one", "all"]
        for o in order:
            ta[o].append(t(acts, hooks if o == "all" else [deepest]))
    for r in range(a.e2e_reps):
        te["all"].append(t(e2e, hooks))
        singles = [t(e2e, [h]) for h in (hooks if r % 2 == 0 else hooks[::-1])]
        te["singles_sum"].append(sum(singles))
        te["one_deepest"].append(singles[-1] if r % 2 == 0 else singles[0])
    m = {k: statistics.median(v) for k, v in ta.items()}
    e = {k: statistics.median(v) for k, v in te.items()}
    L = len(hooks)
    r_act = m["all"] / m["one"]
    r_e2e_one = e["all"] / e["one_deepest"]
    r_e2e_singles = e["singles_sum"] / e["all"]
    print(f"activations ({a.windows} windows): all {L} hooks in one pass {m['all']:.2f} s, deepest hook "
          f"alone {m['one']:.2f} s -> one-pass/single = {r_act:.2f}; {L} single passes would take "
          f"~{L * m['one']:.2f} s (L x single)")
    print(f"end to end ({a.steps} steps x {a.batch} vectors, LM + store + SAE training): one pass for {L} SAEs "
          f"{e['all']:.2f} s, one single-layer run (deepest) {e['one_deepest']:.2f} s -> ratio {r_e2e_one:.2f}; "
          f"{L} single runs {e['singles_sum']:.2f} s -> L-singles/one-pass = {r_e2e_singles:.2f}")
    print(f"RATIO one-pass/single = {r_act:.2f} (activations); {r_e2e_one:.2f} (end to end); "
          f"L-singles/one-pass = {r_e2e_singles:.2f} (end to end)")
    return {"acts": m, "e2e": e}


if __name__ == "__main__":
    main()
