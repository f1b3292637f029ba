"""Built-in catalogues of public model families with released pre-training checkpoints.

Every fact here (repo, revision names, tokens per step) is taken from the public model card
or release notes named in ``sources`` and in docs/models.md; where a card does not state a
number, ``tokens_per_step`` is None (the recipe must give it) or marked *derived* there.
Each family is an :class:`~sae_bilingual.models.generic.HFFamily`: ``source`` None = the Hub
(needs the network), or a local root of checkpoint folders named as the Hub revisions are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sae_bilingual.models.catalogue import Checkpoint
from sae_bilingual.models.generic import HFFamily

PYTHIA_STEPS: tuple[int, ...] = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512) + tuple(range(1000, 143_001, 1000))
"""Pythia's 154 checkpoint branches ``step{N}`` (EleutherAI card; = TransformerLens PYTHIA_CHECKPOINTS)."""


@dataclass(frozen=True)
class PublicFamily:
    """One released model and where its checkpoints are."""

    name: str
    """Registry / output name, e.g. "pythia-160m"."""
    repo: str
    """Hub repo of the final weights (and of the step branches, unless ``repos`` says otherwise)."""
    architecture: str
    """HF architecture class, all TransformerLens-convertible."""
    tokens_per_step: int | None
    """Training tokens per optimizer step; None = not stated publicly (give it in the recipe)."""
    final_step: int | None
    """Step of the final checkpoint (None: read from the repo's branch list)."""
    steps: tuple[int, ...] = ()
    """Offline list of checkpoint steps (Pythia, Amber); empty = list the repo's branches."""
    revision_format: str = "step{step}"
    """Branch name of a step when ``steps`` is given."""
    repos: dict[int, str] = field(default_factory=dict)
    """Step -> repo for families with one Hub repo per checkpoint (CroissantLLM)."""
    sources: tuple[str, ...] = ()
    """Public URLs the facts above come from."""

    def checkpoints(self) -> list[Checkpoint]:
        """The Hub checkpoints known offline (empty when the branches must be listed)."""
        tps = self.tokens_per_step or 0
        if self.repos:
            return [Checkpoint(s, s * tps, None, repo=r) for s, r in sorted(self.repos.items())]
        return [Checkpoint(s, s * tps, None, revision=self.revision_format.format(step=s)) for s in self.steps]


_PYTHIA_SRC = ("https://github.com/EleutherAI/pythia",
               "https://huggingface.co/EleutherAI/neox-ckpt-pythia-31m-seed7")
_OLMO_SRC = ("https://huggingface.co/allenai/OLMo-1B-hf/discussions/3",
             "https://huggingface.co/allenai/OLMo-7B-Twin-2T/blob/main/revisions.txt")
_OLMO2_SRC = ("https://huggingface.co/allenai/OLMo-2-1124-7B/discussions/6",)
_BLOOM_SRC = ("https://huggingface.co/bigscience/bloom-intermediate",
              "https://huggingface.co/bigscience/bloom/discussions/267")
_CROISSANT_SRC = ("https://huggingface.co/croissantllm/base_5k", "https://huggingface.co/croissantllm/base_55k",
                  "https://huggingface.co/croissantllm/CroissantLLMBase", "https://arxiv.org/abs/2402.00786")


def _pythia() -> list[PublicFamily]:
    sizes = ("14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")
    out = []
    for size in sizes:
        for suffix in ("", "-deduped") if size not in ("14m", "31m") else ("",):
            out.append(PublicFamily(f"pythia-{size}{suffix}", f"EleutherAI/pythia-{size}{suffix}",
                                    "GPTNeoXForCausalLM", 2_097_152, 143_000, PYTHIA_STEPS, sources=_PYTHIA_SRC))
    return out


