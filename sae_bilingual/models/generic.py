"""``family: hf``: any HF causal LM TransformerLens converts, with checkpoints as folders or Hub revisions.

A source is one of

* a local root of checkpoint folders, each an HF model directory whose name encodes its
  step (``iter_0001000``, ``step1000``, ``step1000-tokens4B``, ``global_step1000``, ...;
  see :mod:`sae_bilingual.models.checkpoint_names`), optionally with ``catalogue.json`` and a
  ``tokenizer/`` folder;
* a single HF model directory (one checkpoint);
* a Hub repo id whose branches are checkpoints (Pythia ``step1000``, OLMo
  ``step1000-tokens4B``, BLOOM ``global_step1000``, Amber ``ckpt_100``); a built-in family
  may instead list its checkpoints offline, even as one repo per checkpoint (CroissantLLM).

Tokens of a checkpoint, first that applies: ``catalogue.json`` per-checkpoint entry; step x
tokens-per-step (``catalogue.json`` ``tokens_per_iteration``, else the recipe's
``tokens_per_step`` or the built-in family's); tokens written in the name (rounded by its
authors); otherwise an error saying how to give them. The shape comes from the final
checkpoint's ``config.json``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import list_repo_refs
from transformers import AutoConfig

from sae_bilingual.errors import CheckpointError
from sae_bilingual.models.bridge import bridge_from_hf_model, check_backend
from sae_bilingual.models.catalogue import CATALOGUE_FILE, Checkpoint, CheckpointCatalogue
from sae_bilingual.models.checkpoint_names import describe_patterns, parse_checkpoint_name
from sae_bilingual.models.convert_any import check_convertible, hooked_from_hf_any
from sae_bilingual.models.hf import load_hf_llama
from sae_bilingual.models.registry import HFLlamaFamily

log = logging.getLogger(__name__)

PAPER_MODEL = "llm-jp-3-3.7b"
"""The model of Inaba et al.: only its studies are set beside the paper's numbers."""


def _tokens_for(step: int, name_tokens: int | None, per_step: int | None) -> int | None:
    if per_step is not None:
        return step * per_step
    return name_tokens


def _read_catalogue_file(root: Path) -> tuple[dict[int, int], int | None]:
    """``catalogue.json``: per-step tokens and tokens per step (either may be absent)."""
    f = root / CATALOGUE_FILE
    if not f.exists():
        return {}, None
    try:
        meta = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f} is not valid JSON ({e}); fix or delete it") from e
    per = {int(e["iteration"]): int(e["tokens"]) for e in meta.get("checkpoints", [])}
    tps = meta.get("tokens_per_iteration", meta.get("tokens_per_step"))
    return per, (int(tps) if tps is not None else None)


def scan_root(root: str | Path, tokens_per_step: int | None = None, *, family: str = "model") -> CheckpointCatalogue:
    """Every checkpoint folder under ``root`` whose name encodes a step and that has a config.json."""
    root = Path(root).expanduser()
    per_step_tokens, file_tps = _read_catalogue_file(root)
    if file_tps is not None and tokens_per_step not in (None, file_tps):
        log.warning("%s says %d tokens per step; using it instead of %d", root / CATALOGUE_FILE, file_tps,
                    tokens_per_step)
    tps = file_tps if file_tps is not None else tokens_per_step
    found: dict[int, Checkpoint] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        parsed = parse_checkpoint_name(d.name)
        if parsed is None:
            continue
        if not (d / "config.json").exists():
            log.warning("skipping %s: no config.json (incomplete checkpoint?)", d)
            continue
        if parsed.step in found:
            log.info("%s: step %d also in %s; keeping the first", d, parsed.step, found[parsed.step].path)
            continue
        tokens = per_step_tokens.get(parsed.step, _tokens_for(parsed.step, parsed.tokens, tps))
        if tokens is None:
            raise CheckpointError(
                f"{family}: cannot tell the token count of {d} (its name gives only step {parsed.step}). "
                f"Set models[].tokens_per_step in the recipe, or write {root / CATALOGUE_FILE} with "
                '{"tokens_per_iteration": N} or {"checkpoints": [{"iteration": i, "tokens": t}, ...]}'
            )
        found[parsed.step] = Checkpoint(parsed.step, tokens, d)
    if not found:
        others = sorted(p.name for p in root.iterdir())[:10]
        raise CheckpointError(
            f"no checkpoint folders under {root}: expected HF model directories named like "
            f"{describe_patterns()} (each with config.json); found {others or 'nothing'}"
        )
    return CheckpointCatalogue(list(found.values()), root=root)


