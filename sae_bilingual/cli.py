"""`sae-bilingual` command line. ``main(argv)`` is importable and testable."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from sae_bilingual.config import load_recipe
from sae_bilingual.config_checks import check_path_length, check_release_path
from sae_bilingual.config_loading import yaml_error_line
from sae_bilingual.errors import ConfigError, OutputError, SaeBilingualError
from sae_bilingual.report.figures import make_all_figures
from sae_bilingual.report.html import write_report
from sae_bilingual.report.neuronpedia import export_all_neuronpedia
from sae_bilingual.report.release import export_release
from sae_bilingual.sae.convert import RELEASED_HOOK, convert_released
from sae_bilingual.study.outdir import is_study_folder, output_lock
from sae_bilingual.study.run import run_study
from sae_bilingual.study.summary import check_layer_files, collect_summary
from sae_bilingual.world import WorldConfig, build_world

EMBEDDED_RECIPES = Path(__file__).parent / "recipes"


def parse_set(items: Sequence[str]) -> dict[str, object]:
    """``--set FIELD=VALUE`` items as recipe overrides (values read as YAML)."""
    out: dict[str, object] = {}
    for item in items:
        if "=" not in item:
            raise SaeBilingualError(f"--set {item!r}: write FIELD=VALUE, e.g. --set sae.k=16")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: {yaml_error_line(e)}, e.g. --set 'sae.lr_grid=[0.001, 0.002]'") from None
    return out


def resolve_recipe_path(name: str | None) -> Path:
    """A recipe file path, or the bare name of an embedded recipe ('toy' by default).

    Only a bare name (no '/', no .yaml/.yml) looks in the embedded recipes: a mistyped path
    is an error, never silently the packaged recipe of the same file name.
    """
    if name is None:
        name = "toy"
    p = Path(name)
    if p.is_file():
        return p
    names = sorted(q.stem for q in EMBEDDED_RECIPES.glob("*.yaml"))
    if p.exists() or "/" in name or os.sep in name or p.suffix.lower() in (".yaml", ".yml"):
        what = "is not a file" if p.exists() else "does not exist"
        raise SaeBilingualError(f"recipe file {name} {what}; check the path (a bare name such as "
                                f"'smoke' picks an embedded recipe: {', '.join(names)})")
    embedded = EMBEDDED_RECIPES / f"{name}.yaml"
    if embedded.is_file():
        return embedded
    raise SaeBilingualError(f"recipe {name!r} not found: give a YAML path or one of {', '.join(names)}")


def cmd_study(args: argparse.Namespace) -> int:
    overrides = parse_set(args.set or [])
    if args.output_dir is not None:  # ("" is refused by the recipe check, never ignored)
        overrides["output_dir"] = args.output_dir
    recipe = load_recipe(resolve_recipe_path(args.recipe), overrides)
    if args.estimate_time and not args.dry_run:
        raise SaeBilingualError("--estimate-time goes with --dry-run (it times this device's kernels instead of "
                                "running the study); add --dry-run")
    result = run_study(recipe, dry_run=args.dry_run, progress=not args.quiet, force=args.force,
                       estimate_time=args.estimate_time)
    print(result if args.dry_run else f"report: {result}")
    return 0


def cmd_world(args: argparse.Namespace) -> int:
    cfg = WorldConfig.tiny() if args.tiny else WorldConfig()
    world = build_world(cfg, progress=not args.quiet)
    print(f"world: {world.root}")
    print(f"build: {world.build_seconds:.1f} s; checkpoints: {len(world.checkpoints)}")
    curve = world.loss_curve
    for _, row in curve.iloc[:: max(1, len(curve) // 10)].iterrows():
        print(f"  step {int(row['step']):>6}  loss {row['loss']:.3f}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    check_path_length(args.study_dir, "study_dir")
    out = Path(args.study_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} is a file, not a study folder; pass the output_dir of a study")
    if not out.is_dir():
        raise OutputError(f"study folder {out} does not exist; pass the output_dir of a study")
    if not is_study_folder(out):
        raise OutputError(f"{out} is not a study folder (no manifest.json); pass the output_dir of a study")
    with output_lock(out):  # not while a study writes there
        check_layer_files(out)  # a damaged layer: named, never a reader's traceback
        collect_summary(out)
        make_all_figures(out)
        export_all_neuronpedia(out)
        print(f"report: {write_report(out, make_figures=False)}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    check_path_length(args.src, "src")
    check_path_length(args.dst, "dst")
    path = convert_released(args.src, args.dst, hook_name=args.hook, model_name=args.model, force=args.force)
    print(f"converted: {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    check_path_length(args.run_dir, "run_dir")
    check_release_path(args.out, "out")
    out = export_release(args.run_dir, args.out, release=args.release, repo_id=args.repo_id)
    print(f"release: {out}")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    for p in sorted(EMBEDDED_RECIPES.glob("*.yaml")):
        first = next((l for l in p.read_text(encoding="utf-8").splitlines() if l.startswith("#")), "#")
        print(f"{p.stem:<22} {first.lstrip('# ')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sae-bilingual",
        description="Trace how a bilingual LM becomes bilingual: TopK SAEs over checkpoints and layers.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("study", help="run (or resume) a study from a recipe; writes report.html",
                       description="Train, analyse, plot and report. Rerunning resumes.")
    s.add_argument("recipe", nargs="?", help="recipe YAML path or embedded name (default: toy)")
    s.add_argument("--dry-run", action="store_true",
                   help="print the plan (units, SAEs, LM tokens; memory and LM passes per unit) and stop; "
                        "missing inputs are listed, not fatal")
    s.add_argument("--estimate-time", action="store_true",
                   help="with --dry-run: time the study's kernels on the recipe's device at its shapes and print "
                        "seconds per unit (seconds to a minute)")
    s.add_argument("--output-dir", help="override the recipe's output_dir")
    s.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a recipe field, e.g. --set sae.k=16 (repeatable)")
    s.add_argument("--force", action="store_true", help="reuse an output dir made by another recipe")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_study)

    w = sub.add_parser("world", help="build (or load from cache) the offline toy world")
    w.add_argument("--tiny", action="store_true", help="the small test preset")
    w.add_argument("-q", "--quiet", action="store_true")
    w.set_defaults(func=cmd_world)

    r = sub.add_parser("report", help="rebuild tables, figures and report.html of a study dir")
    r.add_argument("study_dir")
    r.set_defaults(func=cmd_report)

    c = sub.add_parser("convert", help="convert an SAE released by llm-jp into SAELens format")
    c.add_argument("src", help="dir or file of the released SAE (sae.pth, safetensors or HF TopKSAE)")
    c.add_argument("dst", help="output SAELens SAE dir")
    c.add_argument("--hook", default=RELEASED_HOOK, help="hook the SAE reads (1.8B layer 12)")
    c.add_argument("--model", default="llm-jp/llm-jp-3-1.8b")
    c.add_argument("--force", action="store_true",
                   help="write the SAE files into a folder holding other files (they are kept)")
    c.set_defaults(func=cmd_convert)

    e = sub.add_parser("export", help="write a study's SAEs as a SAELens release folder (plain SAELens loads it)",
                       description="One stock-topk SAE folder per SAE, pretrained_saes.yaml and a model card.")
    e.add_argument("run_dir", help="the study's output dir")
    e.add_argument("out", help="release folder to write (replaced if it is an earlier release)")
    e.add_argument("--release", help="release name prefix (default: the recipe name); <release>-<model>")
    e.add_argument("--repo-id", help="Hub repo the folder will be uploaded to (for pretrained_saes.yaml)")
    e.set_defaults(func=cmd_export)

    ls = sub.add_parser("recipes", help="list the embedded recipes")
    ls.set_defaults(func=cmd_recipes)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except SaeBilingualError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path the checks above did not cover; one line, not a traceback
        if e.errno != errno.ENAMETOOLONG:
            raise
        print(f"error: {e.filename}: {e.strerror}; choose a shorter path", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
