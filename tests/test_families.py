"""family: hf and the built-in public families: HF parity per architecture, catalogues, clear errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import transformers as T
from transformers import AutoModelForCausalLM

from sae_bilingual.errors import CheckpointError, ConfigError
from sae_bilingual.models import PUBLIC_FAMILIES, get_family, is_paper_model
from sae_bilingual.models.checkpoint_names import parse_checkpoint_name
from sae_bilingual.models.convert_any import hooked_from_hf_any
from sae_bilingual.models.generic import checkpoints_from_names
from sae_bilingual.models.public import PYTHIA_STEPS

VOCAB = 300


def tiny_config(arch: str):
    """A random-model config of ``arch`` with d_model 64, 2 layers."""
    common = dict(vocab_size=VOCAB, max_position_embeddings=64)
    if arch == "llama":
        return T.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, tie_word_embeddings=False, rope_theta=5000.0,
                             architectures=["LlamaForCausalLM"], **common)
    if arch == "neox":
        return T.GPTNeoXConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                               rotary_pct=0.25, tie_word_embeddings=False, architectures=["GPTNeoXForCausalLM"],
                               **common)
    if arch == "olmo":
        return T.OlmoConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                            architectures=["OlmoForCausalLM"], **common)
    if arch == "olmo2":
        return T.Olmo2Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                             architectures=["Olmo2ForCausalLM"], **common)
    if arch == "bloom":
        return T.BloomConfig(vocab_size=VOCAB, hidden_size=64, n_layer=2, n_head=4,
                             architectures=["BloomForCausalLM"])
    if arch == "mistral":
        return T.MistralConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, architectures=["MistralForCausalLM"], **common)
    if arch == "qwen2":
        return T.Qwen2Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, tie_word_embeddings=False, architectures=["Qwen2ForCausalLM"],
                             **common)
    raise ValueError(arch)


def tiny_model(arch: str, seed: int = 0):
    """Random tiny model; norms and biases randomised so that a dropped or folded one would show."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return model


def make_root(root: Path, arch: str, names: list[str]) -> Path:
    """Checkpoint folders ``names`` of random ``arch`` models (distinct weights per folder)."""
    for i, n in enumerate(names):
        tiny_model(arch, seed=i).save_pretrained(root / n)
    return root


def _toks() -> torch.Tensor:
    t = torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    t[:, 0] = 1
    return t


def _assert_matches_hf(model, path: Path) -> None:
    hf = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        out = hf(_toks(), output_hidden_states=True)
        logits, cache = model.run_with_cache(_toks())
    assert (logits - out.logits).abs().max() < 1e-4
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"], out.hidden_states[1], atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "neox", "olmo", "olmo2", "bloom", "mistral", "qwen2"])
def test_every_architecture_matches_hf_logits(arch: str) -> None:
    hf = tiny_model(arch)
    model = hooked_from_hf_any(hf)
    with torch.no_grad():
        out = hf(_toks(), output_hidden_states=True)
        logits, cache = model.run_with_cache(_toks())
    assert (logits - out.logits).abs().max() < 1e-4
    for layer in range(hf.config.num_hidden_layers - 1):  # HF's last hidden state is after the final norm
        torch.testing.assert_close(cache[f"blocks.{layer}.hook_resid_post"], out.hidden_states[layer + 1],
                                   atol=1e-4, rtol=0)


# (built-in family, architecture, checkpoint folders named as its Hub revisions, tokens_per_step to pass)
BUILTIN = [
    ("pythia-160m", "neox", ["step0", "step512", "step1000"], None),
    ("olmo-1b", "olmo", ["step0-tokens0B", "step1000-tokens4B"], None),
    ("olmo-2-7b", "olmo2", ["stage1-step150-tokens1B", "stage1-step2150-tokens10B"], None),
    ("bloom-560m", "bloom", ["global_step1000", "global_step10000"], 1_000_000),
    ("croissantllm", "llama", ["base_5k", "base_25k"], None),
    ("amber", "llama", ["ckpt_000", "ckpt_005"], 3_000_000_000),
]


