"""Windows: BOS first, first `context` tokens, balanced non-BOS budgets, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset

from sae_bilingual.data.corpus import load_text_corpus, make_windows
from sae_bilingual.errors import DataError
from tests.bad_input_fixtures import names_problem_and_fix, docs


class _Tok:
    """Whitespace tokenizer: id = len(word) + 2; BOS 1, pad 0 (never adds BOS itself)."""

    bos_token_id, pad_token_id, eos_token_id = 1, 0, 2

    def __call__(self, texts, add_special_tokens=True, truncation=True, max_length=None):
        return {"input_ids": [[len(w) + 2 for w in t.split()][:max_length] for t in texts]}


def _ds(n=10, length=100):
    ids = [[1] + [3 + (i + j) % 40 for j in range(length)] for i in range(n)]
    return Dataset.from_dict({"input_ids": ids, "lang": ["en", "ja"] * (n // 2), "doc_id": list(range(n))})


def test_first_context_tokens_bos_first_and_budget():
    w = make_windows(_ds(), None, context=64, tokens_per_lang=100)
    assert w.tokens.shape[1] == 64 and (w.tokens[:, 0] == 1).all()
    assert w.tokens_per_lang() == {"en": 100, "ja": 100}
    # 63 non-BOS per doc -> two docs per language, the second truncated to 37
    assert sorted(w.lengths.tolist()) == [38, 38, 64, 64]
    for r in range(len(w)):
        d = int(w.doc_id[r])
        n = int(w.lengths[r])
        assert w.tokens[r, :n].tolist() == _ds()["input_ids"][d][:n]
        assert (w.tokens[r, n:] == 0).all()


def test_deterministic_and_seed_dependent():
    a = make_windows(_ds(20), None, tokens_per_lang=63 * 3, seed=0)
    b = make_windows(_ds(20), None, tokens_per_lang=63 * 3, seed=0)
    c = make_windows(_ds(20), None, tokens_per_lang=63 * 3, seed=1)
    assert torch.equal(a.doc_id, b.doc_id) and not torch.equal(a.doc_id, c.doc_id)


def test_text_is_tokenized_with_bos_prepended():
    ds = Dataset.from_dict({"text": ["a bb ccc", "dddd e"], "lang": ["en", "ja"]})
    w = make_windows(ds, _Tok(), context=4)
    assert w.tokens[0].tolist() == [1, 3, 4, 5] and w.tokens[1].tolist() == [1, 6, 3, 0]


def test_errors():
    with pytest.raises(DataError, match="empty"):
        make_windows(Dataset.from_dict({"input_ids": [], "lang": []}), None)
    with pytest.raises(DataError, match=r"only one.*found \['en'\]"):
        make_windows(Dataset.from_dict({"input_ids": [[1, 5]], "lang": ["en"]}), None)
    with pytest.raises(DataError, match="fewer than 2 tokens"):
        make_windows(Dataset.from_dict({"input_ids": [[1], [1]], "lang": ["en", "ja"]}), None)
    with pytest.raises(DataError, match="holds 315 non-BOS tokens"):
        make_windows(_ds(10), None, tokens_per_lang=1000)


def test_loaders(tmp_path):
    (tmp_path / "en.txt").write_text("hello world\n\nsecond doc\n", encoding="utf-8")
    (tmp_path / "ja.jsonl").write_text(json.dumps({"text": "こんにちは"}, ensure_ascii=False) + "\n", encoding="utf-8")
    ds = load_text_corpus({"en": tmp_path / "en.txt", "ja": tmp_path / "ja.jsonl"})
    assert ds["text"] == ["hello world", "second doc", "こんにちは"] and ds["lang"] == ["en", "en", "ja"]
    assert ds["doc_id"] == [0, 1, 2]


# ----------------------------------------------------------------------------- bad files (issue 21)


def test_invalid_utf8_names_file_and_line(tmp_path):
    p = tmp_path / "ja.txt"
    p.write_bytes("一行目\n".encode() + b"\xff\xfe\n")
    with pytest.raises(DataError) as e:
        load_text_corpus({"ja": p})
    assert f"{p}:2" in str(e.value) and "UTF-8" in str(e.value)


def test_binary_file_is_refused(tmp_path):
    p = tmp_path / "en.txt"
    p.write_bytes(b"hello\n\x00\x01\x02\x00binary\n")
    with pytest.raises(DataError) as e:
        load_text_corpus({"en": p})
    assert f"{p}:2" in str(e.value) and "binary" in str(e.value)


@pytest.mark.parametrize("line", ["[1, 2]", '"just a string"', "3"])
def test_jsonl_line_that_is_not_an_object(tmp_path, line):
    p = tmp_path / "c.jsonl"
    p.write_text('{"text": "a", "lang": "en"}\n' + line + "\n")
    with pytest.raises(DataError) as e:
        load_text_corpus([p])
    assert f"{p}:2" in str(e.value) and "object" in str(e.value)


def test_directory_given_as_a_file(tmp_path):
    with pytest.raises(DataError) as e:
        load_text_corpus({"en": tmp_path})
    assert str(tmp_path) in str(e.value) and "directory" in str(e.value)


def test_huge_line_is_read_in_bounded_chunks(tmp_path):
    """A 4 MB one-line document keeps only its first `max_chars` characters; the next lines
    are read as usual (before: the whole line was kept and tokenised)."""
    p = tmp_path / "en.txt"
    with open(p, "w", encoding="utf-8") as f:
        f.write("word " * 800_000 + "\n" + "second doc\n" + "third doc\n")
    ds = load_text_corpus({"en": p}, max_chars=1000)
    assert [len(t) for t in ds["text"]] == [1000, 10, 9]
    assert ds["text"][1:] == ["second doc", "third doc"]


class _RecordingTok(_Tok):
    """_Tok that remembers the longest text it was asked to tokenise."""

    longest = 0

    def __call__(self, texts, **kw):
        type(self).longest = max([type(self).longest, *map(len, texts)])
        return super().__call__(texts, **kw)


def test_only_what_a_window_needs_is_tokenised():
    """Windows of a corpus with a 400k-character document equal the full tokenisation's,
    but the tokenizer never sees more than a bounded prefix of it."""
    long_doc = " ".join(f"w{'x' * (i % 7)}" for i in range(100_000))
    texts = [long_doc, "a bb ccc dddd", "e ff ggg", long_doc[:500]]
    ds = Dataset.from_dict({"text": texts, "lang": ["en", "ja", "en", "ja"]})
    tok = _RecordingTok()
    w = make_windows(ds, tok, context=16)
    assert tok.longest <= 16 * 64, tok.longest
    full = _Tok()(texts, max_length=15)["input_ids"]  # independent: whole texts, then cut
    for r in range(len(w)):
        d, n = int(w.doc_id[r]), int(w.lengths[r])
        assert w.tokens[r, :n].tolist() == [1] + full[d][: n - 1]


# ======== bad inputs (moved from test_bad_inputs.py): bad corpora (data/corpus.py: make_windows)


def test_corpus_with_one_language_only():
    from sae_bilingual.data.corpus import make_windows

    with pytest.raises(DataError) as e:
        make_windows(docs(["en", "en"], [[1, 5, 6], [1, 7]]), None, context=8)
    names_problem_and_fix(e.value, "only one", "['en']", fix=("add documents",))


def test_empty_corpus():
    from sae_bilingual.data.corpus import make_windows

    with pytest.raises(DataError) as e:
        make_windows(docs([], []), None, context=8)
    names_problem_and_fix(e.value, "empty", fix=("give a dataset",))


def test_all_documents_shorter_than_two_tokens():
    from sae_bilingual.data.corpus import make_windows

    with pytest.raises(DataError) as e:
        make_windows(docs(["en", "ja", "en"], [[1], [1], []]), None, context=8)
    names_problem_and_fix(e.value, "fewer than 2 tokens", fix=("check the text column",))


def test_token_budget_larger_than_corpus():
    from sae_bilingual.data.corpus import make_windows

    with pytest.raises(DataError) as e:
        make_windows(docs(["en", "ja"], [[1, 5, 6], [1, 7, 8]]), None, context=8, tokens_per_lang=100)
    names_problem_and_fix(e.value, "budget 100", "larger than the corpus", fix=("lower tokens_per_lang",))

