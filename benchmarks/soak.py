"""Soak test: kill a study at random moments, resume it, and check nothing changed.

Runs the smoke study once cleanly (the reference), then starts the same study in a second
output dir and SIGKILLs it after a random delay, until N kills have been delivered; each
start resumes whatever the previous ones left. When a start finishes before its kill, that directory is compared
with the reference and a fresh one begins. At the end the study runs to completion and
the final tables are compared with the reference:

* tables/summary.csv without timing columns (``seconds``...),
* every features.parquet, codes.safetensors, sae_weights.safetensors, examples.json,
  summary.json (timing keys dropped), tables/lr_grid.csv, tables/intervention*.csv.

Usage::

    .venv/bin/python benchmarks/soak.py --n 20             # ~N x (study time) on a quiet machine
    .venv/bin/python benchmarks/soak.py --n 5 --workdir /tmp/soak --keep
    .venv/bin/python benchmarks/soak.py --compare runs/before runs/after   # two finished runs
    .venv/bin/python benchmarks/soak.py --kill-at intervention_table:1     # one deterministic kill

``--kill-at POINT:N`` (a point of ``sae_bilingual.study.faults``) replaces the timed kills: the
second run ends itself at that point as a SIGKILL would, is resumed, and is compared with the
clean run.

Prints one line per start and ``soak: N kills in S starts, outputs identical`` (exit 0) or the
differences (exit 1).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUILD_WORLD = ("from sae_bilingual.world import WorldConfig, build_world; "
               "build_world(WorldConfig.tiny(), progress=False)")
TIMING = ("seconds", "time", "duration", "updated", "elapsed")


def _is_timing(name: str) -> bool:
    n = name.lower()
    return any(t in n for t in TIMING)


def _csv_without_timing(path: Path) -> str:
    import pandas as pd

    df = pd.read_csv(path)
    return df[[c for c in df.columns if not _is_timing(c)]].to_csv(index=False)


def _json_without_timing(path: Path) -> str:
    obj = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(obj, dict):
        obj = {k: v for k, v in obj.items() if not _is_timing(k)}
    return json.dumps(obj, sort_keys=True)


def compared_files(out: Path) -> dict[str, Path]:
    """The result files that must be identical between a resumed and a clean run."""
    files: dict[str, Path] = {}
    patterns = ("units/*/*/L*/features.parquet", "units/*/*/L*/codes.safetensors",
                "units/*/*/L*/sae/sae_weights.safetensors", "units/*/*/L*/sae/cfg.json",
                "units/*/*/L*/examples.json", "units/*/*/L*/summary.json",
                "tables/summary.csv", "tables/lr_grid.csv", "tables/intervention.csv",
                "tables/intervention_draws.csv")
    for pat in patterns:
        for p in sorted(out.glob(pat)):
            files[str(p.relative_to(out))] = p
    return files


def _content(rel: str, path: Path) -> bytes | str:
    if rel.endswith(".csv"):
        return _csv_without_timing(path)
    if rel.endswith(".json"):
        return _json_without_timing(path)
    return path.read_bytes()


def _close(a: object, b: object, rtol: float) -> bool:
    """Equal, or both numbers within ``rtol`` (relative) of each other; NaN equals NaN."""
    if a == b:
        return True
    try:
        fa, fb = float(a), float(b)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return (fa != fa and fb != fb) or abs(fa - fb) <= rtol * max(abs(fa), abs(fb))


def _records(rel: str, path: Path) -> list[dict]:
    """A csv's rows or a json object, timing keys dropped, as a list of dicts."""
    if rel.endswith(".csv"):
        import pandas as pd

        df = pd.read_csv(path)
        return df[[c for c in df.columns if not _is_timing(c)]].to_dict("records")
    obj = json.loads(path.read_text(encoding="utf-8"))
    return [{k: v for k, v in obj.items() if not _is_timing(k)}] if isinstance(obj, dict) else [{"": obj}]


def _tolerant_equal(rel: str, pa: Path, pb: Path, rtol: float, new_columns: set[str]) -> bool:
    """Tables/json equal within ``rtol``, ignoring keys that only the second one has (noted)."""
    ra, rb = _records(rel, pa), _records(rel, pb)
    if len(ra) != len(rb):
        return False
    for x, y in zip(ra, rb):
        if set(x) - set(y):
            return False
        new_columns.update(set(y) - set(x))
        if not all(_close(x[k], y[k], rtol) for k in x):
            return False
    return True


