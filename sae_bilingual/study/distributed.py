"""One large unit on several GPUs with ``torchrun``: the unit's layers are split across ranks.

    torchrun --nproc_per_node 8 -m sae_bilingual.study.distributed RECIPE --unit toy/iter_0000120

Scheme (the simplest correct one; cf. sparsify's ``--distribute_modules``, which gives each
rank a subset of the hookpoints' SAEs): every rank loads the checkpoint on its own GPU and
runs the same LM forward over the same token windows, in the same shuffled order, up to the
deepest layer it owns; it trains, evaluates and analyses only its contiguous block of layers
and writes their artefacts atomically into the shared output dir, exactly as a single-process
``run_unit`` would. Rank 0 is the driver: it plans (learning rate, layers still missing),
broadcasts the plan, and alone touches the manifest once every rank has finished.

Why not shard the documents and all-gather activations (sparsify does that)? It saves the
replicated LM compute but changes which vectors form each SAE batch unless the gather order
reproduces the single-process shuffle; replication keeps the result bit-for-bit equal to the
one-process run (tested) at the cost of one LM forward per rank (each only as deep as its
last layer). With benchmarks/README.md's H100 numbers for a 3.7B unit (LM 0.66 h, 28 SAEs
2.12 h) two ranks take ~1.7 h instead of 2.8 h for ~10 % more GPU-hours; eight ranks ~0.9 h
for ~1.8x the GPU-hours. Use it for units that do not fit one GPU or must finish sooner;
spread many units over GPUs with the Ray or submitit executor instead.

The resulting layer directories are ordinary ones: the next ``sae-bilingual study RECIPE``
skips them (resume), so a study may run its biggest units here and the rest on any executor.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from sae_bilingual.cli import parse_set, resolve_recipe_path
from sae_bilingual.config import Recipe, load_recipe
from sae_bilingual.errors import ConfigError, SaeBilingualError
from sae_bilingual.study import pipeline
from sae_bilingual.study.context import StudyContext
from sae_bilingual.study.manifest import Manifest
from sae_bilingual.study.outdir import check_output_dir, output_lock, prepare_output_dir, recipe_hash
from sae_bilingual.study.plan import Plan, plan_study
from sae_bilingual.study.unit import Unit

log = logging.getLogger(__name__)


def split_layers(layers: Sequence[int], world_size: int) -> list[list[int]]:
    """Contiguous, balanced blocks of ``layers``, one per rank (a rank may get none).

    Contiguous blocks keep each rank's training order equal to the single-process order,
    and let a rank that owns only shallow layers stop the LM early.
    """
    if world_size < 1:
        raise ConfigError(f"world_size must be >= 1, got {world_size}")
    layers = list(layers)
    base, extra = divmod(len(layers), world_size)
    out, start = [], 0
    for r in range(world_size):
        n = base + (1 if r < extra else 0)
        out.append(layers[start:start + n])
        start += n
    return out


def _broadcast(obj: Any, rank: int, world_size: int) -> Any:
    if world_size == 1:
        return obj
    box = [obj if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _barrier(world_size: int) -> None:
    if world_size > 1:
        dist.barrier()


def run_unit_distributed(recipe: Recipe, unit_id: str, *, rank: int = 0, world_size: int = 1,
                         progress: bool = False, force: bool = False) -> list[int]:
    """This rank's share of one unit (call on every rank, process group initialised).

    Returns the layers this rank trained. Rank 0 prepares the output dir, runs the LR grid
    when the recipe asks for one, and marks the unit's layers in the manifest at the end.
    """
    ctx = StudyContext(recipe, progress=progress and rank == 0)
    plan = plan_study(recipe, ctx)
    units = {u.id: u for u in plan.units}
    if unit_id not in units:
        raise ConfigError(f"--unit {unit_id!r} is not in this recipe's plan; choose one of: {', '.join(units)}")
    unit = units[unit_id]
    out = Path(recipe.output_dir)
    with contextlib.ExitStack() as held:
        return _run_unit_ranks(recipe, ctx, plan, unit, out, held, rank=rank, world_size=world_size, force=force)


def _run_unit_ranks(recipe: Recipe, ctx: StudyContext, plan: Plan, unit: Unit, out: Path,
                    held: contextlib.ExitStack, *, rank: int, world_size: int, force: bool) -> list[int]:
    """run_unit_distributed after planning; rank 0 holds the output folder's lock in ``held``."""
    unit_id = unit.id
    plan_msg: dict[str, Any] | None = None
    if rank == 0:
        try:
            check_output_dir(out, force)
            held.enter_context(output_lock(out))  # one writer per folder: a study or this unit
            out, manifest = prepare_output_dir(recipe, force=force)
            lr = recipe.sae.lr
            if plan.lr_grid is not None:
                lr = pipeline.run_lr_grid(ctx, plan.lr_grid, out)
            missing = unit.missing_layers(out)  # the study's resume rule (unit.py)
            manifest.mark_finished(unit, missing)
            plan_msg = {"lr": float(lr), "missing": missing}
        except Exception as e:  # tell the other ranks instead of leaving them in the broadcast
            _broadcast({"error": f"{type(e).__name__}: {e}"}, rank, world_size)
            raise
    plan_msg = _broadcast(plan_msg, rank, world_size)
    assert plan_msg is not None  # rank 0 set it, or raised after broadcasting the error
    if "error" in plan_msg:
        raise SaeBilingualError(f"rank 0 could not plan {unit_id}: {plan_msg['error']}")
    missing = plan_msg["missing"]
    mine = split_layers(missing, world_size)[rank]
    log.info("rank %d/%d: %s layers %s of %s", rank, world_size, unit.id, mine, missing)
    if mine:
        # each hook's SAE is seeded from (seed, hook) alone (train.hook_seed): a subset of
        # the layers trains exactly the SAEs a run over all of them would
        pipeline.run_unit(ctx, unit, mine, out, lr=plan_msg["lr"])
    _barrier(world_size)
    if rank == 0 and missing:
        manifest = Manifest.open(out, recipe_hash(recipe))
        still = unit.missing_layers(out)
        done = [l for l in missing if l not in still]
        for layer in done:
            manifest.mark_layer(unit.id, layer)
        manifest.mark_unit(unit.id, "done" if len(done) == len(missing) else "partial")
        if len(done) < len(missing):
            raise SaeBilingualError(f"{unit.id}: layers {sorted(set(missing) - set(done))} have no summary.json; "
                                    "see the failing rank's log and rerun the same command")
    return mine


