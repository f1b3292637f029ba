"""sae_bilingual.models.tokenizer: the LLM-jp SentencePiece model through load_tokenizer."""

from __future__ import annotations

import pytest

from sae_bilingual.errors import CheckpointError
from sae_bilingual.models import load_tokenizer
from tests.helpers import shared_path

MODEL = "llm-jp-tokenizer-100k.ver3.0b1.model"


def _lines(name: str, n: int = 50) -> list[str]:
    return shared_path("data", "small_parallel_enja", name).read_text(encoding="utf-8").splitlines()[:n]


@pytest.fixture(scope="module")
def sp_model():
    return shared_path("data", "llm-jp-tokenizer", MODEL)


@pytest.mark.parametrize("from_dir", [False, True], ids=["model-file", "dir"])
def test_llmjp_sentencepiece_round_trip(sp_model, from_dir: bool) -> None:
    import sentencepiece as spm

    tok = load_tokenizer(sp_model.parent if from_dir else sp_model)
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))  # independent reference
    en = _lines("test.en")[0]
    ja = _lines("test.ja")[0].replace(" ", "")
    assert en == "they finally acknowledged it as true ." and ja == "彼らはついにそれが真実だと認めた。"
    for text in (en, ja):
        ids = tok(text)["input_ids"]
        assert ids[0] == 1 == tok.bos_token_id
        assert ids[1:] == sp.encode(text)
        assert 1 not in ids[1:]
        assert tok.decode(ids, skip_special_tokens=True) == text
    assert (tok.eos_token_id, tok.unk_token_id, tok.pad_token_id) == (2, 0, 4)


def test_llmjp_sentencepiece_matches_spm_on_many_lines(sp_model) -> None:
    import sentencepiece as spm

    tok = load_tokenizer(sp_model)
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    texts = _lines("test.en", 200) + [s.replace(" ", "") for s in _lines("test.ja", 200)]
    texts += [" leading space", "two  spaces\nnewline", "絵文字😀とタブ\tです", "ＡＢＣ全角"]
    got = tok(texts)["input_ids"]
    assert [g[1:] for g in got] == [sp.encode(t) for t in texts]
    assert [tok.decode(g, skip_special_tokens=True) for g in got] == [sp.decode(sp.encode(t)) for t in texts]


def test_hf_tokenizer_dir_round_trip(sp_model, tmp_path) -> None:
    tok = load_tokenizer(sp_model)
    tok.save_pretrained(tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")  # HF files (tokenizer.json) via AutoTokenizer
    text = "彼は水泳が得意ではなかった。"
    assert again(text)["input_ids"] == tok(text)["input_ids"]
    assert again(text)["input_ids"][0] == 1


def test_bad_tokenizer_sources(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_tokenizer(tmp_path / "missing" / "x")
    f = tmp_path / "vocab.txt"
    f.write_text("x")
    with pytest.raises(CheckpointError, match="SentencePiece .model"):
        load_tokenizer(f)


def test_prefix_tokenisation_equals_the_whole_text_on_real_documents(sp_model) -> None:
    """corpus.tokenize_prefixes (issue 21: bounded tokenisation of huge lines) gives the first
    `context` ids of the whole document with the LLM-jp tokenizer, checked against
    SentencePiece on the whole text, for long English and space-free Japanese documents."""
    import sentencepiece as spm

    from sae_bilingual.data.corpus import tokenize_prefixes

    tok = load_tokenizer(sp_model)
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    en, ja = _lines("test.en", 500), [l.replace(" ", "") for l in _lines("test.ja", 500)]
    docs = [" ".join(en[i:i + 60]) for i in range(0, 480, 60)] + ["".join(ja[i:i + 60]) for i in range(0, 480, 60)]
    assert min(map(len, docs)) > 8 * 64  # every document is cut at least once
    for context in (16, 64):
        got = tokenize_prefixes(tok, docs, context)
        for doc, ids in zip(docs, got):
            assert ids[:context] == ([1] + sp.encode(doc))[:context]
