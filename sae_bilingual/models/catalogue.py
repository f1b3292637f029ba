"""Which training checkpoints exist for a model, and how to pick one.

A checkpoint root is a directory of HF-format ``iter_NNNNNNN`` (7-digit Megatron iteration)
directories, as the LLM-jp authors convert them and as the toy world writes them. Token
counts come from ``catalogue.json`` in the root when present, else from
``tokens_per_iteration``.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sae_bilingual.errors import CheckpointError
from sae_bilingual.models.sizes import llmjp_spec

log = logging.getLogger(__name__)

ITER_DIR = re.compile(r"^iter_(\d{7})$")
CATALOGUE_FILE = "catalogue.json"
HUB_NOTE = (
    "{name}: only the final checkpoint is on the Hub; intermediate iterations need a local "
    "root of iter_NNNNNNN dirs (source=...)"
)


def iter_dirname(iteration: int) -> str:
    """Directory name of a checkpoint: ``iter_`` + 7-digit zero-padded iteration."""
    return f"iter_{int(iteration):07d}"


@dataclass(frozen=True, order=True)
class Checkpoint:
    """One training checkpoint."""

    iteration: int
    """Optimizer step (Megatron iteration) the weights were saved at."""
    tokens: int
    """Training tokens seen at this checkpoint."""
    path: Path | None = field(default=None, compare=False)
    """HF-format directory with the weights; None = the model's Hub repo (final checkpoint)."""
    revision: str | None = field(default=None, compare=False)
    """Hub revision (branch) holding this checkpoint, when the Hub repo keeps one per checkpoint."""
    repo: str | None = field(default=None, compare=False)
    """Hub repo of this checkpoint when it differs from the family's (one repo per checkpoint)."""

    @property
    def name(self) -> str:
        """``iter_NNNNNNN``, as used in output paths."""
        return iter_dirname(self.iteration)


def _fmt_tokens(n: int) -> str:
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


