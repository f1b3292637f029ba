"""A study's SAEs as a SAELens release folder that loads without this package.

Layout of ``OUT`` (upload it as one Hub repo, or use it locally)::

    README.md                       model card: how to load, what differs from the paper, provenance
    pretrained_saes.yaml            one SAELens release per model, every SAE id with its provenance
    recipe.yaml                     the study's resolved recipe (reproduce with `sae-bilingual study`)
    <model>/iter_NNNNNNN/LXX/       one stock SAELens "topk" SAE: cfg.json + sae_weights.safetensors

Why stock ``topk``: a user with plain SAELens (no sae-bilingual) cannot build the registered
``paper_topk`` architecture. :func:`sae_bilingual.sae.files.export_stock_topk` rewrites each SAE
exactly as a stock TopK SAE with per-token norm rescaling; the one difference (ReLU on the
selected values) is stated in every cfg.json and in the card.

Loading: ``SAE.load_from_disk(OUT/<path>)`` in plain SAELens; ``SAE.from_pretrained(release,
sae_id)`` once the folder is registered (:func:`register_release_folder`, or the env var
``SAE_BILINGUAL_RELEASES``), or once uploaded and its yaml entry added to SAELens's list.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from sae_lens.loading.pretrained_sae_loaders import NAMED_PRETRAINED_SAE_LOADERS, sae_lens_disk_loader
from sae_lens.loading.pretrained_saes_directory import PretrainedSAELookup, get_pretrained_saes_directory

from sae_bilingual.study.layout import RECIPE_FILE, UNITS_DIR
from sae_bilingual import __version__
from sae_bilingual.errors import OutputError, SAEFileError
from sae_bilingual.models.public import PUBLIC_FAMILIES, hub_location
from sae_bilingual.report.crosscoder_section import crosscoder_release
from sae_bilingual.report.release_install import CARD_FILE, RELEASE_FILE, is_release_folder, staged_release
from sae_bilingual.sae.files import STOCK_DIFFERENCE, export_stock_topk, load_sae
from sae_bilingual.sae.model import PaperTopKSAE
from sae_bilingual.sae.topk_config import ARCHITECTURE
from sae_bilingual.study.outdir import check_not_in_use
from sae_bilingual.study.unit import layer_dirs, layer_id

log = logging.getLogger(__name__)

LOADER_NAME = "sae_bilingual_local_release"
ENV_RELEASES = "SAE_BILINGUAL_RELEASES"


@dataclass
class ExportedSAE:
    """One finished SAE of a study and where it goes in the release."""

    model: str
    iteration: int
    layer: int
    sae_dir: Path
    summary: dict[str, Any]

    @property
    def sae_id(self) -> str:
        """Id within its model's release, e.g. "iter_0000120/L02"."""
        return layer_id(self.iteration, self.layer)

    @property
    def path(self) -> str:
        """Folder in the release, e.g. "toy/iter_0000120/L02"."""
        return f"{self.model}/{self.sae_id}"


def finished_saes(run_dir: str | Path) -> list[ExportedSAE]:
    """Every layer of a study whose summary.json (written last) and SAE exist."""
    out = []
    for d in layer_dirs(run_dir, having=("summary.json", "sae/cfg.json")):
        row = json.loads((d.path / "summary.json").read_text(encoding="utf-8"))
        out.append(ExportedSAE(d.family, d.iteration, d.layer, d.path / "sae", row))
    return out


def study_release_folder(run_dir: str | Path, path: str | None) -> Path:
    """Where a study's own export goes: ``export.path``, else ``<output_dir>/release``."""
    return Path(path) if path else Path(run_dir) / "release"


def check_export_folder(run_dir: Path, out: Path, field: str = "export folder") -> None:
    """Never write into the study itself or an unrelated folder; the folder can be created.

    The study's preflight calls it too (``field`` = 'export.path'), so a bad path fails in
    seconds, not after every other stage."""
    r, o = Path(run_dir).resolve(), Path(out).resolve()
    if o == r or r.is_relative_to(o) or (o.is_relative_to(r) and o.relative_to(r).parts[:1] == (UNITS_DIR,)):
        raise OutputError(f"{field} {out} would overwrite the study {run_dir}; choose another folder")
    if o.exists() and not o.is_dir():
        raise OutputError(f"{field} {out} is a file; give a folder for the release")
    if o.exists() and any(o.iterdir()) and not is_release_folder(o):
        raise OutputError(f"{field} {out} exists and is not a release folder written by `sae-bilingual export`; "
                          "choose an empty or new folder")
    base = next(a for a in (o, *o.parents) if a.exists())
    if not base.is_dir() or not os.access(base, os.W_OK | os.X_OK):
        why = "is a file" if not base.is_dir() else "is not writable"
        raise OutputError(f"{field} {out} cannot be created: {base} {why}; choose a folder you can write")