def hub_branch_checkpoints(repo: str, tokens_per_step: int | None, *, family: str = "model") -> list[Checkpoint]:
    """Checkpoints of a Hub repo whose branches are named by step (needs the network)."""
    try:
        branches = [b.name for b in list_repo_refs(repo).branches]
    except Exception as e:  # noqa: BLE001  offline, gated, missing
        raise CheckpointError(
            f"{family}: cannot list the branches of the Hub repo {repo} ({type(e).__name__}: {e}). "
            "Download the checkpoints you need into folders named after their branches and pass "
            "that folder as source"
        ) from e
    return checkpoints_from_names(branches, tokens_per_step, repo=repo, family=family)


def checkpoints_from_names(names: list[str], tokens_per_step: int | None, *, repo: str | None = None,
                           family: str = "model") -> list[Checkpoint]:
    """Checkpoints from branch names (names that encode no step are skipped)."""
    out: dict[int, Checkpoint] = {}
    for n in sorted(names):
        parsed = parse_checkpoint_name(n)
        if parsed is None or parsed.step in out:
            continue
        tokens = _tokens_for(parsed.step, parsed.tokens, tokens_per_step)
        if tokens is None:
            raise CheckpointError(f"{family}: revision {n!r} gives no token count; set models[].tokens_per_step")
        out[parsed.step] = Checkpoint(parsed.step, tokens, None, revision=n, repo=repo)
    return list(out.values())


def default_name(source: Any) -> str:
    """An output-safe model name from a source path or repo id ('/data/My ckpts' -> 'my-ckpts')."""
    s = str(source).rstrip("/").split("/")[-1].lower()
    s = re.sub(r"[^a-z0-9._+-]+", "-", s).strip("-.") or "model"
    return s


