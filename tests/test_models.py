"""sae_bilingual.models: HF parity, checkpoint catalogues, families, LLM-jp table, TL names."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sae_bilingual.errors import CheckpointError
from sae_bilingual.layers import LayerError
from sae_bilingual.models import (
    LLMJP_SIZES,
    Checkpoint,
    CheckpointCatalogue,
    get_family,
    hooked_config_from_hf,
    llmjp_llama_config,
    load_hooked,
    load_llmjp,
    register_family,
    register_with_transformer_lens,
    tokens_per_iteration,
)
from tests.bad_input_fixtures import names_problem_and_fix

VOCAB = 300


def tiny_llama(seed: int = 0, *, head_dim: int | None = None, n_kv: int = 2, n_layers: int = 3) -> LlamaForCausalLM:
    """Random tiny Llama: d_model 64, 4 heads, GQA, untied, no biases, rope_theta != default."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=n_kv,
        head_dim=head_dim or 16,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        rope_theta=5000.0,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # norms are ones at init; randomise so folding mistakes would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
    return model


def _tokens(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(3, VOCAB, (2, 12), generator=g)
    t[:, 0] = 1
    return t


@pytest.mark.parametrize("head_dim,n_kv", [(None, 2), (24, 4), (24, 2)], ids=["gqa", "headdim24", "headdim24-gqa"])
def test_load_hooked_matches_hf_logits_and_hidden_states(tmp_path: Path, head_dim, n_kv) -> None:
    hf = tiny_llama(head_dim=head_dim, n_kv=n_kv)
    hf.save_pretrained(tmp_path / "m")
    model = load_hooked(tmp_path / "m", dtype=torch.float32)
    assert model.cfg.d_head == (head_dim or 16)
    assert model.cfg.n_key_value_heads == (None if n_kv == 4 else n_kv)
    assert model.cfg.rotary_base == 5000.0
    toks = _tokens()
    with torch.no_grad():
        out = hf(toks, output_hidden_states=True)
        logits, cache = model.run_with_cache(toks)
    assert (logits - out.logits).abs().max() < 1e-4
    hs = out.hidden_states
    assert len(hs) == hf.config.num_hidden_layers + 1
    torch.testing.assert_close(cache["blocks.0.hook_resid_pre"], hs[0], atol=1e-5, rtol=0)
    n = hf.config.num_hidden_layers
    for layer in range(n - 1):
        torch.testing.assert_close(cache[f"blocks.{layer}.hook_resid_post"], hs[layer + 1], atol=1e-4, rtol=0)
    # HF's last hidden state has the final RMSNorm applied; TL's resid_post does not.
    last = cache[f"blocks.{n - 1}.hook_resid_post"]
    torch.testing.assert_close(model.ln_final(last), hs[n], atol=1e-4, rtol=0)
    assert (last - hs[n]).abs().max() > 1e-2


def test_hooked_config_from_llmjp_980m_reads_head_dim() -> None:
    cfg = hooked_config_from_hf(llmjp_llama_config("980m"), dtype=torch.float32, device="cpu")
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.d_mlp) == (1536, 20, 8, 192, 5376)
    assert cfg.n_key_value_heads is None  # LLM-jp-3 has no GQA
    assert cfg.rotary_dim == 192 and cfg.rotary_base == 10000.0 and cfg.eps == 1e-5
    assert cfg.d_vocab == 99_584 and cfg.n_ctx == 4096
    assert cfg.normalization_type == "RMS" and cfg.gated_mlp and cfg.final_rms and cfg.act_fn == "silu"
    assert cfg.positional_embedding_type == "rotary"


def test_llmjp_table() -> None:
    assert list(LLMJP_SIZES) == ["150m", "440m", "980m", "1.8b", "3.7b", "7.2b", "13b"]
    # iteration 10,000 of the 3.7B is ~42B tokens (the paper's "~40B"); final ~2.1T for all sizes
    assert 10_000 * tokens_per_iteration("3.7b") == 41_943_040_000
    for spec in LLMJP_SIZES.values():
        assert 2.0e12 < spec.final_iteration * spec.tokens_per_iteration < 2.2e12
    c = llmjp_llama_config("llm-jp/llm-jp-3-1.8b")
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.head_dim) == (2048, 24, 16, 128)
    assert c.tie_word_embeddings is False
    with pytest.raises(CheckpointError, match="150m, 440m, 980m, 1.8b, 3.7b, 7.2b, 13b"):
        llmjp_llama_config("2b")


