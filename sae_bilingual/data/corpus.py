"""Labelled en/ja documents -> fixed-length token windows (BOS first), the SAE's data.

The paper feeds the first 64 tokens of each document (BOS included) to the LM and keeps
the 63 non-BOS positions; training uses balanced budgets (50M en + 50M ja tokens).
Budgets here count non-BOS tokens, i.e. exactly the vectors the store will produce.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from sae_bilingual.defaults import PAPER_LANGUAGES
from sae_bilingual.errors import DataError
from sae_bilingual.hub import offline_by_env, offline_message

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


def _bos_id(tokenizer: PreTrainedTokenizerBase) -> int:
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        raise DataError("the tokenizer has no bos_token_id; windows must start with BOS "
                        "(paper: <s>=1). Pass a tokenizer with a BOS token.")
    return int(bos)


def _pad_id(tokenizer: PreTrainedTokenizerBase, bos: int) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    return int(pad if pad is not None else bos)


def make_windows(dataset: Any, tokenizer: PreTrainedTokenizerBase | None = None, *, context: int = 64,
                 tokens_per_lang: int | Mapping[str, int] | None = None,
                 languages: Sequence[str] = PAPER_LANGUAGES, seed: int = 0) -> Windows:
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
        enc = tokenize_prefixes(tokenizer, list(dataset["text"]), context)
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


def tokenize_prefixes(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], context: int) -> list[list[int]]:
    """Token ids of each text's beginning: at least ``context`` tokens where the text has them.

    Why: a window keeps only the first ``context`` tokens, but tokenisers process the whole
    text before truncating (a 40 MB line took 38 s and 6 GB). So each text is cut to a
    prefix of ``8 x context`` characters, grown 4x at a time while it yields fewer than
    ``context`` + a margin of tokens; the margin keeps the cut's last, possibly split word
    out of the window, so the first ``context`` ids equal those of the whole text.
    """
    need = context + max(8, context // 4)
    out: list[list[int]] = [[] for _ in texts]
    todo, chars = list(range(len(texts))), 8 * context
    while todo:
        enc = tokenizer([texts[i][:chars] for i in todo], add_special_tokens=True, truncation=True,
                        max_length=need)["input_ids"]
        again = []
        for i, ids in zip(todo, enc):
            if len(texts[i]) <= chars or len(ids) >= need:
                out[i] = list(ids)
            else:
                again.append(i)
        todo, chars = again, chars * 4
    return out


def _dataset(rows: dict[str, list]) -> Any:
    return datasets.Dataset.from_dict(rows)


MAX_DOC_CHARS = 1 << 16
"""Characters kept per document by default: far more than a 64-token window needs."""


def doc_chars_for(context: int) -> int:
    """Characters worth keeping per document for windows of ``context`` tokens."""
    return max(MAX_DOC_CHARS, 256 * int(context))


def _read_lines(p: Path, max_chars: int | None) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 file; of a longer line only the first ``max_chars``
    characters are kept, the rest is skipped in bounded chunks without being stored."""
    limit = -1 if max_chars is None else 4 * max_chars + 4  # bytes: UTF-8 needs <= 4 per character
    with open(p, "rb") as f:
        ln = 0
        while chunk := f.readline(limit):
            ln += 1
            cut = not chunk.endswith(b"\n") and len(chunk) == limit
            while cut and (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass  # the part of a huge line no window reaches
            if b"\x00" in chunk:
                raise DataError(f"{p}:{ln} contains NUL bytes: a binary file, not text; the corpus needs "
                                "UTF-8 text files (one document a line) or .jsonl")
            try:  # (a character split by the cut is dropped, not an error)
                text = codecs.getincrementaldecoder("utf-8")("strict").decode(chunk, final=not cut)
            except UnicodeDecodeError as e:
                raise DataError(f"{p}:{ln} is not valid UTF-8 ({e.reason} at byte {e.start} of the line); "
                                "re-encode the file as UTF-8 (e.g. iconv -f <encoding> -t UTF-8)") from None
            text = text.rstrip("\n").rstrip("\r")
            yield ln, text if max_chars is None else text[:max_chars]


def _jsonl_record(p: Path, ln: int, line: str, lang: str | None) -> tuple[str, str]:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{p}:{ln} is not valid JSON ({e.msg}); JSONL needs one object per line") from e
    if not isinstance(rec, dict):
        raise DataError(f"{p}:{ln} is a JSON {type(rec).__name__}, not an object; JSONL needs one object "
                        'per line, e.g. {"text": "...", "lang": "en"}')
    if "text" not in rec:
        raise DataError(f"{p}:{ln} has no `text` field")
    code = rec.get("lang", lang)
    if code is None:
        raise DataError(f"{p}:{ln} has no `lang` field; add it or pass {{lang: path}}")
    return str(rec["text"]), str(code)


def load_text_corpus(paths_by_lang: Mapping[str, str | os.PathLike] | Sequence[str | os.PathLike],
                     max_chars: int = MAX_DOC_CHARS) -> Any:
    """Local corpus -> Dataset(text, lang, doc_id).

    ``{"en": "en.txt", "ja": "ja.txt"}``: one document per line (blank lines skipped), or a
    ``.jsonl`` file per language with a ``text`` field. A list of ``.jsonl`` paths: each line
    needs ``text`` and ``lang`` fields. Each document keeps its first ``max_chars``
    characters (a plain-text line is never read whole; a JSONL line is parsed, then cut).
    Bad files (missing, a directory, binary, not UTF-8, a JSONL line that is not an object)
    raise DataError naming the file and line.
    """
    texts: list[str] = []
    langs: list[str] = []
    items = paths_by_lang.items() if isinstance(paths_by_lang, Mapping) else [(None, p) for p in paths_by_lang]
    for lang, path in items:
        p = Path(path)
        if not p.exists():
            raise DataError(f"corpus file {p} does not exist")
        if p.is_dir():
            raise DataError(f"corpus path {p} is a directory; give a file (one document a line, or .jsonl)")
        jsonl = p.suffix in (".jsonl", ".json")
        if not jsonl and lang is None:
            raise DataError(f"{p} is plain text: pass it as {{'<lang>': '{p}'}} so documents get a language")
        # a JSONL line must be parsed whole; a text line keeps only what a document needs
        for ln, line in _read_lines(p, None if jsonl else max_chars):
            if not line.strip():
                continue
            text, code = _jsonl_record(p, ln, line, lang) if jsonl else (line, str(lang))
            texts.append(text[:max_chars])
            langs.append(code)
    if not texts:
        raise DataError("the corpus files hold no documents")
    return _dataset({"text": texts, "lang": langs, "doc_id": list(range(len(texts)))})


def from_hf_dataset(name_or_path: str, split: str = "train", text_field: str = "text",
                    lang_field: str | None = "lang", lang: str | None = None,
                    max_chars: int = MAX_DOC_CHARS, **load_kwargs: Any) -> Any:
    """An HF dataset (hub name or local dir/file) -> Dataset(text, lang, doc_id).

    Give ``lang_field`` (a column with language codes) or a constant ``lang`` for the whole
    split. Each document keeps its first ``max_chars`` characters.
    """
    p = Path(name_or_path)
    if p.is_dir() and any((p / f).exists() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
        ds = datasets.load_from_disk(str(p))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[split]
    else:
        try:
            ds = datasets.load_dataset(name_or_path, split=split, **load_kwargs)
        except Exception as e:
            env = offline_by_env("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
            if env is None or p.exists():
                raise
            raise DataError(offline_message(f"data.hf_name {name_or_path!r}", "a dataset dir saved with "
                                            "save_to_disk or a data file, or corpus: text",
                                            f"{env} is set and the dataset is not in the cache: "
                                            f"{type(e).__name__}")) from e
    if text_field not in ds.column_names:
        raise DataError(f"{name_or_path} has no column {text_field!r}; columns: {ds.column_names}")
    texts = [str(t)[:max_chars] for t in ds[text_field]]
    if lang is not None:
        langs = [lang] * len(texts)
    elif lang_field and lang_field in ds.column_names:
        langs = [str(x) for x in ds[lang_field]]
    else:
        raise DataError(f"{name_or_path} has no language column {lang_field!r} (columns: "
                        f"{ds.column_names}); pass lang_field=<column> or lang='<code>'")
    doc = list(ds["doc_id"]) if "doc_id" in ds.column_names else list(range(len(texts)))
    return _dataset({"text": texts, "lang": langs, "doc_id": doc})