@pytest.mark.parametrize("family,arch,names,tps", BUILTIN, ids=[b[0] for b in BUILTIN])
def test_builtin_family_loads_local_checkpoints_like_hf(tmp_path: Path, family, arch, names, tps) -> None:
    root = make_root(tmp_path / family, arch, names)
    kw = {"tokens_per_step": tps} if tps else {}
    fam = get_family(family, source=root, **kw)
    cat = fam.catalogue()
    steps = [parse_checkpoint_name(n).step for n in names]
    assert cat.iterations == sorted(steps)
    per_step = tps or PUBLIC_FAMILIES[family].tokens_per_step
    assert [c.tokens for c in cat] == [s * per_step for s in sorted(steps)]
    assert (fam.n_layers, fam.d_model) == (2, 64)
    final = cat.final
    model = fam.load(final)
    assert model.cfg.checkpoint_value == final.iteration
    _assert_matches_hf(model, final.path)
    first = fam.load(cat.checkpoints[0])  # another folder, other weights
    assert not torch.equal(first.W_E, model.W_E)


def test_pythia_catalogue_revisions_steps_tokens() -> None:
    cat = get_family("pythia-160m-deduped").catalogue()  # offline: Pythia's branches are known
    assert len(cat) == 154 and cat.iterations[:11] == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    assert cat.final.revision == "step143000" and cat.final.repo is None
    # Pythia README: 299,892,736,000 tokens in total, a checkpoint every 2,097,152,000 tokens
    assert cat.final.tokens == 299_892_736_000
    assert cat.select(iteration=2000).tokens - cat.select(iteration=1000).tokens == 2_097_152_000
    assert cat.select(tokens=100e9).revision == "step48000"  # 47.68 steps of 2.097B -> nearest in log space
    assert list(PYTHIA_STEPS) == cat.iterations
    from transformer_lens.loading_from_pretrained import PYTHIA_CHECKPOINTS

    assert list(PYTHIA_STEPS) == list(PYTHIA_CHECKPOINTS)


@pytest.mark.parametrize("family,revisions", [
    ("olmo-1b", ["step20000-tokens84B"]),
    ("olmo-7b-0424", ["step115000-tokens482B", "step200000-tokens838B"]),
    ("olmo-2-7b", ["stage1-step928646-tokens3896B", "step150-tokens1B", "step2150-tokens10B"]),
    ("olmo-2-1b", ["stage1-step120000-tokens252B", "stage1-step300000-tokens630B",
                   "stage1-step1700000-tokens3566B"]),
])
def test_olmo_revision_names_agree_with_tokens_per_step(family: str, revisions: list[str]) -> None:
    """Real branch names (docs/models.md): step x tokens-per-step lands within 1B of the name's count."""
    tps = PUBLIC_FAMILIES[family].tokens_per_step
    cks = checkpoints_from_names(revisions + ["stage2-ingredient1-step11931-tokens50B", "main"], tps)
    assert len(cks) == len(revisions)  # stage-2 (annealing) and main are not pre-training steps
    for ck in cks:
        parsed = parse_checkpoint_name(ck.revision)
        assert ck.iteration == parsed.step and ck.tokens == parsed.step * tps
        assert abs(ck.tokens - parsed.tokens) <= 1e9


def test_olmo_2_13b_takes_tokens_from_revision_names() -> None:
    assert PUBLIC_FAMILIES["olmo-2-13b"].tokens_per_step is None  # not stated publicly
    (ck,) = checkpoints_from_names(["stage1-step1000-tokens9B"], None)
    assert (ck.iteration, ck.tokens) == (1000, 9_000_000_000)


def test_croissant_catalogue_matches_cards() -> None:
    cat = get_family("croissantllm").catalogue()
    card_tera = {5000: 0.08, 25000: 0.39, 35000: 0.55, 55000: 0.87, 190000: 2.99}  # "(0.87 T) tokens" etc.
    for step, tera in card_tera.items():
        ck = cat.select(iteration=step)
        assert round(ck.tokens / 1e12, 2) == tera
    assert cat.select(iteration=55000).repo == "croissantllm/base_55k"
    assert cat.final.repo == "croissantllm/CroissantLLMBase" and cat.final.iteration == 190000


