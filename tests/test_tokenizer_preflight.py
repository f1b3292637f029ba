"""Preflight: a tokenizer converted from a SentencePiece .model is checked on the corpus, and a
tokenizer much smaller than the model's vocabulary is refused unless the recipe says why."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from transformers import AutoModelForCausalLM, LlamaTokenizer

from sae_bilingual.config import load_recipe
from sae_bilingual.errors import CheckpointError, ConfigError, DataError
from sae_bilingual.study.context import StudyContext
from sae_bilingual.study.plan import plan_study
from sae_bilingual.study.preflight import MIN_TOKENIZER_SHARE, check_tokenizer_size, preflight
from tests.test_families import tiny_config
from tests.test_tokenizer import _lines, _train_spm

V = 1000


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A tiny Llama of vocabulary 1,000, SentencePiece models of two types, a two-language corpus."""
    base = tmp_path_factory.mktemp("tokpre")
    cfg = tiny_config("llama")
    cfg.vocab_size = V
    AutoModelForCausalLM.from_config(cfg).save_pretrained(base / "ckpts" / "iter_0000010")
    for kind in ("bpe", "word"):
        _train_spm(base / f"{kind}.model", kind, vocab=V)
    (base / "en.txt").write_text("\n".join(_lines("dev.en", 500)) + "\n", encoding="utf-8")
    (base / "ja.txt").write_text("\n".join(s.replace(" ", "") for s in _lines("dev.ja", 500)) + "\n",
                                 encoding="utf-8")
    return base


def _preflight(root: Path, tmp: Path, tokenizer: Path, **model: object) -> None:
    data = {"name": "tok", "output_dir": str(tmp / "out"), "seed": 0,
            "models": [{"name": "tiny", "family": "hf", "source": str(root / "ckpts"), "tokens_per_step": 4096,
                        "tokenizer": str(tokenizer), "checkpoints": "all", "layers": [1], **model}],
            "data": {"corpus": "text", "paths": {"en": str(root / "en.txt"), "ja": str(root / "ja.txt")},
                     "context": 16, "train_tokens_per_lang": 1024, "eval_tokens_per_lang": 256},
            "sae": {"k": 4, "expansion": 2, "lr": 0.001, "batch_size": 128},
            "intervention": {"enabled": False}, "expected_gpu_hours": 0}
    (tmp / "r.yaml").write_text(yaml.safe_dump(data))
    rec = load_recipe(tmp / "r.yaml")
    ctx = StudyContext(rec, progress=False)
    preflight(rec, plan_study(rec, ctx), ctx)


def test_bpe_model_passes_and_word_model_is_refused_on_the_corpus(root, tmp_path) -> None:
    _preflight(root, tmp_path, root / "bpe.model")  # BPE: exact on every sampled text
    with pytest.raises(CheckpointError) as e:
        _preflight(root, tmp_path, root / "word.model")  # runs of unknown words: SentencePiece fuses them
    msg = str(e.value)
    assert "models[0].tokenizer tokenises" in msg and "corpus texts differently from SentencePiece" in msg
    assert "model type word" in msg


def test_three_token_tokenizer_is_refused_unless_the_recipe_says_why(root, tmp_path) -> None:
    bad = LlamaTokenizer(vocab_file=str(root / "bpe.model"))  # transformers 5: silently empty
    assert len(bad) == 3
    bad.save_pretrained(tmp_path / "three")
    with pytest.raises(ConfigError) as e:
        _preflight(root, tmp_path, tmp_path / "three")
    msg = str(e.value)
    assert "has 3 tokens but the model's vocabulary has 1,000" in msg
    assert "models[0].tokenizer_vocab_reason" in msg
    # with a reason the size rule lets it through, to the next check (this one tokenises nothing at all)
    with pytest.raises(DataError, match="fewer than 2 tokens"):
        _preflight(root, tmp_path, tmp_path / "three", tokenizer_vocab_reason="test: a tokenizer of 3")


def test_size_rule_threshold() -> None:
    class Tok:
        def __init__(self, n: int):
            self.n = n

        def __len__(self) -> int:
            return self.n

    check_tokenizer_size(Tok(99_574), 99_584, None, "models[0]")  # LLM-jp-3: padded embedding
    check_tokenizer_size(Tok(int(MIN_TOKENIZER_SHARE * 8000)), 8000, None, "models[0]")
    with pytest.raises(ConfigError, match="7,199 tokens"):
        check_tokenizer_size(Tok(7199), 8000, None, "models[0]")