def compare_outputs(ref: Path, other: Path, *, rtol: float | None = None,
                    notes: list[str] | None = None) -> list[str]:
    """Differences between two study dirs (empty list: identical up to timing columns).

    ``rtol``: csv/json numbers may differ by this relative amount and OTHER may add keys
    (a change that adds summary columns, or sums them in another order); what was added is
    appended to ``notes``. Binary files (parquet, safetensors) are always compared exactly.
    """
    a, b = compared_files(ref), compared_files(other)
    diffs = [f"missing in {other.name}: {k}" for k in sorted(set(a) - set(b))]
    diffs += [f"extra in {other.name}: {k}" for k in sorted(set(b) - set(a))]
    added: set[str] = set()
    for rel in sorted(set(a) & set(b)):
        if _content(rel, a[rel]) == _content(rel, b[rel]):
            continue
        if rtol is not None and rel.endswith((".csv", ".json")) and _tolerant_equal(rel, a[rel], b[rel], rtol, added):
            continue
        diffs.append(f"differs: {rel}{_explain(rel, a[rel], b[rel])}")
    if added and notes is not None:
        notes.append(f"keys only in {other.name} (allowed by --rtol): {sorted(added)}")
    return diffs


def _explain(rel: str, pa: Path, pb: Path) -> str:
    """A short hint of how two files differ (max |delta| of tensors / changed columns)."""
    try:
        if rel.endswith(".safetensors"):
            from safetensors.torch import load_file

            ta, tb = load_file(str(pa)), load_file(str(pb))
            worst = {k: float((ta[k].double() - tb[k].double()).abs().max()) for k in ta if k in tb
                     and ta[k].shape == tb[k].shape and not bool((ta[k] == tb[k]).all())}
            return f" (tensors differing, max |delta|: {worst or 'header only'})"
        if rel.endswith(".parquet") or rel.endswith(".csv"):
            import pandas as pd

            da = pd.read_parquet(pa) if rel.endswith(".parquet") else pd.read_csv(pa)
            db = pd.read_parquet(pb) if rel.endswith(".parquet") else pd.read_csv(pb)
            cols = [c for c in da.columns if c in db.columns and not _is_timing(c)
                    and not da[c].astype(str).equals(db[c].astype(str))]
            only = sorted(set(da.columns) ^ set(db.columns))
            return f" (values differ in columns {cols}; columns in one file only: {only})"
    except Exception as e:  # noqa: BLE001  a hint only
        return f" ({e})"
    return ""


def study_cmd(recipe: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "sae_bilingual.cli", "study", recipe, "--output-dir", str(out), "-q"]


def run_env(cache: Path) -> dict[str, str]:
    env = dict(os.environ, SAE_BILINGUAL_CACHE=str(cache), PYTHONUNBUFFERED="1")
    env.setdefault("OMP_NUM_THREADS", "1")  # same thread count in every run
    return env


def run_to_end(recipe: str, out: Path, env: dict[str, str], log: Path) -> float:
    t0 = time.time()
    with open(log, "ab") as f:
        rc = subprocess.run(study_cmd(recipe, out), cwd=REPO, env=env, stdout=f, stderr=f).returncode
    if rc != 0:
        raise SystemExit(f"soak: the study failed (exit {rc}); see {log}")
    return time.time() - t0


