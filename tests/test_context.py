"""StudyContext's token windows: one entry per (split, tokenizer), never one per split only.

Before (issue 18): the windows were cached by split alone, so in a study of two model
families whose tokenizers differ the second family silently got the first one's token ids.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from sae_bilingual.config import Recipe, from_dict
from sae_bilingual.data.corpus import make_windows
from sae_bilingual.study.context import StudyContext, tokenizer_key

EN = ["the cat sat", "a dog ran far", "the dog sat", "a cat ran", "the cat ran far", "a dog sat"]
JA = ["ねこ が すわった", "いぬ が はしった", "ねこ が はしった",
      "いぬ が すわった", "ねこ と いぬ", "いぬ と ねこ"]
WORDS = sorted({w for line in EN + JA for w in line.split()})


def _tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer that puts BOS first; the word order decides the ids."""
    special = ["<pad>", "<s>", "</s>", "<unk>"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(special + words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")


def _context(tmp_path: Path, tokenizers: list[PreTrainedTokenizerFast]) -> StudyContext:
    files = {}
    for lang, lines in (("en", EN), ("ja", JA)):
        files[lang] = tmp_path / f"{lang}.txt"
        files[lang].write_text("\n".join(lines) + "\n", encoding="utf-8")
    recipe = from_dict(Recipe, {
        "output_dir": str(tmp_path / "out"),
        "models": [{"family": "hf", "source": str(tmp_path / f"m{i}")} for i in range(len(tokenizers))],
        "data": {"corpus": "text", "paths": {k: str(v) for k, v in files.items()},
                 "eval_paths": {k: str(v) for k, v in files.items()}, "context": 8,
                 "train_tokens_per_lang": 12, "eval_tokens_per_lang": 12},
    }).validate()
    families = {i: SimpleNamespace(tokenizer=lambda t=t: t) for i, t in enumerate(tokenizers)}
    return StudyContext(recipe, progress=False, families=families)


def _decoded(windows, tok) -> list[str]:
    return [tok.decode(row[1:n].tolist()) for row, n in zip(windows.tokens, windows.lengths)]


def test_two_tokenizers_get_their_own_windows(tmp_path):
    first, second = _tokenizer(WORDS), _tokenizer(WORDS[::-1])
    ctx = _context(tmp_path, [first, second])
    assert tokenizer_key(first) != tokenizer_key(second)
    docs = ctx.documents()
    for split in ("train", "eval"):
        w0, w1 = ctx.windows(split, 0), ctx.windows(split, 1)
        seed = ctx.recipe.seed + (0 if split == "train" else 1)
        for w, tok in ((w0, first), (w1, second)):
            ref = make_windows(docs[split], tok, context=8, tokens_per_lang=12, languages=("en", "ja"), seed=seed)
            assert torch.equal(w.tokens, ref.tokens) and torch.equal(w.lengths, ref.lengths)
        # the same documents, each in its own model's ids: equal text, different ids
        assert torch.equal(w0.doc_id, w1.doc_id)
        assert _decoded(w0, first) == _decoded(w1, second)
        assert all(text in EN + JA or any(line.startswith(text) for line in EN + JA) for text in _decoded(w1, second))
        assert not torch.equal(w0.tokens, w1.tokens)


def test_one_tokenizer_loaded_twice_shares_its_windows(tmp_path):
    ctx = _context(tmp_path, [_tokenizer(WORDS), _tokenizer(WORDS)])
    assert ctx.windows("train", 0) is ctx.windows("train", 1)
    assert ctx.windows("eval", 0) is ctx.windows("eval", 1)
    assert ctx.windows("train", 0) is not ctx.windows("eval", 0)
