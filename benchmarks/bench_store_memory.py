"""Peak memory of streaming a token budget through ActivationStore: tracks the buffer, not the budget.

Each configuration (buffer_vectors x token budget) runs in its own subprocess, which builds the
store, pulls ``budget / batch`` batches from it and reports ``ru_maxrss`` (peak RSS) minus the
RSS it had before the store existed. By default the "LM" is a stand-in with TransformerLens's
``run_with_hooks`` interface that emits a fixed random embedding of each token at the hooks:
the store's memory does not depend on what computes the activations, and a real forward would
only make the run slower (``--real-lm`` uses a random toy Llama HookedTransformer instead).

    python benchmarks/bench_store_memory.py     # d=512, budgets 100k/400k vectors, buffers 16k..256k

``--impls before,after`` (the default) runs each configuration with the store as it was before
the in-place refill (``store_before.ConcatRefillStore``: cat of old + new, permuted copy) and
with today's ``ActivationStore``, side by side. Last lines, per implementation:
``RATIO peak(budget x4)/peak(budget) = X.XX at buffer B; peak/buffer bytes = Y.YY..Z.ZZ`` and
``PEAK/BUFFER <impl> = R.RR at buffer <largest>, budget <largest>`` (target after: <= 1.3).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)


class FakeLM:
    """Minimal stand-in for HookedTransformer.run_with_hooks: hook h gets E_h[tokens] (B, T, d)."""

    def __init__(self, d: int, n_layers: int, vocab: int):
        import torch
        from types import SimpleNamespace

        g = torch.Generator().manual_seed(0)
        self.cfg = SimpleNamespace(n_layers=n_layers, device="cpu", d_model=d)
        self.emb = [torch.randn(vocab, d, generator=g) for _ in range(n_layers + 1)]

    def run_with_hooks(self, toks, return_type=None, stop_at_layer=None, fwd_hooks=()):
        from types import SimpleNamespace

        from sae_bilingual.layers import layer_for_hook

        for name, fn in fwd_hooks:
            fn(self.emb[layer_for_hook(name)][toks], SimpleNamespace(name=name))
        return None


def child(a) -> None:
    """One configuration: print a JSON line with the peak RSS above the pre-store baseline."""
    import psutil
    import torch

    from bench_one_pass import toy_model, toy_windows
    from sae_bilingual.layers import hook_for_layer
    from sae_bilingual.data.store import ActivationStore
    from store_before import ConcatRefillStore

    torch.set_num_threads(1)
    n_win = a.budget // (a.context - 1) + 1
    win = toy_windows(n_win, a.context, a.vocab)
    model = toy_model(a.d, a.layers, a.vocab, a.context) if a.real_lm else FakeLM(a.d, a.layers, a.vocab)
    hooks = [hook_for_layer(layer, a.layers) for layer in range(1, a.layers + 1)][-a.hooks:]
    base = psutil.Process().memory_info().rss
    base_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    cls = ConcatRefillStore if a.impl == "before" else ActivationStore
    store = cls(model, win, hooks, batch_size=a.batch, buffer_vectors=a.buffer,
                            lm_batch_size=a.lm_batch, seed=0)
    t0 = time.perf_counter()
    served = 0
    while served < a.budget:
        b = next(store)
        served += b[hooks[0]].shape[0]
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"impl": a.impl, "buffer": a.buffer, "budget": a.budget, "served": served, "seconds": dt,
                      "base_rss": base, "base_peak": base_peak, "peak_above_base": peak - base,
                      "buffer_bytes": a.buffer * a.d * 4 * len(hooks)}))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hooks", type=int, default=1, help="hooks stored (the deepest ones)")
    p.add_argument("--vocab", type=int, default=1000)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--lm-batch", type=int, default=64)
    p.add_argument("--buffers", default="16384,65536,262144")
    p.add_argument("--budgets", default="100000,400000", help="vectors streamed per configuration")
    p.add_argument("--real-lm", action="store_true")
    p.add_argument("--impls", default="before,after",
                   help="store implementations to compare: 'before' (cat + permuted copy), 'after' (in place)")
    p.add_argument("--impl", default="after", help=argparse.SUPPRESS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--buffer", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--budget", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child(a)
        return {}
    from common import machine_line

    print(f"# {machine_line()}")
    print(f"# d={a.d}, {a.hooks} hook(s), fp32: {a.d * 4 * a.hooks} bytes/vector; "
          f"{'toy LM' if a.real_lm else 'stand-in LM'}; one subprocess per configuration")
    rows = []
    buffers = [int(x) for x in a.buffers.split(",")]
    budgets = [int(x) for x in a.budgets.split(",")]
    common_args = [f"--d={a.d}", f"--layers={a.layers}", f"--hooks={a.hooks}", f"--vocab={a.vocab}",
                   f"--context={a.context}", f"--batch={a.batch}", f"--lm-batch={a.lm_batch}"]
    common_args += ["--real-lm"] if a.real_lm else []
    print(f"{'impl':>6s} {'buffer vec':>10s} {'budget vec':>10s} {'buffer MB':>9s} {'budget MB':>9s} "
          f"{'peak RSS above base MB':>22s} {'peak/buffer':>11s} {'s':>6s}")
    impls = [x.strip() for x in a.impls.split(",") if x.strip()]
    for buf in buffers:
        for bud in budgets:
            for impl in impls:
                cmd = [sys.executable, os.path.abspath(__file__), "--child", f"--buffer={buf}",
                       f"--budget={bud}", f"--impl={impl}", *common_args]
                out = subprocess.run(cmd, capture_output=True, text=True, check=False)
                line = [x for x in out.stdout.splitlines() if x.startswith("{")]
                if not line:
                    print(f"{impl:>6s} {buf:>10d} {bud:>10d} FAILED: {out.stderr.strip().splitlines()[-1:]}")
                    continue
                r = json.loads(line[-1])
                rows.append(r)
                bb = a.d * 4 * a.hooks
                print(f"{impl:>6s} {buf:>10d} {bud:>10d} {buf * bb / 1e6:9.1f} {bud * bb / 1e6:9.1f} "
                      f"{r['peak_above_base'] / 1e6:22.1f} {r['peak_above_base'] / r['buffer_bytes']:11.2f} "
                      f"{r['seconds']:6.1f}")
    lo, hi = budgets[0], budgets[-1]
    b0 = buffers[len(buffers) // 2]
    for impl in impls:
        mine = [r for r in rows if r["impl"] == impl]
        by = {(r["buffer"], r["budget"]): r["peak_above_base"] for r in mine}
        if not mine:
            continue
        ratio_budget = by[(b0, hi)] / by[(b0, lo)] if (b0, hi) in by and (b0, lo) in by else float("nan")
        per_buf = [r["peak_above_base"] / r["buffer_bytes"] for r in mine]
        print(f"[{impl}] budget x{hi / lo:.0f} at buffer {b0}: peak x{ratio_budget:.2f}; buffer "
              f"x{buffers[-1] / buffers[0]:.0f} at budget {hi}: peak "
              f"x{by.get((buffers[-1], hi), float('nan')) / by.get((buffers[0], hi), float('nan')):.2f}")
        print(f"[{impl}] RATIO peak(budget x{hi / lo:.0f})/peak(budget) = {ratio_budget:.2f} at buffer {b0}; "
              f"peak/buffer bytes = {min(per_buf):.2f}..{max(per_buf):.2f}")
    for impl in impls:
        big = [r for r in rows if r["impl"] == impl and r["buffer"] == buffers[-1] and r["budget"] == hi]
        if big:
            print(f"PEAK/BUFFER {impl} = {big[0]['peak_above_base'] / big[0]['buffer_bytes']:.2f} "
                  f"at buffer {buffers[-1]}, budget {hi}")
    return {"rows": rows}


if __name__ == "__main__":
    main()
