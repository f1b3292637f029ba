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


# ------------------------------------------------------------- every SentencePiece model type
def _train_spm(path, model_type: str, vocab: int = 1000) -> None:
    import sentencepiece as spm

    en = _lines("train.en", 2000)
    ja = [s.replace(" ", "") for s in _lines("train.ja", 2000)]
    with open(path, "wb") as f:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(en + ja), model_writer=f, vocab_size=vocab,
                                       model_type=model_type, character_coverage=0.99, minloglevel=2,
                                       hard_vocab_limit=False)


def _test_texts() -> list[str]:
    texts = _lines("test.en", 300) + [s.replace(" ", "") for s in _lines("test.ja", 300)]
    return texts + [" leading space", "two  spaces\nnewline", "絵文字😀😀とタブ\tです", "ＡＢＣ全角 ｶﾀｶﾅ ①", ""]


@pytest.mark.parametrize("model_type", ["bpe", "unigram", "char"])
def test_every_sentencepiece_model_type_encodes_like_sentencepiece(tmp_path, model_type: str) -> None:
    """Issue 28: a BPE .model was read as Unigram (346 of 606 of these texts differed)."""
    import sentencepiece as spm

    from sae_bilingual.models.tokenizer import sentencepiece_source, verify_sentencepiece

    path = tmp_path / f"{model_type}.model"
    _train_spm(path, model_type)
    tok = load_tokenizer(path)
    sp = spm.SentencePieceProcessor(model_file=str(path))
    assert len(tok) == sp.get_piece_size() and tok.sentencepiece_model_type == model_type
    texts = _test_texts()
    got = tok(texts)["input_ids"]
    assert all(g[0] == sp.bos_id() == 1 for g in got)
    assert [g[1:] for g in got] == [sp.encode(t) for t in texts]
    known = [i for i, t in enumerate(texts) if sp.unk_id() not in sp.encode(t)]  # (spm decodes <unk> as " ⁇ ")
    assert len(known) > len(texts) // 2
    assert [tok.decode(got[i], skip_special_tokens=True) for i in known] == [sp.decode(sp.encode(texts[i]))
                                                                              for i in known]
    assert sentencepiece_source(tok) == path
    assert verify_sentencepiece(tok, texts).n_differ == 0


def test_a_tokenizer_that_lies_is_refused(tmp_path) -> None:
    from sae_bilingual.models.tokenizer import compare_with_sentencepiece, verify_sentencepiece

    _train_spm(tmp_path / "bpe.model", "bpe")
    _train_spm(tmp_path / "unigram.model", "unigram")
    bpe = load_tokenizer(tmp_path / "bpe.model")
    texts = _test_texts()
    c = compare_with_sentencepiece(bpe, tmp_path / "unigram.model", texts)
    assert c.n_texts == len(texts) and c.n_differ > len(texts) // 4, c
    with pytest.raises(CheckpointError) as e:
        verify_sentencepiece(bpe, texts, where="models[0].tokenizer", model_file=tmp_path / "unigram.model")
    msg = str(e.value)
    assert f"{c.n_differ} of {len(texts)}" in msg and "models[0].tokenizer" in msg and "HF tokenizer directory" in msg


def test_word_model_differs_only_where_sentencepiece_fuses_unknown_words(tmp_path) -> None:
    import sentencepiece as spm

    from sae_bilingual.models.tokenizer import verify_sentencepiece

    path = tmp_path / "word.model"
    _train_spm(path, "word")
    tok, sp = load_tokenizer(path), spm.SentencePieceProcessor(model_file=str(path))
    texts = _test_texts()
    ours = [g[1:] for g in tok(texts)["input_ids"]]

    def fuse_unk(ids: list[int]) -> list[int]:
        return [x for i, x in enumerate(ids) if not (x == sp.unk_id() and i and ids[i - 1] == sp.unk_id())]

    assert [fuse_unk(g) for g in ours] == [sp.encode(t) for t in texts]
    assert sum(g != sp.encode(t) for g, t in zip(ours, texts)) > 0  # the runs exist in these texts
    with pytest.raises(CheckpointError, match="model type word"):
        verify_sentencepiece(tok, texts)


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_model_to_hf_folder_round_trips(tmp_path, model_type: str) -> None:
    """README 'Tokenizers': load_tokenizer(.model).save_pretrained(dir) -> an HF folder that any
    AutoTokenizer user loads with SentencePiece's NFKC normaliser intact."""
    import sentencepiece as spm
    from transformers import AutoTokenizer, LlamaTokenizer

    path = tmp_path / f"{model_type}.model"
    _train_spm(path, model_type)
    load_tokenizer(path).save_pretrained(tmp_path / "hf")
    back = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    sp = spm.SentencePieceProcessor(model_file=str(path))
    texts = _test_texts()
    assert sp.encode("ＡＢＣ") == sp.encode("ABC")  # NFKC is part of this model
    assert [g[1:] for g in back(texts)["input_ids"]] == [sp.encode(t) for t in texts]
    # what the README warns against, under transformers 5
    assert len(LlamaTokenizer(vocab_file=str(path))) == 3