def phase(out: Path) -> str:
    """What the killed run had finished, read from its output dir."""
    done = len(list(out.glob("units/*/*/L*/summary.json")))
    saes = len(list(out.glob("units/*/*/L*/sae")))
    if (out / "report.html").exists():
        return f"finished ({done} layers)"
    if (out / "tables" / "intervention.csv").exists():
        return f"figures/report ({done} layers done)"
    if not (out / "tables" / "lr_grid.csv").exists():
        return "startup / LR grid"
    return f"units: {done} layers done, {saes - done} analysing"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20, help="number of SIGKILLs")
    ap.add_argument("--recipe", default="recipes/smoke.yaml")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temp dir (removed unless --keep)")
    ap.add_argument("--cache", type=Path, default=None, help="SAE_BILINGUAL_CACHE (default: env or <workdir>/cache)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill delays")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("REF", "OTHER"),
                    help="only compare two finished study folders (e.g. before/after a refactor) and exit")
    ap.add_argument("--rtol", type=float, default=None,
                    help="with --compare: csv/json numbers equal within this relative tolerance, and keys "
                         "OTHER adds are listed, not counted (e.g. 1e-9 for a change that sums in another order)")
    ap.add_argument("--kill-at", default=None, metavar="POINT:N",
                    help="one deterministic kill at a point of sae_bilingual.study.faults instead of --n timed ones")
    args = ap.parse_args(argv)
    if args.compare:
        notes: list[str] = []
        diffs = compare_outputs(*args.compare, rtol=args.rtol, notes=notes)
        print("\n".join(notes + diffs) or "", end="\n" if notes or diffs else "")
        if not diffs:
            tol = f" (csv/json numbers within rtol {args.rtol:g})" if args.rtol is not None else ""
            print(f"identical: {len(compared_files(args.compare[0]))} result files{tol}")
        return 1 if diffs else 0

    work = args.workdir or Path(tempfile.mkdtemp(prefix="sae_soak_"))
    work.mkdir(parents=True, exist_ok=True)
    cache = args.cache or Path(os.environ.get("SAE_BILINGUAL_CACHE") or work / "cache")
    env = run_env(cache)
    log = work / "soak.log"
    rng = random.Random(args.seed)

    ref = work / "clean"
    shutil.rmtree(ref, ignore_errors=True)
    with open(log, "ab") as f:  # build (or find) the tiny world first, so runs time alike
        subprocess.run([sys.executable, "-c", BUILD_WORLD],
                       cwd=REPO, env=env, stdout=f, stderr=f, check=True)
    t_clean = run_to_end(args.recipe, ref, env, log)
    print(f"clean run: {t_clean:.1f} s -> {ref}", flush=True)

    if args.kill_at:
        return _kill_at(args, ref, work, env, log)
    failures: list[str] = []
    cycle = 0
    out = work / f"killed_{cycle}"
    shutil.rmtree(out, ignore_errors=True)
    kills = starts = 0
    while kills < args.n and starts < 3 * args.n:  # N delivered SIGKILLs, not N attempts
        starts += 1
        i = kills + 1
        delay = rng.uniform(0.2, 1.0) * t_clean
        with open(log, "ab") as f:
            proc = subprocess.Popen(study_cmd(args.recipe, out), cwd=REPO, env=env, stdout=f, stderr=f)
            try:
                rc = proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                rc = None
        if rc is None:
            kills += 1
            print(f"kill {i}/{args.n}: SIGKILL after {delay:.1f} s in {out.name}: {phase(out)}", flush=True)
            continue
        if rc != 0:
            failures.append(f"{out.name}: resumed run exited {rc} (see {log})")
            print(f"start {starts}: run exited {rc} before the kill", flush=True)
            break
        diffs = compare_outputs(ref, out)
        failures += [f"{out.name}: {d}" for d in diffs]
        print(f"start {starts}: {out.name} finished before its kill ({delay:.1f} s): "
              f"{'identical' if not diffs else f'{len(diffs)} differences'}; starting a fresh dir", flush=True)
        cycle += 1
        out = work / f"killed_{cycle}"
        shutil.rmtree(out, ignore_errors=True)
    run_to_end(args.recipe, out, env, log)
    diffs = compare_outputs(ref, out)
    failures += [f"{out.name}: {d}" for d in diffs]
    if failures:
        print(f"soak: {kills} kills in {starts} starts, {len(failures)} differences:")
        for d in failures:
            print(f"  {d}")
    else:
        print(f"soak: {kills} kills in {starts} starts, outputs identical")
    if not args.keep and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


def _kill_at(args: argparse.Namespace, ref: Path, work: Path, env: dict[str, str], log: Path) -> int:
    """Run the study until it ends itself at ``--kill-at``, resume it, compare with ``ref``."""
    out = work / "killed_at"
    shutil.rmtree(out, ignore_errors=True)
    with open(log, "ab") as f:
        rc = subprocess.run(study_cmd(args.recipe, out), cwd=REPO, env=dict(env, SAE_BILINGUAL_CRASH_AFTER=args.kill_at),
                            stdout=f, stderr=f).returncode
    if rc != 137:
        print(f"soak: the run did not end at {args.kill_at} (exit {rc}); see {log}")
        return 1
    print(f"killed at {args.kill_at}: {phase(out)}", flush=True)
    run_to_end(args.recipe, out, env, log)
    diffs = compare_outputs(ref, out)
    print("\n".join(diffs) if diffs else f"soak: killed at {args.kill_at} and resumed: "
          f"identical to the clean run ({len(compared_files(ref))} result files)")
    if not args.keep and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
