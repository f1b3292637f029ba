"""Labelled en/ja documents -> fixed-length token windows (BOS first), the SAE's data.

The paper feeds the first 64 tokens of each document (BOS included) to the LM and keeps
the 63 non-BOS positions; training uses balanced budgets (50M en + 50M ja tokens).
Budgets here count non-BOS tokens, i.e. exactly the vectors the store will produce.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sae_bilingual.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class Windows:
    """A batch of token windows, one per document.

    tokens: LongTensor[N, T], BOS at column 0, right-padded with ``pad_id``.
    lengths: LongTensor[N], number of real tokens (BOS included) per row.
    lang: LongTensor[N], index into ``languages``.
    doc_id: LongTensor[N], the document id of each row.
    languages: language codes, e.g. ("en", "ja").
    pad_id: the padding id used right of ``lengths``.
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    lang: torch.Tensor
    doc_id: torch.Tensor
    languages: tuple[str, ...]
    pad_id: int = 0

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_vectors(self) -> int:
        """Non-BOS positions = activation vectors these windows produce."""
        return int((self.lengths - 1).clamp_min(0).sum())

    def subset(self, rows: torch.Tensor | slice) -> Windows:
        """Rows ``rows`` as new Windows."""
        return Windows(self.tokens[rows], self.lengths[rows], self.lang[rows], self.doc_id[rows],
                       self.languages, self.pad_id)

    def tokens_per_lang(self) -> dict[str, int]:
        """Non-BOS token count per language."""
        n = (self.lengths - 1).clamp_min(0)
        return {code: int(n[self.lang == i].sum()) for i, code in enumerate(self.languages)}


def _bos_id(tokenizer: Any) -> int:
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        raise DataError("the tokenizer has no bos_token_id; windows must start with BOS "
                        "(paper: <s>=1). Pass a tokenizer with a BOS token.")
    return int(bos)


def _pad_id(tokenizer: Any, bos: int) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    return int(pad if pad is not None else bos)


def make_windows(dataset: Any, tokenizer: Any = None, *, context: int = 64,
                 tokens_per_lang: int | Mapping[str, int] | None = None,
                 languages: Sequence[str] = ("en", "ja"), seed: int = 0) -> Windows:
    """First ``context`` tokens (BOS first) of each document, with balanced language budgets.

    ``dataset``: rows with ``lang`` and ``doc_id`` (optional) and either ``input_ids``
    (BOS first) or ``text``. ``tokens_per_lang`` counts non-BOS tokens per language (int =
    the same for each, mapping = per language, None = all documents). Documents are drawn in
    a seeded random order, whole documents until a language's budget is filled; the last one
    is truncated so the budget is met exactly.
    """
    languages = tuple(languages)
    if context < 2:
        raise DataError(f"context={context} leaves no token after BOS; use context >= 2 (paper: 64)")
    n_rows = len(dataset) if hasattr(dataset, "__len__") else None
    if not n_rows:
        raise DataError("the corpus is empty: give a dataset with `text` (or `input_ids`) and "
                        "`lang` columns, e.g. from load_text_corpus or from_hf_dataset")
    cols = set(dataset.column_names) if hasattr(dataset, "column_names") else set(dataset[0].keys())
    if "lang" not in cols:
        raise DataError(f"the corpus has no `lang` column (columns: {sorted(cols)}); label each "
                        "document with its language code")
    langs_raw = list(dataset["lang"])
    found = sorted(set(langs_raw))
    unknown = [x for x in found if x not in languages]
    if unknown:
        log.warning("dropping documents in languages %s (not in %s)", unknown, languages)
    present = [c for c in languages if c in set(found)]
    if len(present) < 2 and len(languages) >= 2:
        raise DataError(
            f"the corpus has only one of the study's languages: found {found}, need {list(languages)}. "
            "The study compares languages; add documents in the missing language(s) or pass "
            f"languages=({', '.join(repr(c) for c in found)},) only if that is really intended")
    bos = None
    if "input_ids" in cols:
        ids_list = [list(map(int, ids[:context])) for ids in dataset["input_ids"]]
        if tokenizer is not None:
            bos = _bos_id(tokenizer)
    else:
        if "text" not in cols:
            raise DataError(f"the corpus has neither `input_ids` nor `text` (columns: {sorted(cols)})")
        if tokenizer is None:
            raise DataError("tokenizing `text` needs a tokenizer; pass tokenizer=...")
        bos = _bos_id(tokenizer)
        texts = list(dataset["text"])
        enc = tokenizer(texts, add_special_tokens=True, truncation=True, max_length=context)["input_ids"]
        ids_list = [([bos] + list(e))[:context] if (not e or e[0] != bos) else list(e)[:context]
                    for e in enc]
    if bos is None:
        firsts = [ids[0] for ids in ids_list if ids]
        bos = max(set(firsts), key=firsts.count) if firsts else 1
    pad = _pad_id(tokenizer, bos) if tokenizer is not None else 0
    doc_ids = list(dataset["doc_id"]) if "doc_id" in cols else list(range(n_rows))

    lengths = np.array([len(x) for x in ids_list], dtype=np.int64)
    lang_idx = np.array([languages.index(x) if x in languages else -1 for x in langs_raw], dtype=np.int64)
    usable = (lengths >= 2) & (lang_idx >= 0)
    if not usable.any():
        raise DataError(f"every document has fewer than 2 tokens (BOS + 1) in {languages}: nothing "
                        "to train on. Check the text column and the tokenizer")
    bad_bos = [i for i in np.flatnonzero(usable)[:1000] if ids_list[i][0] != bos]
    if bad_bos:
        raise DataError(f"document {doc_ids[bad_bos[0]]} does not start with BOS ({bos}); "
                        "`input_ids` must be BOS-first (the paper drops the BOS position)")

    if isinstance(tokens_per_lang, Mapping):
        budgets = {c: int(tokens_per_lang.get(c, 0)) for c in languages}
    elif tokens_per_lang is None:
        budgets = None
    else:
        budgets = {c: int(tokens_per_lang) for c in languages}

    rng = np.random.default_rng(seed)
    order = rng.permutation(n_rows)
    order = order[usable[order]]
    take_rows: list[int] = []
    take_len: list[int] = []
    for li, code in enumerate(languages):
        rows = order[lang_idx[order] == li]
        avail = int((lengths[rows] - 1).sum())
        if budgets is None:
            take_rows.extend(rows.tolist())
            take_len.extend(lengths[rows].tolist())
            continue
        b = budgets[code]
        if b > avail:
            raise DataError(
                f"token budget {b} for {code!r} is larger than the corpus: it holds {avail} "
                f"non-BOS tokens in the first {context} tokens of {len(rows)} {code} documents. "
                "Lower tokens_per_lang or add documents")
        if b <= 0:
            continue
        cum = np.cumsum(lengths[rows] - 1)
        n_docs = int(np.searchsorted(cum, b) + 1)
        sel = rows[:n_docs]
        lens = lengths[sel].copy()
        over = int(cum[n_docs - 1] - b)
        lens[-1] -= over  # truncate the last document so the budget is exact
        take_rows.extend(sel.tolist())
        take_len.extend(lens.tolist())

    N = len(take_rows)
    tokens = torch.full((N, context), pad, dtype=torch.long)
    for r, (i, n) in enumerate(zip(take_rows, take_len)):
        tokens[r, :n] = torch.as_tensor(ids_list[i][:n], dtype=torch.long)
    w = Windows(tokens=tokens, lengths=torch.as_tensor(take_len, dtype=torch.long),
                lang=torch.as_tensor(lang_idx[take_rows], dtype=torch.long),
                doc_id=torch.as_tensor([int(doc_ids[i]) for i in take_rows], dtype=torch.long),
                languages=languages, pad_id=pad)
    log.info("windows: %d documents, tokens per language %s", N, w.tokens_per_lang())
    return w