@dataclass
class CheckpointCatalogue:
    """Sorted checkpoints of one model, with selection helpers."""

    checkpoints: list[Checkpoint]
    """Checkpoints sorted by iteration (unique iterations)."""
    root: Path | None = None
    """Directory the catalogue was read from, if any."""
    note: str = ""
    """Appended to selection errors (e.g. why only the final checkpoint is listed)."""

    def __post_init__(self) -> None:
        self.checkpoints = sorted(self.checkpoints)
        its = [c.iteration for c in self.checkpoints]
        if len(set(its)) != len(its):
            raise CheckpointError(f"duplicate iterations in checkpoint catalogue: {its}")
        if not self.checkpoints:
            raise CheckpointError(
                f"no checkpoints in catalogue{f' at {self.root}' if self.root else ''}; a root must "
                "hold iter_NNNNNNN (7-digit) HF model directories each with a config.json"
            )

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_root(
        cls, root: str | Path, tokens_per_iteration: int | None = None
    ) -> CheckpointCatalogue:
        """List the ``iter_NNNNNNN`` directories under ``root``.

        Token counts: ``root/catalogue.json`` with ``{"checkpoints": [{"iteration", "tokens"}]}``
        (per-iteration counts win) and/or ``{"tokens_per_iteration": int}`` -- the file, written
        with the checkpoints, wins over the ``tokens_per_iteration`` argument (the fallback). Directories without ``config.json`` (incomplete
        conversions) are skipped with a warning.
        """
        root = Path(root).expanduser()
        if not root.is_dir():
            raise CheckpointError(
                f"checkpoint root {root} does not exist or is not a directory; pass a directory "
                "holding iter_NNNNNNN checkpoint dirs (or a single HF model dir)"
            )
        per_iter: dict[int, int] = {}
        tpi = tokens_per_iteration
        cat_file = root / CATALOGUE_FILE
        if cat_file.exists():
            try:
                meta = json.loads(cat_file.read_text())
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{cat_file} is not valid JSON ({e}); fix or delete it") from e
            if "tokens_per_iteration" in meta:
                tpi = int(meta["tokens_per_iteration"])
                if tokens_per_iteration not in (None, tpi):
                    log.warning(
                        "%s says tokens_per_iteration=%d; using it instead of %d",
                        cat_file, tpi, tokens_per_iteration,
                    )
            for entry in meta.get("checkpoints", []):
                per_iter[int(entry["iteration"])] = int(entry["tokens"])
        found: list[Checkpoint] = []
        for d in sorted(root.iterdir()):
            m = ITER_DIR.match(d.name)
            if not (m and d.is_dir()):
                continue
            if not (d / "config.json").exists():
                log.warning("skipping %s: no config.json (incomplete checkpoint?)", d)
                continue
            it = int(m.group(1))
            if it in per_iter:
                tokens = per_iter[it]
            elif tpi is not None:
                tokens = it * tpi
            else:
                raise CheckpointError(
                    f"cannot tell the token count of {d}: pass tokens_per_iteration=... or write "
                    f'{cat_file} with {{"tokens_per_iteration": N}} or '
                    '{"checkpoints": [{"iteration": i, "tokens": t}, ...]}'
                )
            found.append(Checkpoint(it, tokens, d))
        if not found:
            others = sorted(p.name for p in root.iterdir())[:10]
            raise CheckpointError(
                f"no iter_NNNNNNN checkpoint directories (7 digits, with config.json) under {root}; "
                f"found {others or 'nothing'}. Point at the root that holds them"
            )
        return cls(found, root=root)

    @classmethod
    def for_llmjp(
        cls, size: str, iterations: Iterable[int] | None = None, root: str | Path | None = None
    ) -> CheckpointCatalogue:
        """Catalogue of an LLM-jp-3 size: its final iteration (the public Hub weights).

        ``iterations`` adds known intermediate iterations (not public; they need a ``root``);
        with ``root`` the checkpoints found there are listed instead (token counts from the
        size table).
        """
        spec = llmjp_spec(size)
        if root is not None:
            return cls.from_root(root, tokens_per_iteration=spec.tokens_per_iteration)
        its = set(iterations or ()) | {spec.final_iteration}
        return cls(
            [Checkpoint(i, i * spec.tokens_per_iteration, None) for i in sorted(its)],
            root=None,
            note=HUB_NOTE.format(name=spec.name),
        )

    # ------------------------------------------------------------------ queries
    @property
    def iterations(self) -> list[int]:
        """All iterations, ascending."""
        return [c.iteration for c in self.checkpoints]

    @property
    def final(self) -> Checkpoint:
        """The last (highest-iteration) checkpoint."""
        return self.checkpoints[-1]

    def __len__(self) -> int:
        return len(self.checkpoints)

    def __iter__(self):
        return iter(self.checkpoints)

    def _choices(self) -> str:
        return ", ".join(f"{c.iteration} ({_fmt_tokens(c.tokens)} tokens)" for c in self.checkpoints)

    def select(
        self,
        iteration: int | None = None,
        tokens: int | float | None = None,
        *,
        rtol: float | None = 0.1,
    ) -> Checkpoint:
        """Pick one checkpoint by iteration (exact) or by token count (nearest).

        - neither given: the final checkpoint;
        - ``iteration``: must match exactly, else :class:`CheckpointError` listing the choices;
        - ``tokens``: the checkpoint nearest in log-space (checkpoints are log-spaced), which
          must lie within ``rtol`` relative difference of the request (default 10%, so
          "40B tokens" finds LLM-jp-3 3.7B iteration 10,000 ≈ 41.9B); ``rtol=None`` accepts
          the nearest whatever the distance. Like Pythia's ``checkpoint_value``, but by
          tokens rather than step.
        """
        if iteration is not None and tokens is not None:
            raise CheckpointError("give either iteration or tokens, not both")
        if iteration is None and tokens is None:
            return self.final
        if iteration is not None:
            for c in self.checkpoints:
                if c.iteration == int(iteration):
                    return c
            where = f" under {self.root}" if self.root else ""
            raise CheckpointError(
                f"no checkpoint at iteration {iteration}{where}; available iterations: {self._choices()}"
                + (f". {self.note}" if self.note else "")
            )
        assert tokens is not None
        if tokens < 0:
            raise CheckpointError(f"tokens must be >= 0, got {tokens}")
        best = min(self.checkpoints, key=lambda c: abs(math.log1p(c.tokens) - math.log1p(tokens)))
        if rtol is not None:
            rel = abs(best.tokens - tokens) / max(float(tokens), 1.0)
            if rel > rtol:
                raise CheckpointError(
                    f"no checkpoint within {rtol:.0%} of {_fmt_tokens(int(tokens))} tokens (nearest is "
                    f"iteration {best.iteration} at {_fmt_tokens(best.tokens)}); available: "
                    f"{self._choices()}. Pass rtol=None to take the nearest anyway"
                )
        return best

    def log_spaced(self, n: int) -> list[Checkpoint]:
        """Up to ``n`` checkpoints spread evenly in log(iteration), always first and final.

        Fewer than ``n`` come back when the catalogue has fewer, or when several targets
        fall nearest the same checkpoint.
        """
        if n < 1:
            raise CheckpointError(f"log_spaced needs n >= 1, got {n}")
        cks = self.checkpoints
        if n >= len(cks):
            return list(cks)
        if n == 1:
            return [self.final]
        head: list[Checkpoint] = []
        if cks[0].iteration == 0:  # log(0) is undefined: keep the init checkpoint, space the rest
            head, cks, n = [cks[0]], cks[1:], n - 1
            if n == 1:
                return head + [self.final]
        lo, hi = math.log(cks[0].iteration), math.log(cks[-1].iteration)
        chosen: list[Checkpoint] = []
        for k in range(n):
            target = lo + (hi - lo) * k / (n - 1)
            c = min(cks, key=lambda c: abs(math.log(c.iteration) - target))
            if c not in chosen:
                chosen.append(c)
        return head + sorted(chosen)

    def subset(self, iterations: Sequence[int]) -> list[Checkpoint]:
        """The checkpoints at the given iterations (each must exist)."""
        return [self.select(iteration=i) for i in iterations]
