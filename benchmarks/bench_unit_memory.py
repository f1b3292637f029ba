"""Is the memory plan true? One unit of a 150M-shaped LLM-jp-3, predicted vs measured peak RSS.

A random-weight Llama with LLM-jp-3 150M's shape (d 512, 12 layers, 8 heads, SwiGLU 2048, the
full 99,584-id vocabulary, untied) is saved with ``save_pretrained`` as a root of
``iter_NNNNNNN`` folders; the study then runs one unit of it on the CPU over the shared Tanaka
corpus with the LLM-jp tokenizer, each case in a fresh process: every layer in one LM pass, and
the 12 layers forced into 3 passes of 4. The process records the
plan the unit was given (its predicted peak, the process's own resident bytes at planning
included) and its measured peak RSS (``ru_maxrss``) once the unit is done. On the CPU the
device is the host's RAM, so the plan's peak is the whole process's.

    .venv/bin/python benchmarks/bench_unit_memory.py            # ~5-10 min on 2 cores

Last line: ``RATIO measured/predicted one-group = A.AA three-groups = B.BB`` (target 0.8-1.2).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import torch
import yaml
from transformers import LlamaConfig, LlamaForCausalLM

from sae_bilingual.config import load_recipe
from sae_bilingual.study import memplan, pipeline, timing
from sae_bilingual.study.run import run_study

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SAE_BILINGUAL_SHARED", REPO.parent / "shared"))
TOKENIZER = SHARED / "data" / "llm-jp-tokenizer" / "llm-jp-tokenizer-100k.ver3.0b1.model"
CORPUS = SHARED / "data" / "small_parallel_enja"


def make_model(root: Path) -> None:
    """A random LLM-jp-3 150M-shaped Llama as ``root/iter_0000100`` (float32 safetensors)."""
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=512, num_hidden_layers=12, num_attention_heads=8, num_key_value_heads=8,
                      head_dim=64, intermediate_size=2048, vocab_size=99_584, max_position_embeddings=4096,
                      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1,
                      eos_token_id=2, hidden_act="silu")
    LlamaForCausalLM(cfg).save_pretrained(root / "iter_0000100", safe_serialization=True)


def write_recipe(work: Path, case: str) -> Path:
    """The case's recipe as YAML in ``work`` (its output folder beside it)."""
    root, out = work / "model", work / f"out-{case}"
    o = {
        "name": "bench-unit-memory", "output_dir": str(out), "device": "cpu", "dtype": "float32",
        "models": [{"family": "llm-jp-3-150m", "source": str(root), "tokenizer": str(TOKENIZER),
                    "checkpoints": [100], "layers": "all"}],
        "data": {"corpus": "text", "paths": {"en": str(CORPUS / "train.en"), "ja": str(CORPUS / "train.ja")},
                 "languages": ["en", "ja"], "context": 64, "train_tokens_per_lang": 24_000,
                 "eval_tokens_per_lang": 6_000, "buffer_vectors": 48_000, "lm_batch_size": 32,
                 "activation_cache": False},
        "sae": {"k": 32, "expansion": 4, "lr": 5e-4, "batch_size": 2048, "warmup_steps": 2},
        "intervention": {"enabled": False},
    }
    path = work / f"recipe-{case}.yaml"
    path.write_text(yaml.safe_dump(o))
    return path


STAGE_PHASE = {"model load": "load", "LM + SAE training": "train"}
"""The pipeline's timed stages -> the plan's phases (every other stage is the analysis)."""


def rss_now() -> int:
    """Resident bytes of this process (``VmRSS``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class PhaseSampler:
    """Samples RSS every 10 ms and keeps each plan phase's peak, the phase named by the
    pipeline stage running now (``StageTimer.stage`` is wrapped to say which)."""

    def __init__(self) -> None:
        self.phase, self.peak, self._stop = "setup", {}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak[self.phase] = max(self.peak.get(self.phase, 0), rss_now())

    def wrap(self, stage):
        """``StageTimer.stage`` that also switches the phase being sampled."""
        sampler = self

        @contextmanager
        def staged(timer, name):
            before, sampler.phase = sampler.phase, STAGE_PHASE.get(name, "analyse")
            sampler.peak[sampler.phase] = max(sampler.peak.get(sampler.phase, 0), rss_now())
            with stage(timer, name):
                yield
            sampler.peak[sampler.phase] = max(sampler.peak.get(sampler.phase, 0), rss_now())
            sampler.phase = before
        return staged

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_case(args: argparse.Namespace) -> None:
    """In a fresh process: run the unit in ``--groups`` passes, print {predicted, measured, groups,
    per-phase predicted and measured} as JSON."""
    torch.set_num_threads(2)
    seen: dict = {}

    def forced(recipe, hf_config, layers, unit_id="unit"):
        """The unit's layers in ``--groups`` passes, and the plan's peak for them (baseline: now)."""
        groups = memplan.split_balanced(layers, args.groups)
        comps = memplan.unit_components(recipe, memplan.LMShape.from_hf_config(hf_config))
        n = max(map(len, groups))
        peak = memplan.pass_peak(comps, n, merged=True)
        phases = {p: sum(c.bytes(n) for c in comps if c.phase == p) for p in memplan.PHASES}
        seen.update(predicted=peak["device"] + peak["host"], groups=groups, predicted_phases=phases)
        return groups

    pipeline.unit_groups = forced
    sampler = PhaseSampler()
    timing.StageTimer.stage = sampler.wrap(timing.StageTimer.stage)
    run_study(load_recipe(write_recipe(Path(args.workdir), f"g{args.groups}")), progress=False)
    measured = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({**seen, "measured": measured, "measured_phases": sampler.stop()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--groups", type=int, help="(internal) run one case with this many LM passes")
    ap.add_argument("--workdir")
    args = ap.parse_args()
    if args.groups:
        return run_case(args)
    if not TOKENIZER.exists() or not (CORPUS / "train.en").exists():
        sys.exit(f"needs the shared tokenizer and corpus under {SHARED} (SAE_BILINGUAL_SHARED)")
    work = Path(tempfile.mkdtemp(prefix="bench_unit_memory_"))
    make_model(work / "model")
    ratios = {}
    for case, groups in (("one", 1), ("three", 3)):
        cmd = [sys.executable, __file__, "--groups", str(groups), "--workdir", str(work)]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if res.returncode != 0:
            sys.exit(f"case {case} failed:\n{res.stderr[-4000:]}")
        got = json.loads(res.stdout.strip().splitlines()[-1])
        assert len(got["groups"]) == groups, got["groups"]
        ratios[case] = got["measured"] / got["predicted"]
        print(f"{case:>5} group(s) {got['groups']}: predicted peak {got['predicted'] / 1e9:.2f} GB, "
              f"measured peak RSS {got['measured'] / 1e9:.2f} GB, ratio {ratios[case]:.2f}")
        for phase, pred in got.get("predicted_phases", {}).items():
            meas = got.get("measured_phases", {}).get(phase, 0)
            print(f"      phase {phase:<8} predicted {pred / 1e9:.2f} GB, measured {meas / 1e9:.2f} GB")
    print(f"RATIO measured/predicted one-group = {ratios['one']:.2f} three-groups = {ratios['three']:.2f}")


if __name__ == "__main__":
    main()
