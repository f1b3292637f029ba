"""Token id -> language by script: the ``token_script`` table the language rule 'token' needs.

Why its own module: it reads a tokenizer's vocabulary pieces once per study, apart from the
per-feature tables of :mod:`sae_bilingual.analysis.features`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from sae_bilingual.defaults import PAPER_LANGUAGES
from sae_bilingual.errors import ConfigError

_ASCII_LETTER = re.compile(r"[A-Za-z]")


def script_of_tokens(pieces: Sequence[str], languages: Sequence[str] = PAPER_LANGUAGES,
                     ascii_lang: str = "en", other_lang: str = "ja") -> np.ndarray:
    """Token id -> language index by script (released evaluation script's rule).

    A piece with an ASCII letter (after dropping the SentencePiece "▁" and spaces) ->
    ``ascii_lang``; only digits -> -1 (take the previous token's); anything else ->
    ``other_lang``. ``pieces[i]`` is the string of token id i.
    """
    langs = list(languages)
    for lg in (ascii_lang, other_lang):
        if lg not in langs:
            raise ConfigError(f"language {lg!r} is not among {tuple(langs)}; pass languages that include it.")
    out = np.empty(len(pieces), dtype=np.int64)
    for i, p in enumerate(pieces):  # once per vocabulary, not a hot path
        s = (p or "").replace("▁", "").strip()
        if s and s.isascii() and _ASCII_LETTER.search(s):
            out[i] = langs.index(ascii_lang)
        elif s and s.isdigit():
            out[i] = -1
        else:
            out[i] = langs.index(other_lang)
    return out