def _row_provenance(e: ExportedSAE, md: dict[str, Any], languages: list[str]) -> dict[str, Any]:
    s = e.summary
    n = float(s.get("n_features") or 0)
    prov = {
        "model": e.model, "model_family": md.get("model_family", e.model), "model_source": md.get("model_source"),
        "checkpoint_iteration": e.iteration, "checkpoint_tokens": int(s.get("tokens", md.get("checkpoint_tokens", 0))),
        "paper_layer": e.layer, "hook_name": s.get("hook", md.get("hook_name")),
        "normalization": md.get("normalization"), "k": int(s.get("k", 0)), "d_sae": int(s.get("d_sae", 0)),
        "training_tokens": md.get("training_tokens"), "lr": md.get("lr"), "seed": md.get("seed"),
        "fvu": s.get("fvu"), "dead_share": (float(s.get("n_dead", 0)) / n) if n else None,
        "class_shares": {c: s.get(f"frac_{c}") for c in [*languages, "mixed"]},
        "ce_recovered": s.get("ce_recovered"),
    }
    where = hub_location(str(prov["model_family"]), e.iteration)
    if where is not None:  # a built-in public family: where the analysed checkpoint lives
        prov["checkpoint_repo"], prov["checkpoint_revision"] = where
    return {k: (float(v) if hasattr(v, "item") else v) for k, v in prov.items()}


def _model_id(model: str, md: dict[str, Any]) -> str:
    """The Hub / TransformerLens name of the model for the yaml's ``model`` (else its output name)."""
    src, family = str(md.get("model_source") or ""), str(md.get("model_family") or "")
    if src.count("/") == 1 and not src.startswith((".", "/", "~")) and not Path(src).exists():
        return src
    if family in PUBLIC_FAMILIES:
        return PUBLIC_FAMILIES[family].repo
    if family.startswith("llm-jp-3-"):
        return f"llm-jp/{family}"
    return model


