"""Windows: BOS first, first `context` tokens, balanced non-BOS budgets, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset

from sae_bilingual.corpus import load_text_corpus, make_windows
from sae_bilingual.errors import DataError


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
