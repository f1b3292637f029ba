"""LLM-jp-3 size facts: shapes and training schedules of every released size.

Why its own module: the checkpoint catalogue, the model registry and the loaders all need
these numbers; a module that imports nothing of the package but its errors sits below all
of them, so none of them has to import another to read the size table.

Source of every number in :data:`LLMJP_SIZES`: ``../shared/LLMJP.md`` of the project ("LLM-jp-3 facts"),
which restates the public Hub configs ``llm-jp/llm-jp-3-<size>/config.json`` (hidden_size,
num_hidden_layers, num_attention_heads = num_key_value_heads, head_dim, intermediate_size;
vocab_size 99,584; max_position_embeddings 4096; rope_theta 10000; rms_norm_eps 1e-5;
untied embeddings; no biases) and the LLM-jp training scripts (global batch 512 x 4096
tokens = 2,097,152 tokens/iteration for 150m-1.8b, 1024 x 4096 = 4,194,304 for 3.7b-13b;
final iteration 988,240 / 494,120). The 440m tokens/iteration is inferred there (same
recipe as the other small sizes).
"""

from __future__ import annotations

from dataclasses import dataclass

from sae_bilingual.errors import CheckpointError

HUB_ORG = "llm-jp"
VOCAB_SIZE = 99_584
MAX_POSITION_EMBEDDINGS = 4096
ROPE_THETA = 10_000.0
RMS_NORM_EPS = 1e-5
BOS_ID, EOS_ID, PAD_ID = 1, 2, 4


@dataclass(frozen=True)
class LlmJpSpec:
    """Shape and schedule of one LLM-jp-3 size (see the module docstring for sources)."""

    size: str
    """Size label as in the Hub repo name, e.g. "1.8b"."""
    d_model: int
    """hidden_size."""
    n_layers: int
    """num_hidden_layers."""
    n_heads: int
    """num_attention_heads (= num_key_value_heads: no GQA in LLM-jp-3)."""
    d_head: int
    """head_dim."""
    d_mlp: int
    """intermediate_size (SwiGLU)."""
    tokens_per_iteration: int
    """Global batch x sequence length: training tokens per Megatron iteration."""
    final_iteration: int
    """Iteration of the released (final) checkpoint."""

    @property
    def repo_id(self) -> str:
        """Hub repo of the final weights."""
        return f"{HUB_ORG}/llm-jp-3-{self.size}"

    @property
    def name(self) -> str:
        """Family name, e.g. "llm-jp-3-1.8b"."""
        return f"llm-jp-3-{self.size}"


# From ../shared/LLMJP.md (= public HF config.json of llm-jp/llm-jp-3-<size> + training scripts).
LLMJP_SIZES: dict[str, LlmJpSpec] = {
    s.size: s
    for s in (
        LlmJpSpec("150m", 512, 12, 8, 64, 2048, 2_097_152, 988_240),
        LlmJpSpec("440m", 1024, 16, 8, 128, 3584, 2_097_152, 988_240),  # tokens/iter inferred
        LlmJpSpec("980m", 1536, 20, 8, 192, 5376, 2_097_152, 988_240),
        LlmJpSpec("1.8b", 2048, 24, 16, 128, 7168, 2_097_152, 988_240),
        LlmJpSpec("3.7b", 3072, 28, 24, 128, 8192, 4_194_304, 494_120),
        LlmJpSpec("7.2b", 4096, 32, 32, 128, 11008, 4_194_304, 494_120),
        LlmJpSpec("13b", 5120, 40, 40, 128, 13824, 4_194_304, 494_120),
    )
}


def normalise_size(size: str) -> str:
    """Accept "1.8b", "1.8B", "llm-jp-3-1.8b" or "llm-jp/llm-jp-3-1.8b"; return "1.8b"."""
    s = str(size).strip().lower()
    for prefix in (f"{HUB_ORG}/", "llm-jp-3-"):
        if s.startswith(prefix):
            s = s[len(prefix) :]
    if s not in LLMJP_SIZES:
        raise CheckpointError(
            f"unknown LLM-jp-3 size {size!r}; valid sizes: {', '.join(LLMJP_SIZES)}"
        )
    return s


def llmjp_spec(size: str) -> LlmJpSpec:
    """The :class:`LlmJpSpec` of a size (any spelling accepted by :func:`normalise_size`)."""
    return LLMJP_SIZES[normalise_size(size)]


def tokens_per_iteration(size: str) -> int:
    """Training tokens per Megatron iteration for a size (2,097,152 or 4,194,304)."""
    return llmjp_spec(size).tokens_per_iteration