def _release_yaml(by_model: dict[str, list[tuple[ExportedSAE, dict]]], release: str, repo_id: str,
                  model_ids: dict[str, str]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for model, rows in by_model.items():
        doc[f"{release}-{model}"] = {
            "repo_id": repo_id,
            "model": model_ids[model],
            "conversion_func": None,
            "saes": [{"id": e.sae_id, "path": e.path, "l0": float(prov["k"]),
                      "variance_explained": None if prov["fvu"] is None else round(1 - float(prov["fvu"]), 6),
                      **prov} for e, prov in rows],
        }
    return doc


def _card(doc: dict[str, Any], recipe: dict[str, Any], out: Path, languages: list[str]) -> str:
    """The model card: load, differences from the paper, per-SAE table, how to reproduce."""
    first_rel = next(iter(doc))
    first_id = doc[first_rel]["saes"][0]["id"]
    first_path = doc[first_rel]["saes"][0]["path"]
    sae, data = recipe.get("sae", {}), recipe.get("data", {})
    lines = [
        "---", "library_name: saelens", "tags: [sparse-autoencoder, saelens, sae-bilingual, interpretability]", "---",
        "", f"# {', '.join(doc)}: TopK SAEs over training checkpoints", "",
        f"Sparse autoencoders trained by sae-bilingual {__version__} (a re-implementation of Inaba et al., "
        "*How a Bilingual LM Becomes Bilingual*, Findings of EMNLP 2025): one TopK SAE per (checkpoint, layer) "
        f"of each model below, on the residual stream, for the languages {', '.join(languages)}.", "",
        "## Load", "", "Plain SAELens (no sae-bilingual needed):", "", "```python", "from sae_lens import SAE",
        f'sae = SAE.load_from_disk("{first_path}")   # a stock "topk" SAE', "```", "",
        "By release name, locally (sae-bilingual registers the folder) or after uploading this folder as "
        f"the Hub repo named in `{RELEASE_FILE}` and adding its entry to SAELens's pretrained list:", "",
        "```python", "from sae_bilingual.report.release import register_release_folder", "from sae_lens import SAE",
        f'register_release_folder("{out.name}")', f'sae = SAE.from_pretrained("{first_rel}", "{first_id}")', "```",
        "", "The hook each SAE reads is `cfg.metadata.hook_name` (TransformerLens naming; paper layer 0 = "
        "`blocks.0.hook_resid_pre`, layer l >= 1 = `blocks.{l-1}.hook_resid_post`). BOS positions were not "
        "used in training.", "",
        "## Where the stock form differs from the paper", "", STOCK_DIFFERENCE,
        "Every cfg.json repeats this under `metadata.stock_form`.", "",
        "## SAEs", "",
        "| release | id | checkpoint step | tokens | layer | hook | k | d_sae | FVU | dead | "
        + " | ".join(languages) + " | mixed |",
        "|" + "---|" * (11 + len(languages)),
    ]
    for rel, entry in doc.items():
        for s in entry["saes"]:
            shares = [f"{(s['class_shares'].get(c) or 0):.3f}" for c in [*languages, "mixed"]]
            fvu = "" if s["fvu"] is None else f"{s['fvu']:.3f}"
            dead = "" if s["dead_share"] is None else f"{s['dead_share']:.3f}"
            lines.append(f"| {rel} | `{s['id']}` | {s['checkpoint_iteration']:,} | {s['checkpoint_tokens']:,} | "
                         f"{s['paper_layer']} | `{s['hook_name']}` | {s['k']} | {s['d_sae']} | {fvu} | {dead} | "
                         + " | ".join(shares) + " |")
    models = recipe.get("models", [])
    lines += [
        "", "Class shares are over live features: a feature is language-specific when p(lang | feature) > "
        f"{recipe.get('analysis', {}).get('lang_threshold', 0.9)} on the evaluation tokens, else mixed. FVU "
        "is on held-out tokens of the same corpus; dead = no activation on them.", "",
        "## Reproduce", "",
        "- Models: " + "; ".join(f"`{m.get('name') or m.get('family')}` = family `{m.get('family')}`, source "
                                 f"`{m.get('source') or 'default'}`" for m in models)
        + f". Each SAE's checkpoint is `checkpoint_iteration` in `{RELEASE_FILE}` (with `checkpoint_repo` / "
        "`checkpoint_revision` for sae-bilingual's built-in public families, whose revision names and "
        "tokens per step are listed with their sources in sae-bilingual's docs/models.md).",
        f"- Data: corpus `{data.get('corpus')}`, languages {data.get('languages')}, first {data.get('context')} "
        f"tokens of each document (BOS dropped), {data.get('train_tokens_per_lang')} training and "
        f"{data.get('eval_tokens_per_lang')} evaluation tokens per language.",
        f"- SAE: TopK k={sae.get('k')}, d_sae={sae.get('d_sae') or str(sae.get('expansion')) + ' x d_model'}, "
        + (f"lr chosen from {sae.get('lr_grid')} by validation MSE on the final checkpoint's middle layer "
           "(the `lr` of each SAE in the yaml)" if sae.get("lr") == "grid" else f"lr {sae.get('lr')}")
        + f", batch {sae.get('batch_size')}, warmup "
        f"{sae.get('warmup_steps')} steps, Adam eps {sae.get('adam_eps')}, seed {recipe.get('seed')}, inputs "
        "L2-normalised per token (the norm is restored on decode).",
        f"- The exact recipe is `recipe.yaml` in this folder: with sae-bilingual {__version__} installed, "
        "`sae-bilingual study recipe.yaml` retrains every SAE (deterministic given the seed and the same "
        "checkpoints and corpus); each cfg.json's metadata records the checkpoint, layer and training run.",
        "",
    ]
    return "\n".join(lines)


def export_release(run_dir: str | Path, out: str | Path, *, release: str | None = None,
                   repo_id: str | None = None, from_study: bool = False) -> Path:
    """Write every finished SAE of the study in ``run_dir`` as a SAELens release folder ``out``.

    ``from_study``: the study itself calls it, holding ``run_dir``'s lock with every SAE
    finished; anyone else is refused while a study runs there."""
    run_dir, out = Path(run_dir), Path(out)
    saes = finished_saes(run_dir)
    if not saes:
        raise OutputError(f"{run_dir} holds no finished SAE (units/<model>/iter_*/L*/summary.json); "
                          "run `sae-bilingual study` first")
    check_export_folder(run_dir, out)
    recipe_path = run_dir / RECIPE_FILE
    recipe = yaml.safe_load(recipe_path.read_text(encoding="utf-8")) if recipe_path.exists() else {}
    languages = list(recipe.get("data", {}).get("languages") or ["en", "ja"])
    release = release or str(recipe.get("name") or run_dir.name)
    repo_id = repo_id or f"<hf-user>/{release}"
    by_model: dict[str, list[tuple[ExportedSAE, dict]]] = {}
    model_ids: dict[str, str] = {}
    if not from_study:
        check_not_in_use(run_dir)  # a running study: its unfinished SAEs would be missing
    with staged_release(out) as tmp:
        for e in saes:
            sae = load_sae(e.sae_dir)
            if sae.cfg.architecture() != ARCHITECTURE:
                raise SAEFileError(f"{e.sae_dir} is a {sae.cfg.architecture()!r} SAE, not {ARCHITECTURE!r}")
            assert isinstance(sae, PaperTopKSAE)  # SAELens builds the class registered for the architecture
            md = sae.cfg.metadata.to_dict()
            prov = _row_provenance(e, md, languages)
            model_ids.setdefault(e.model, _model_id(e.model, md))
            for k, v in {"stock_form": STOCK_DIFFERENCE, "release": f"{release}-{e.model}", "sae_id": e.sae_id,
                         "fvu": prov["fvu"], "dead_share": prov["dead_share"],
                         "class_shares": prov["class_shares"]}.items():
                sae.cfg.metadata[k] = v
            export_stock_topk(sae, tmp / e.path)
            by_model.setdefault(e.model, []).append((e, prov))
        doc = _release_yaml(by_model, release, repo_id, model_ids)
        cc_doc, cc_lines = crosscoder_release(run_dir, tmp, release, repo_id)  # crosscoders: their own entries
        (tmp / RELEASE_FILE).write_text(yaml.safe_dump(doc | cc_doc, sort_keys=False, allow_unicode=True), encoding="utf-8")
        (tmp / CARD_FILE).write_text(_card(doc, recipe, out, languages) + "\n".join(cc_lines), encoding="utf-8")
        if recipe_path.exists():
            (tmp / RECIPE_FILE).write_text(recipe_path.read_text(encoding="utf-8"), encoding="utf-8")
    log.info("exported %d SAEs of %d model(s) to %s", len(saes), len(by_model), out)
    return out


# --------------------------------------------------------------------------- loading side


def _local_loader(repo_id: str, folder_name: str, device: str = "cpu", force_download: bool = False,
                  cfg_overrides: dict[str, Any] | None = None):
    """SAELens pretrained loader for a registered local release folder (repo_id = its path)."""
    path = Path(repo_id) / folder_name
    if not (path / "cfg.json").exists():
        raise SAEFileError(f"{path} has no cfg.json; was the release folder {repo_id} moved or pruned?")
    cfg, sd = sae_lens_disk_loader(path, device=device, cfg_overrides=cfg_overrides)
    return cfg, sd, None


def register_release_folder(path: str | os.PathLike) -> list[str]:
    """Make ``SAE.from_pretrained(release, sae_id)`` load from a local release folder; returns its releases."""
    root = Path(path).expanduser().resolve()
    f = root / RELEASE_FILE
    if not f.exists():
        raise SAEFileError(f"{root} has no {RELEASE_FILE}: not a release folder written by `sae-bilingual export`")
    doc = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
    NAMED_PRETRAINED_SAE_LOADERS[LOADER_NAME] = _local_loader  # type: ignore[assignment]
    directory = get_pretrained_saes_directory()  # SAELens caches this dict: entries added here persist
    for release, entry in doc.items():
        saes = entry.get("saes", [])
        directory[release] = PretrainedSAELookup(
            release=release, repo_id=str(root), model=str(entry.get("model")), conversion_func=LOADER_NAME,
            saes_map={s["id"]: s["path"] for s in saes},
            expected_var_explained={s["id"]: s.get("variance_explained") or 0.0 for s in saes},
            expected_l0={s["id"]: float(s.get("l0") or 0.0) for s in saes},
            neuronpedia_id={}, norm_scaling_factor={}, config_overrides=None)
    return list(doc)


def register_env_releases() -> list[str]:
    """Register every folder listed in ``$SAE_BILINGUAL_RELEASES`` (os.pathsep-separated)."""
    names: list[str] = []
    for p in filter(None, os.environ.get(ENV_RELEASES, "").split(os.pathsep)):
        try:
            names += register_release_folder(p)
        except SAEFileError as e:
            log.warning("%s: %s", ENV_RELEASES, e)
    return names