def test_hub_location_of_a_step() -> None:
    from sae_bilingual.models.public import hub_location

    assert hub_location("pythia-160m", 1000) == ("EleutherAI/pythia-160m", "step1000")
    assert hub_location("croissantllm", 55000) == ("croissantllm/base_55k", None)
    assert hub_location("amber", 7) == ("LLM360/Amber", "ckpt_007")
    assert hub_location("hf", 7) is None


def test_amber_and_bloom_need_tokens_per_step() -> None:
    with pytest.raises(CheckpointError, match="tokens_per_step"):
        checkpoints_from_names(["global_step1000"], None)
    cat = get_family("amber", tokens_per_step=10).catalogue()
    assert (len(cat), cat.final.revision, cat.final.tokens) == (360, "ckpt_359", 3590)


def test_checkpoint_name_patterns() -> None:
    cases = {"iter_0010000": (10000, None), "step1000": (1000, None), "step-1000": (1000, None),
             "step_7": (7, None), "global_step250": (250, None), "step1000-tokens4B": (1000, 4 * 10**9),
             "step-001000-2BT": (1000, 2 * 10**9), "checkpoint-500": (500, None), "ckpt_012": (12, None),
             "base_55k": (55000, None)}
    for name, (step, tokens) in cases.items():
        p = parse_checkpoint_name(name)
        assert (p.step, p.tokens) == (step, tokens), name
    for name in ("tokenizer", "main", "stage2-ingredient1-step11931-tokens50B", "iter_x"):
        assert parse_checkpoint_name(name) is None


def test_hf_family_root_tokens_and_errors(tmp_path: Path) -> None:
    root = make_root(tmp_path / "r", "llama", ["step10", "step20"])
    (root / "tokenizer").mkdir()  # not a checkpoint: skipped
    with pytest.raises(CheckpointError, match="tokens_per_step"):
        get_family("hf", source=root).catalogue()
    fam = get_family("hf", source=root, tokens_per_step=7, name="mine")
    assert fam.name == "mine" and [c.tokens for c in fam.catalogue()] == [70, 140]
    (root / "catalogue.json").write_text(json.dumps({"checkpoints": [{"iteration": 20, "tokens": 999}]}))
    assert [c.tokens for c in get_family("hf", source=root, tokens_per_step=7).catalogue()] == [70, 999]
    assert get_family("hf", source=root, tokens_per_step=7).name == "r"  # default name: the folder
    with pytest.raises(CheckpointError, match="needs models\\[\\].source"):
        get_family("hf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="step"):
        get_family("hf", source=tmp_path / "empty").catalogue()


def test_unconvertible_architecture_is_named(tmp_path: Path) -> None:
    cfg = T.BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=96, architectures=["BertForMaskedLM"])
    (tmp_path / "r" / "step1").mkdir(parents=True)
    cfg.save_pretrained(tmp_path / "r" / "step1")
    fam = get_family("hf", source=tmp_path / "r", tokens_per_step=1)
    with pytest.raises(ConfigError, match="BertForMaskedLM.*cannot be converted by TransformerLens"):
        fam.n_layers  # noqa: B018


def test_llmjp_borrowed_name_warns_and_tokens_per_step_wins(tmp_path: Path, caplog) -> None:
    root = make_root(tmp_path / "r", "llama", ["iter_0000004"])
    with caplog.at_level(logging.WARNING):
        fam = get_family("llm-jp-3-150m", source=root)
    assert "LLM-jp-3 150m schedule" in caplog.text
    assert fam.catalogue().final.tokens == 4 * 2_097_152
    assert get_family("llm-jp-3-150m", source=root, tokens_per_step=2048).catalogue().final.tokens == 8192


def test_paper_comparison_only_for_the_papers_model(tmp_path: Path) -> None:
    assert is_paper_model(get_family("llm-jp-3-3.7b"))  # shape from the size table, offline
    root = make_root(tmp_path / "r", "llama", ["iter_0000004"])
    assert not is_paper_model(get_family("llm-jp-3-3.7b", source=root))  # borrowed name, tiny shape
    assert not is_paper_model(get_family("llm-jp-3-1.8b"))
    assert not is_paper_model(get_family("hf", source=root, tokens_per_step=1))