PUBLIC_FAMILIES: dict[str, PublicFamily] = {
    f.name: f
    for f in (
        *_pythia(),
        # OLMo: branches "step{N}-tokens{M}B", every 1000 steps. Tokens per step derived from the
        # names (step20000-tokens84B; not stated as a number on the cards).
        PublicFamily("olmo-1b", "allenai/OLMo-1B-hf", "OlmoForCausalLM", 4_194_304, None, sources=_OLMO_SRC),
        PublicFamily("olmo-7b-0424", "allenai/OLMo-7B-0424-hf", "OlmoForCausalLM", 4_194_304, None,
                     sources=("https://huggingface.co/allenai/OLMo-7B-0424-hf/discussions/4",
                              "https://huggingface.co/allenai/OLMo-7B-0424/commit/c390c47f6e84684f18d6ce2b72c15c14548fe11a")),
        # OLMo-2: stage-1 branches "stage1-step{N}-tokens{M}B" (a few without "stage1-").
        PublicFamily("olmo-2-1b", "allenai/OLMo-2-0425-1B", "Olmo2ForCausalLM", 2_097_152, None,
                     sources=("https://huggingface.co/dvader13/olmo2-1b-sft-s1-3566b",
                              "https://huggingface.co/arkilpatel/olmo2-1b-traj-s1-252b")),
        PublicFamily("olmo-2-7b", "allenai/OLMo-2-1124-7B", "Olmo2ForCausalLM", 4_194_304, None,
                     sources=_OLMO2_SRC),
        PublicFamily("olmo-2-13b", "allenai/OLMo-2-1124-13B", "Olmo2ForCausalLM", None, None,
                     sources=("https://huggingface.co/allenai/OLMo-2-1124-13B",)),
        # BLOOM: "*-intermediate" repos with branches "global_step{N}"; tokens per step not stated.
        *(PublicFamily(f"bloom-{s}", f"bigscience/bloom-{s}-intermediate", "BloomForCausalLM", None, None,
                       sources=_BLOOM_SRC) for s in ("560m", "1b1", "1b7", "7b1")),
        # CroissantLLM: one repo per checkpoint, "croissantllm/base_{N}k"; the final is CroissantLLMBase.
        PublicFamily("croissantllm", "croissantllm/CroissantLLMBase", "LlamaForCausalLM", 15_728_640, 190_000,
                     repos={5000: "croissantllm/base_5k", 25000: "croissantllm/base_25k",
                            35000: "croissantllm/base_35k", 55000: "croissantllm/base_55k",
                            100000: "croissantllm/base_100k", 190000: "croissantllm/CroissantLLMBase"},
                     sources=_CROISSANT_SRC),
        # LLM360 Amber: branches "ckpt_000" .. "ckpt_359" (a checkpoint index, not an optimizer step).
        PublicFamily("amber", "LLM360/Amber", "LlamaForCausalLM", None, 359, tuple(range(360)), "ckpt_{step:03d}",
                     sources=("https://huggingface.co/LLM360/Amber",)),
    )
}


def public_factory(spec: PublicFamily) -> Callable[..., HFFamily]:
    """Registry factory of one public family (source None = the Hub)."""

    def make(source: Any = None, name: str | None = None, tokenizer: Any = None,
             tokens_per_step: int | None = None, revision: str | None = None) -> HFFamily:
        tps = tokens_per_step if tokens_per_step is not None else spec.tokens_per_step
        offline = spec.checkpoints() if (spec.steps or spec.repos) else None
        if offline is not None and tokens_per_step is not None:
            offline = [Checkpoint(c.iteration, c.iteration * tokens_per_step, None, revision=c.revision, repo=c.repo)
                       for c in offline]
        if offline is not None and tps is None:
            offline = None  # no token counts to give: listing fails later with the fix in its message

        return HFFamily(name=name or spec.name, source=source, hub_repo=spec.repo, revision=revision,
                        tokens_per_iteration=tps, final_iteration=spec.final_step, tokenizer_source=tokenizer,
                        hub_checkpoints=(lambda: offline) if offline is not None else None)

    return make


def register_public_families(register: Callable[..., None]) -> None:
    """Register every :data:`PUBLIC_FAMILIES` entry with ``register(name, factory, overwrite=True)``."""
    for spec in PUBLIC_FAMILIES.values():
        register(spec.name, public_factory(spec), overwrite=True)


def hub_location(family: str, step: int) -> tuple[str, str | None] | None:
    """(Hub repo, revision) of a built-in family's checkpoint when known offline, else None."""
    spec = PUBLIC_FAMILIES.get(family)
    if spec is None:
        return None
    if spec.repos:
        return (spec.repos[step], None) if step in spec.repos else None
    if step in spec.steps:
        return spec.repo, spec.revision_format.format(step=step)
    return spec.repo, None  # branch listed on the Hub; its name encodes the step