def _dataset(rows: dict[str, list]) -> Any:
    from datasets import Dataset

    return Dataset.from_dict(rows)


def load_text_corpus(paths_by_lang: Mapping[str, str | os.PathLike] | Sequence[str | os.PathLike]) -> Any:
    """Local corpus -> Dataset(text, lang, doc_id).

    ``{"en": "en.txt", "ja": "ja.txt"}``: one document per line (blank lines skipped), or a
    ``.jsonl`` file per language with a ``text`` field. A list of ``.jsonl`` paths: each line
    needs ``text`` and ``lang`` fields.
    """
    texts: list[str] = []
    langs: list[str] = []
    items = paths_by_lang.items() if isinstance(paths_by_lang, Mapping) else [(None, p) for p in paths_by_lang]
    for lang, path in items:
        p = Path(path)
        if not p.exists():
            raise DataError(f"corpus file {p} does not exist")
        with open(p, encoding="utf-8") as f:
            for ln, line in enumerate(f, 1):
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                if p.suffix in (".jsonl", ".json"):
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(f"{p}:{ln} is not valid JSON ({e.msg}); JSONL needs one object per line") from e
                    if "text" not in rec:
                        raise DataError(f"{p}:{ln} has no `text` field")
                    code = rec.get("lang", lang)
                    if code is None:
                        raise DataError(f"{p}:{ln} has no `lang` field; add it or pass {{lang: path}}")
                    texts.append(str(rec["text"]))
                    langs.append(str(code))
                else:
                    if lang is None:
                        raise DataError(f"{p} is plain text: pass it as {{'<lang>': '{p}'}} so documents get a language")
                    texts.append(line)
                    langs.append(str(lang))
    if not texts:
        raise DataError("the corpus files hold no documents")
    return _dataset({"text": texts, "lang": langs, "doc_id": list(range(len(texts)))})


def from_hf_dataset(name_or_path: str, split: str = "train", text_field: str = "text",
                    lang_field: str | None = "lang", lang: str | None = None, **load_kwargs: Any) -> Any:
    """An HF dataset (hub name or local dir/file) -> Dataset(text, lang, doc_id).

    Give ``lang_field`` (a column with language codes) or a constant ``lang`` for the whole split.
    """
    import datasets

    p = Path(name_or_path)
    if p.is_dir() and any((p / f).exists() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
        ds = datasets.load_from_disk(str(p))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[split]
    else:
        ds = datasets.load_dataset(name_or_path, split=split, **load_kwargs)
    if text_field not in ds.column_names:
        raise DataError(f"{name_or_path} has no column {text_field!r}; columns: {ds.column_names}")
    texts = list(ds[text_field])
    if lang is not None:
        langs = [lang] * len(texts)
    elif lang_field and lang_field in ds.column_names:
        langs = [str(x) for x in ds[lang_field]]
    else:
        raise DataError(f"{name_or_path} has no language column {lang_field!r} (columns: "
                        f"{ds.column_names}); pass lang_field=<column> or lang='<code>'")
    doc = list(ds["doc_id"]) if "doc_id" in ds.column_names else list(range(len(texts)))
    return _dataset({"text": texts, "lang": langs, "doc_id": doc})