def word_tokenizer():
    """Word-level tokenizer "w<i>" -> i over the tiny vocab, BOS <s>=1."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        add_bos_token=True, name_or_path="word-tokenizer",
    )


def make_root(root: Path, iterations: list[int], catalogue: dict | None = None) -> Path:
    """A root of iter_NNNNNNN dirs; checkpoint i gets seed i so each has distinct weights."""
    root.mkdir(parents=True, exist_ok=True)
    for it in iterations:
        tiny_llama(seed=it, n_layers=2).save_pretrained(root / f"iter_{it:07d}")
    if catalogue is not None:
        (root / "catalogue.json").write_text(json.dumps(catalogue))
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    r = make_root(tmp_path_factory.mktemp("ckpts") / "root", [0, 10, 100], {"tokens_per_iteration": 1000})
    (r / "iter_0000050").mkdir()  # incomplete conversion: no config.json -> skipped
    (r / "notes").mkdir()
    return r


def _emb(model) -> torch.Tensor:
    return model.W_E.detach()


def test_catalogue_from_root_and_select(root: Path) -> None:
    cat = CheckpointCatalogue.from_root(root)
    assert cat.iterations == [0, 10, 100]
    assert [c.tokens for c in cat] == [0, 10_000, 100_000]
    assert cat.final == Checkpoint(100, 100_000, root / "iter_0000100")
    assert cat.select(iteration=10).path == root / "iter_0000010"
    assert cat.select(tokens=9_500).iteration == 10  # nearest, within 10%
    assert cat.select(tokens=60_000, rtol=None).iteration == 100  # log-nearest: |ln 6/10| < |ln 6|
    with pytest.raises(CheckpointError, match=r"available: 0 \(0 tokens\), 10 \(10K tokens\), 100"):
        cat.select(tokens=60_000)
    with pytest.raises(CheckpointError, match="available iterations: 0 .*10 .*100"):
        cat.select(iteration=50)
    assert [c.iteration for c in cat.log_spaced(2)] == [0, 100]
    assert cat.log_spaced(10) == cat.checkpoints


def test_catalogue_json_per_iteration_and_errors(tmp_path: Path) -> None:
    r = make_root(tmp_path / "r", [3, 7], {"checkpoints": [{"iteration": 3, "tokens": 33}, {"iteration": 7, "tokens": 77}]})
    assert [c.tokens for c in CheckpointCatalogue.from_root(r)] == [33, 77]
    bare = make_root(tmp_path / "bare", [5])
    with pytest.raises(CheckpointError, match="tokens_per_iteration"):
        CheckpointCatalogue.from_root(bare)
    assert CheckpointCatalogue.from_root(bare, tokens_per_iteration=4).final.tokens == 20
    with pytest.raises(CheckpointError, match="does not exist"):
        CheckpointCatalogue.from_root(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no iter_NNNNNNN"):
        CheckpointCatalogue.from_root(tmp_path / "empty")


def test_log_spaced_picks_spread() -> None:
    cat = CheckpointCatalogue([Checkpoint(i, i, None) for i in (1, 2, 5, 10, 20, 50, 100, 1000, 10000)])
    assert [c.iteration for c in cat.log_spaced(5)] == [1, 10, 100, 1000, 10000]
    cat0 = CheckpointCatalogue([Checkpoint(i, i, None) for i in (0, 1, 3, 10, 30, 100)])
    assert [c.iteration for c in cat0.log_spaced(4)] == [0, 1, 10, 100]
    assert [c.iteration for c in cat0.log_spaced(2)] == [0, 100]
    cat = CheckpointCatalogue.for_llmjp("3.7b", iterations=[10_000])
    assert cat.iterations == [10_000, 494_120]
    assert cat.select(tokens=40e9).iteration == 10_000


def test_llmjp_local_root_loads_selected_checkpoint(root: Path) -> None:
    ref = {it: LlamaForCausalLM.from_pretrained(root / f"iter_{it:07d}") for it in (10, 100)}
    by_iter = load_llmjp("1.8b", checkpoint=10, source=root)
    assert torch.equal(_emb(by_iter), ref[10].model.embed_tokens.weight)
    assert by_iter.cfg.checkpoint_value == 10 and by_iter.cfg.model_name == "llm-jp-3-1.8b"
    # catalogue.json's tokens_per_iteration (1000) wins over the size table for token counts
    by_tokens = load_llmjp("1.8b", tokens=101_000, source=root)
    assert torch.equal(_emb(by_tokens), ref[100].model.embed_tokens.weight)
    final = load_llmjp("1.8b", source=root / "iter_0000100")  # a single HF dir
    assert torch.equal(_emb(final), ref[100].model.embed_tokens.weight)


def test_clear_errors(root: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"iteration 50 .*available iterations: 0 .*10 .*100"):
        load_llmjp("1.8b", checkpoint=50, source=root)
    with pytest.raises(CheckpointError, match="valid sizes: 150m, 440m, 980m, 1.8b, 3.7b, 7.2b, 13b"):
        load_llmjp("2b", source=root)
    with pytest.raises(CheckpointError, match="valid sizes"):
        get_family("llm-jp-3-2b")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_llmjp("1.8b", source=tmp_path / "missing")
    with pytest.raises(CheckpointError, match=r"registered: .*llm-jp-3-1\.8b.*toy"):
        get_family("gpt2")
    fam = get_family("llm-jp/llm-jp-3-150m", source=root)
    assert fam.n_layers == 2 and fam.d_model == 64  # shape read from the checkpoints
    assert fam.hook_for_layer(2) == "blocks.1.hook_resid_post"
    with pytest.raises(LayerError, match=r"0\.\.2"):
        fam.hook_for_layer(3)
    # With no source the shape comes from the size table, offline.
    assert get_family("llm-jp-3-3.7b").n_layers == 28
    with pytest.raises(CheckpointError, match="only the final checkpoint"):
        get_family("llm-jp-3-3.7b").load(Checkpoint(10_000, 0, None))
    with pytest.raises(CheckpointError, match="only the final checkpoint"):
        load_llmjp("3.7b", checkpoint=10_000)


def test_toy_family_uses_same_path_with_tokenizer(tmp_path: Path) -> None:
    tok = word_tokenizer()
    r = make_root(tmp_path / "world", [0, 4], {"checkpoints": [{"iteration": 0, "tokens": 0}, {"iteration": 4, "tokens": 400}]})
    for d in r.glob("iter_*"):
        tok.save_pretrained(d)
    with pytest.raises(CheckpointError, match="source"):
        get_family("toy")
    fam = get_family("toy", source=r)
    assert fam.catalogue().iterations == [0, 4]
    model = fam.load(fam.catalogue().select(tokens=400))
    hf = LlamaForCausalLM.from_pretrained(r / "iter_0000004")
    toks = torch.tensor([[1, 5, 9, 20]])
    with torch.no_grad():
        assert (model(toks) - hf(toks).logits).abs().max() < 1e-4
    assert fam.tokenizer().convert_tokens_to_ids("w7") == 7
    assert model.tokenizer is not None


def test_register_family(tmp_path: Path) -> None:
    register_family("mine", lambda source=None, **kw: get_family("toy", source=source), overwrite=True)
    r = make_root(tmp_path / "m", [1], {"tokens_per_iteration": 1})
    assert get_family("mine", source=r).catalogue().iterations == [1]


def test_transformer_lens_registration_offline_with_hf_model() -> None:
    from transformer_lens import HookedTransformer

    register_with_transformer_lens()
    register_with_transformer_lens()  # idempotent
    from transformer_lens import supported_models

    assert supported_models.OFFICIAL_MODEL_NAMES.count("llm-jp/llm-jp-3-1.8b") == 1
    hf = tiny_llama(head_dim=24)
    model = HookedTransformer.from_pretrained(
        "llm-jp/llm-jp-3-1.8b", hf_model=hf, tokenizer=word_tokenizer(), device="cpu", fold_ln=False,
        center_writing_weights=False, center_unembed=False,
    )
    assert model.cfg.d_head == 24 and model.cfg.n_key_value_heads == 2
    toks = _tokens()
    with torch.no_grad():
        assert (model(toks) - hf(toks).logits).abs().max() < 1e-4
        # TL's default processing (fold_ln, centring) keeps log-probs equal.
        processed = HookedTransformer.from_pretrained(
            "llm-jp-3-1.8b", hf_model=hf, tokenizer=word_tokenizer(), device="cpu"
        )
        lp = torch.log_softmax(processed(toks), -1)
        assert (lp - torch.log_softmax(hf(toks).logits, -1)).abs().max() < 1e-4
    # Without hf_model the config comes from the size table (no network needed for the config).
    import transformer_lens.loading_from_pretrained as tl_loading

    cfg = tl_loading.get_pretrained_model_config("llm-jp/llm-jp-3-980m")
    assert (cfg.d_head, cfg.n_layers, cfg.d_vocab) == (192, 20, 99_584)


# ======== bad inputs (moved from test_bad_inputs.py): bad families and tokenizers (models/registry.py)


def test_tokenizer_larger_than_model_vocab_at_family_load(world):
    from sae_bilingual.models.registry import HFLlamaFamily

    tok = copy.deepcopy(world.tokenizer)
    tok.add_tokens([f"extra_token_{i}" for i in range(400)])
    fam = HFLlamaFamily(name="toy", source=world.root, tokenizer_source=tok)
    with pytest.raises(CheckpointError) as e:
        fam.load(None)
    names_problem_and_fix(e.value, "d_vocab", f"{len(tok)} tokens", fix=("tokenizer saved with these checkpoints",))


def test_family_names_cannot_escape_the_output_dir():
    from sae_bilingual.models.registry import get_family, register_family

    for bad in ("../evil", "a/b", "..", ".hidden"):
        with pytest.raises(CheckpointError) as e:
            register_family(bad, lambda **k: None)
        names_problem_and_fix(e.value, bad, fix=("letters, digits",))
    with pytest.raises(CheckpointError):
        get_family("../../etc", source="/tmp")

