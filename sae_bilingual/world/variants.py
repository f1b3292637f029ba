"""Control worlds: code-switching (bilingual concepts certainly exist) and disjoint
concept sets (bilingual concepts cannot exist).

Why: the toy world is the one place where we know which tokens mean the same thing, so it
can tell whether the analysis finds bilingual features where they certainly exist
(positive control) and none where they cannot (negative control).

- Code-switching: each content word of a monolingual sentence is realised, with
  probability ``rate``, by its surface form in another language ("the 犬 ate an apple",
  "エマ は apple を 食べた"). The two forms of a concept then occur in the same contexts and
  the model must treat them alike. The ground truth keeps each token's own language.
- Disjoint: the concepts of every category are dealt to the languages in turn, and each
  language's documents only talk about its own share (and no translation pairs are
  made), so no concept ever occurs in two languages.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sae_bilingual.errors import ConfigError
from sae_bilingual.world.lexicon import Concept, Lexicon

# Which form of a concept stands in for a form of another language: same name when both
# have it, else the closest one (English sg/pl nouns -> Japanese base, polite -> plain tense).
_FORM_FALLBACK = {
    "sg": ("base", "sg"), "pl": ("base", "pl", "sg"), "base": ("base", "sg", "pres", "word"),
    "pres": ("pres", "base"), "past": ("past", "base"), "pres_polite": ("pres", "base"),
    "past_polite": ("past", "base"), "word": ("word", "base"),
}


class CodeSwitcher:
    """Swaps content words of a realised sentence into another language's surface form."""

    def __init__(self, lex: Lexicon, languages: Sequence[str], rate: float):
        if not 0.0 <= rate <= 1.0:
            raise ConfigError(f"codeswitch_rate={rate} must be within [0, 1].")
        self.lex, self.languages, self.rate = lex, list(languages), float(rate)
        self.key_of = {c.id: c.key for c in lex.concepts}
        # surface -> form name, per language (a surface is unique within a language's concept)
        self.form_name = {lang: {(key, s): name for key, forms in lex.forms[lang].items()
                                 for name, s in forms.items()} for lang in self.languages}

    def _switch(self, surface: str, concept: int, src: str, dst: str) -> str:
        key = self.key_of[concept]
        name = self.form_name[src].get((key, surface), "base")
        forms = self.lex.forms[dst][key]
        for want in _FORM_FALLBACK.get(name, (name,)):
            if want in forms:
                return forms[want]
        return next(iter(forms.values()))

    def apply(self, sentence: list[tuple[str, int]], lang: str,
              rng: np.random.Generator) -> tuple[list[tuple[str, int]], list[str]]:
        """(tokens, token languages) with each content word switched with probability ``rate``."""
        others = [l for l in self.languages if l != lang]
        out, langs = [], []
        for surface, concept in sentence:
            if concept >= 0 and others and rng.random() < self.rate:
                dst = others[int(rng.integers(len(others)))]
                out.append((self._switch(surface, concept, lang, dst), concept))
                langs.append(dst)
            else:
                out.append((surface, concept))
                langs.append(lang)
        return out, langs


def disjoint_lexicons(lex: Lexicon, languages: Sequence[str]) -> dict[str, Lexicon]:
    """One sub-lexicon per language: the concepts of every category dealt out in turn.

    Every category keeps at least one concept per language, so every sentence template
    stays usable; the surface forms are shared (a sub-lexicon only limits what is said).
    """
    langs = list(languages)
    by_pos: dict[str, list[Concept]] = {}
    for c in lex.concepts:
        by_pos.setdefault(f"{c.pos}:{c.noun_class}" if c.noun_class else c.pos, []).append(c)
    short = sorted(p for p, cs in by_pos.items() if len(cs) < len(langs))
    if short:
        raise ConfigError(f"disjoint concepts need >= {len(langs)} concepts in every category; {short} have fewer: "
                          "raise n_concepts")
    keep: dict[str, list[Concept]] = {lang: [] for lang in langs}
    for cs in by_pos.values():
        for rank, c in enumerate(cs):
            keep[langs[rank % len(langs)]].append(c)
    out = {}
    for lang in langs:
        ids = {c.id for c in keep[lang]}
        out[lang] = Lexicon([c for c in lex.concepts if c.id in ids], lex.forms, lex.function_words)
    return out