@dataclass
class HFFamily(HFLlamaFamily):
    """Checkpoints of any TransformerLens-convertible HF causal LM (see module docstring)."""

    hub_checkpoints: Callable[[], list[Checkpoint]] | None = None
    """Offline list of the Hub checkpoints (built-in families); None = list the repo's branches."""
    paper_model: bool = False
    """True only for the paper's own model: its studies get the 'Beside the paper' table."""

    def catalogue(self, source: str | Path | None = None) -> CheckpointCatalogue:
        """Checkpoints available from ``source`` (default: the family's own source)."""
        if source is None and self._catalogue is not None:
            return self._catalogue
        kind, where = self._source_kind(source)
        if kind == "root":
            cat = scan_root(where, self.tokens_per_iteration, family=self.name)
        elif kind == "dir":
            parsed = parse_checkpoint_name(Path(where).name)
            step = parsed.step if parsed else (self.final_iteration or 0)
            tokens = _tokens_for(step, parsed.tokens if parsed else None, self.tokens_per_iteration) or 0
            cat = CheckpointCatalogue([Checkpoint(step, tokens, Path(where))])
        else:
            cks = self.hub_checkpoints() if self.hub_checkpoints and where == self.hub_repo else \
                hub_branch_checkpoints(str(where), self.tokens_per_iteration, family=self.name)
            if not cks:  # a repo without step branches: its main branch is the one checkpoint
                step = self.final_iteration or 0
                cks = [Checkpoint(step, step * (self.tokens_per_iteration or 0), None)]
            cat = CheckpointCatalogue(cks)
        if source is None:
            self._catalogue = cat
        return cat

    def _where(self, ck: Checkpoint) -> tuple[str, str | None]:
        """(local dir or repo id, revision) holding ``ck``."""
        if ck.path is not None:
            if not Path(ck.path).is_dir():
                raise CheckpointError(f"checkpoint directory {ck.path} is missing; available: "
                                      f"{self.catalogue().iterations}")
            return str(ck.path), None
        repo = ck.repo or str(self._source_kind(None)[1])
        return repo, ck.revision or self.revision

    @cached_property
    def hf_config(self) -> Any:
        """HF config of the final checkpoint (checked to be convertible)."""
        if self.default_config is not None:
            return self.default_config
        where, rev = self._where(self.catalogue().final)
        cfg = AutoConfig.from_pretrained(where, revision=rev, trust_remote_code=False)
        check_convertible(cfg)
        return cfg

    @property
    def n_layers(self) -> int:
        """Number of decoder blocks (BLOOM's config calls it n_layer)."""
        c = self.hf_config
        return int(getattr(c, "num_hidden_layers", None) or c.n_layer)

    @property
    def d_model(self) -> int:
        """Residual stream width."""
        return int(self.hf_config.hidden_size)

    def load(self, checkpoint: Checkpoint | int | None = None, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32) -> Any:
        """One checkpoint (a Checkpoint, a step, or None = final) as an unprocessed HookedTransformer
        (a TransformerBridge with ``model_backend = "bridge"``)."""
        cat = self.catalogue()
        ck = cat.select(iteration=checkpoint if not isinstance(checkpoint, Checkpoint) else checkpoint.iteration)
        where, rev = self._where(ck)
        check_convertible(self.hf_config)
        try:
            tok = self.tokenizer()
        except (CheckpointError, OSError, ValueError) as e:
            log.warning("%s: no tokenizer (%s); the model runs on token ids only", self.name, e)
            tok = None
        hf_model = load_hf_llama(where, revision=rev, dtype=dtype)
        wrap = bridge_from_hf_model if check_backend(self.model_backend) == "bridge" else hooked_from_hf_any
        model = wrap(hf_model, device=device, dtype=dtype, tokenizer=tok, model_name=self.name)
        del hf_model
        if tok is not None and len(tok) > int(model.cfg.d_vocab):
            raise CheckpointError(
                f"{self.name}: the tokenizer has {len(tok)} tokens but checkpoint {ck.iteration} embeds only "
                f"d_vocab={model.cfg.d_vocab}; use the tokenizer saved with these checkpoints (tokenizer: ...)")
        model.cfg.from_checkpoint = True
        model.cfg.checkpoint_value = ck.iteration
        model.cfg.checkpoint_label_type = "step"
        return model


def hf_factory(source: Any = None, name: str | None = None, tokenizer: Any = None,
               tokens_per_step: int | None = None, revision: str | None = None) -> HFFamily:
    """``family: hf``: ``source`` = local root / HF dir / Hub repo of checkpoints (required)."""
    if source is None:
        raise CheckpointError(
            "family 'hf' needs models[].source: a local root of checkpoint folders "
            f"({describe_patterns()}), one HF model directory, or a Hub repo id whose branches "
            "are checkpoints"
        )
    return HFFamily(name=name or default_name(source), source=source, revision=revision,
                    tokens_per_iteration=tokens_per_step, tokenizer_source=tokenizer)


def is_paper_model(family: Any) -> bool:
    """Whether a family is the paper's own model (LLM-jp-3 3.7B at its real shape)."""
    if getattr(family, "paper_model", False):
        return True
    try:
        return family.name == PAPER_MODEL and (family.d_model, family.n_layers) == (3072, 28)
    except Exception:  # noqa: BLE001  a shape we cannot read is not the paper's model
        return False