def _setup(device: str) -> tuple[int, int, int]:
    """Init the process group from torchrun's environment; (rank, world_size, local_rank)."""
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if world_size > 1:
        if device.startswith("cuda"):
            torch.cuda.set_device(local_rank)  # "cuda" in the recipe now means this rank's GPU
            dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
        else:
            dist.init_process_group("gloo")
    return rank, world_size, local_rank


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``torchrun ... -m sae_bilingual.study.distributed RECIPE --unit ID``."""
    p = argparse.ArgumentParser(prog="python -m sae_bilingual.study.distributed",
                                description="Train one unit's layers across the ranks of torchrun.")
    p.add_argument("recipe", help="recipe YAML path or embedded recipe name")
    p.add_argument("--unit", required=True, help="unit id, e.g. llm-jp-3-3.7b/iter_0494120")
    p.add_argument("--output-dir", help="override the recipe's output_dir")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="override a recipe field (repeatable)")
    p.add_argument("--force", action="store_true", help="reuse an output dir made by another recipe")
    args = p.parse_args(argv)
    overrides = parse_set(args.set or [])
    if args.output_dir:
        overrides["output_dir"] = args.output_dir
    recipe = load_recipe(resolve_recipe_path(args.recipe), overrides)
    rank, world_size, _ = _setup(recipe.device)
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s")
    try:
        run_unit_distributed(recipe, args.unit, rank=rank, world_size=world_size, progress=rank == 0,
                             force=args.force)
    except SaeBilingualError as e:
        print(f"error (rank {rank}): {e}", file=sys.stderr)
        return 2
    finally:
        if world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
