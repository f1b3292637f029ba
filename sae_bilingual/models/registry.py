"""Model families: a name -> how to list, load and tokenize its checkpoints.

LLM-jp-3 sizes (Hub repo, a single HF directory, or a local root of ``iter_NNNNNNN`` dirs) and
the synthetic "toy" world (always a local root) are :class:`HFLlamaFamily`; the toy world goes
through exactly the same code path as an LLM-jp local root. ``hf`` (any TransformerLens-
convertible model) and the public families (Pythia, OLMo, BLOOM, CroissantLLM, ...) are
:class:`~sae_bilingual.models.generic.HFFamily`. ``sae_bilingual.models`` registers the
built-in families (LLM-jp-3 sizes from :mod:`~sae_bilingual.models.llmjp`, "toy", "hf", the
public ones); users add models with :func:`register_family`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from transformers import AutoConfig

from sae_bilingual.errors import CheckpointError
from sae_bilingual.layers import hook_for_layer
from sae_bilingual.models.catalogue import HUB_NOTE, ITER_DIR, Checkpoint, CheckpointCatalogue
from sae_bilingual.models.bridge import bridge_from_hf_model, check_backend
from sae_bilingual.models.hf import has_tokenizer_files, load_hf_llama, load_hooked
from sae_bilingual.models.sizes import normalise_size
from sae_bilingual.models.tokenizer import load_tokenizer

log = logging.getLogger(__name__)


@runtime_checkable
class ModelFamily(Protocol):
    """What the study needs from a model: its checkpoints, a loader, a tokenizer, its shape."""

    name: str
    hf_config: Any  # the HF config of its architecture (the memory plan reads the shape from it)

    @property
    def n_layers(self) -> int: ...

    @property
    def d_model(self) -> int: ...

    def catalogue(self, source: str | Path | None = None) -> CheckpointCatalogue: ...

    def load(
        self, checkpoint: Checkpoint, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> Any: ...

    def tokenizer(self) -> Any: ...

    def hook_for_layer(self, layer: int) -> str: ...


def _looks_like_repo_id(s: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", s)) and not s.startswith((".", "/", "~"))


class HFConfigShape:
    """``n_layers`` / ``d_model`` read from ``self.hf_config``: the one place that knows which HF
    config fields give a family's shape (loadable families and the dry run's offline ones)."""

    hf_config: Any

    @property
    def n_layers(self) -> int:
        """Number of decoder blocks (paper layers run 0..n_layers)."""
        return int(self.hf_config.num_hidden_layers)

    @property
    def d_model(self) -> int:
        """Residual stream width."""
        return int(self.hf_config.hidden_size)


@dataclass
class HFLlamaFamily(HFConfigShape):
    """A family of HF Llama checkpoints from a Hub repo, one HF dir, or a root of iter dirs."""

    name: str
    """Family name used in outputs, e.g. "llm-jp-3-1.8b" or "toy"."""
    source: str | Path | None = None
    """Hub repo id, local HF dir, or local root of iter_NNNNNNN dirs; None = ``hub_repo``."""
    hub_repo: str | None = None
    """Default Hub repo (final weights) when no source is given."""
    revision: str | None = None
    """Hub revision for a repo source."""
    tokens_per_iteration: int | None = None
    """Tokens per iteration when a root has no catalogue.json."""
    final_iteration: int | None = None
    """Iteration of a single-directory / Hub checkpoint."""
    tokenizer_source: Any = None
    """Tokenizer object or path/repo for load_tokenizer; None = next to the weights."""
    default_config: Any = None
    """Offline HF config (e.g. LLM-jp size table) used for the shape when weights are remote."""
    model_backend: str = "hooked"
    """'hooked' (an unprocessed HookedTransformer) or 'bridge' (TransformerBridge; models/bridge.py)."""
    _catalogue: CheckpointCatalogue | None = field(default=None, init=False, repr=False)

    # ------------------------------------------------------------------ source
    def _source_kind(self, source: str | Path | None) -> tuple[str, str | Path]:
        """Classify a source as ("hub", repo) | ("dir", path) | ("root", path)."""
        src = source if source is not None else self.source
        if src is None:
            if self.hub_repo is None:
                raise CheckpointError(
                    f"model family {self.name!r} needs a source: a local root of iter_NNNNNNN dirs "
                    "or a single HF model directory"
                )
            return "hub", self.hub_repo
        if hasattr(src, "root") and not isinstance(src, (str, Path)):  # a World object
            src = src.root
        p = Path(src).expanduser()
        if p.is_dir():
            if (p / "config.json").exists():
                return "dir", p
            return "root", p
        if p.exists():
            raise CheckpointError(f"model source {p} is a file; pass a directory or a Hub repo id")
        if isinstance(src, Path) or not _looks_like_repo_id(str(src)):
            raise CheckpointError(
                f"model source directory {p} does not exist; pass an existing root of "
                "iter_NNNNNNN dirs, an HF model directory, or a Hub repo id 'owner/name'"
            )
        return "hub", str(src)

    def catalogue(self, source: str | Path | None = None) -> CheckpointCatalogue:
        """Checkpoints available from ``source`` (default: the family's own source)."""
        if source is None and self._catalogue is not None:
            return self._catalogue
        kind, where = self._source_kind(source)
        if kind == "root":
            cat = CheckpointCatalogue.from_root(where, tokens_per_iteration=self.tokens_per_iteration)
        else:
            it = self.final_iteration
            if kind == "dir":
                m = ITER_DIR.match(Path(where).name)
                if m:
                    it = int(m.group(1))
            it = 0 if it is None else it
            tokens = it * (self.tokens_per_iteration or 0)
            cat = CheckpointCatalogue(
                [Checkpoint(it, tokens, Path(where) if kind == "dir" else None)],
                note=HUB_NOTE.format(name=self.name) if kind == "hub" else "",
            )
        if source is None:
            self._catalogue = cat
        return cat

    # ------------------------------------------------------------------- shape
    @cached_property
    def hf_config(self) -> Any:
        """HF config of the final checkpoint (offline default for remote weights)."""
        kind, where = self._source_kind(None)
        if kind == "hub":
            if self.default_config is not None:
                return self.default_config
            return AutoConfig.from_pretrained(str(where), revision=self.revision)
        path = self.catalogue().final.path
        assert path is not None
        return AutoConfig.from_pretrained(str(path))

    def hook_for_layer(self, layer: int) -> str:
        """TransformerLens hook of a paper layer; raises LayerError naming 0..n_layers."""
        return hook_for_layer(layer, self.n_layers)

    # -------------------------------------------------------------------- load
    def load(
        self,
        checkpoint: Checkpoint | int | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> Any:
        """Load one checkpoint (a Checkpoint, an iteration, or None = final) as a HookedTransformer."""
        cat = self.catalogue()
        if checkpoint is None or isinstance(checkpoint, int):
            ck = cat.select(iteration=checkpoint)
        else:
            ck = checkpoint
        if ck.iteration not in cat.iterations or (ck.path is None and ck.iteration != cat.final.iteration):
            if self._source_kind(None)[0] == "hub":
                raise CheckpointError(
                    f"{self.name}: only the final checkpoint (iteration {cat.final.iteration}) is on the "
                    f"Hub; intermediate iteration {ck.iteration} needs a local root of iter_NNNNNNN dirs "
                    "(source=...)"
                )
            cat.select(iteration=ck.iteration)  # raises, listing the valid iterations
        if ck.path is not None:
            if not Path(ck.path).is_dir():
                raise CheckpointError(
                    f"checkpoint directory {ck.path} is missing; available: {cat.iterations}"
                )
            src, rev = ck.path, None
        else:
            kind, where = self._source_kind(None)
            if kind != "hub":
                raise CheckpointError(f"checkpoint {ck} has no path and {self.name!r} has no Hub repo")
            src, rev = where, self.revision
        try:
            tok = self.tokenizer()
        except (CheckpointError, OSError, ValueError) as e:
            log.warning("%s: no family tokenizer (%s); using files next to the weights if any", self.name, e)
            tok = None
        if check_backend(self.model_backend) == "bridge":
            model = bridge_from_hf_model(load_hf_llama(src, revision=rev, dtype=dtype), device=device, dtype=dtype,
                                         tokenizer=tok, model_name=self.name)
        else:
            model = load_hooked(src, revision=rev, device=device, dtype=dtype, tokenizer=tok, model_name=self.name)
        if tok is not None and len(tok) > int(model.cfg.d_vocab):
            raise CheckpointError(
                f"{self.name}: the tokenizer has {len(tok)} tokens but checkpoint {ck.iteration} embeds "
                f"only d_vocab={model.cfg.d_vocab}; ids >= {model.cfg.d_vocab} would crash the model. "
                "Use the tokenizer saved with these checkpoints (tokenizer=...)"
            )
        model.cfg.from_checkpoint = True
        model.cfg.checkpoint_value = ck.iteration
        model.cfg.checkpoint_label_type = "step"
        return model

    def tokenizer(self) -> Any:
        """The family's tokenizer (explicit source, else files next to the final checkpoint)."""
        if self.tokenizer_source is not None and not isinstance(self.tokenizer_source, (str, Path)):
            return self.tokenizer_source
        if "_tok" in self.__dict__:
            return self.__dict__["_tok"]
        if self.tokenizer_source is not None:
            tok = load_tokenizer(self.tokenizer_source)
        else:
            kind, where = self._source_kind(None)
            candidates = []
            if kind != "hub":
                final = self.catalogue().final.path
                root = Path(where)
                candidates = [p for p in (final, root, root / "tokenizer") if p is not None]
            hit = next((p for p in candidates if has_tokenizer_files(Path(p))), None)
            if hit is not None:
                tok = load_tokenizer(hit)
            elif kind == "hub":
                tok = load_tokenizer(str(where), revision=self.revision)
            else:  # local weights: never reach for the network behind the user's back
                hint = f" or the Hub repo {self.hub_repo}" if self.hub_repo else ""
                raise CheckpointError(
                    f"no tokenizer files next to the {self.name!r} checkpoints ({where}) nor in {where}/tokenizer/; "
                    f"set models[].tokenizer in the recipe (tokenizer=... in Python) to an HF tokenizer dir, "
                    f"a SentencePiece .model{hint}"
                )
        self.__dict__["_tok"] = tok
        return tok


# ------------------------------------------------------------------------- registry
FamilyFactory = Callable[..., ModelFamily]
_SAFE_NAME = re.compile(r"[a-z0-9][a-z0-9._+-]*")
_FACTORIES: dict[str, FamilyFactory] = {}


def register_family(name: str, factory: FamilyFactory, *, overwrite: bool = False) -> None:
    """Register ``factory(source=None, **kwargs) -> ModelFamily`` under ``name``."""
    key = name.lower()
    if not _SAFE_NAME.fullmatch(key) or ".." in key:
        raise CheckpointError(
            f"model family name {name!r} is not usable in output paths; use letters, digits, "
            "'.', '_', '+' and '-' only (no '/', no '..'), e.g. 'my-model-1b'"
        )
    if key in _FACTORIES and not overwrite:
        raise CheckpointError(f"model family {name!r} is already registered; pass overwrite=True")
    _FACTORIES[key] = factory


def registered_families() -> list[str]:
    """Names accepted by :func:`get_family`."""
    return sorted(_FACTORIES)


def get_family(name: str, /, source: Any = None, **kwargs: Any) -> ModelFamily:
    """The model family called ``name`` (case-insensitive), reading checkpoints from ``source``.

    "llm-jp-3-<size>" (or "llm-jp/llm-jp-3-<size>"): source None = Hub, else repo id / HF dir
    / root of iter dirs. "toy": source = the toy World's root (or the World itself). "hf" and
    the public families: see docs/models.md. ``kwargs``: the recipe's ``revision``,
    ``tokenizer``, ``tokens_per_step`` and ``name`` (the model's id in outputs).
    """
    key = str(name).strip().lower()
    if key.startswith("llm-jp/"):
        key = key[len("llm-jp/") :]
    if key not in _FACTORIES:
        if key.startswith("llm-jp-3-"):
            normalise_size(key)  # raises naming the valid sizes
        raise CheckpointError(
            f"unknown model family {name!r}; registered: {', '.join(registered_families())}. "
            "Add one with sae_bilingual.models.register_family(name, factory)"
        )
    return _FACTORIES[key](source=source, **kwargs)


def toy_factory(source: Any = None, tokenizer: Any = None, tokens_per_iteration: int | None = None,
                tokens_per_step: int | None = None, name: str | None = None) -> ModelFamily:
    """The "toy" family: the checkpoints of a built toy world (token counts from its catalogue.json)."""
    if source is None:
        raise CheckpointError(
            "the 'toy' family needs source=<World.root> (a dir of iter_NNNNNNN checkpoints); build "
            "it with sae_bilingual.world.build_world()"
        )
    fam = HFLlamaFamily(name="toy", source=source, tokenizer_source=tokenizer,
                        tokens_per_iteration=tokens_per_step or tokens_per_iteration)
    root = Path(fam._source_kind(None)[1])
    if (root / "catalogue.json").exists() and fam.tokens_per_iteration is None:
        meta = json.loads((root / "catalogue.json").read_text())
        fam.tokens_per_iteration = meta.get("tokens_per_iteration")
    return fam
