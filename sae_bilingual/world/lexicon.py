"""The toy world's lexicon: concepts (language-free meanings) and their surface forms.

Why a data file: the vocabulary (world/lexicon.tsv, one line per concept with its English
and Japanese forms) is data, not logic; it is read once and turned into a
:class:`Lexicon`: ``concepts`` (id, key, part of speech, selectional attributes),
``forms[lang][concept key][form name] -> surface`` and ``function_words[lang]``. The
made-up third language "xx" gets one syllable-built word per concept, derived from a hash
of the concept key. :func:`vocabulary` lists every token with its exact (language,
concept), the ground truth the analysis is scored against.

Adding a language: add its forms in :func:`build_lexicon` (a column in lexicon.tsv, or a
derived word as for "xx"), its ``FUNCTION_WORDS`` entry and a realizer in
``sae_bilingual.world.grammar.REALIZERS``.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

from sae_bilingual.defaults import PAPER_LANGUAGES
from sae_bilingual.errors import ConfigError

NO_CONCEPT = -1

LEXICON_FILE = "lexicon.tsv"
"""The concept table, package data of ``sae_bilingual.world`` (its header explains the columns)."""

_COLUMNS = ("pos", "noun_class", "key", "en", "ja", "attrs", "ditransitive")

# Function words per language: token -> part of speech. Concept id is NO_CONCEPT.
FUNCTION_WORDS: dict[str, dict[str, str]] = {
    "en": {
        "the": "det", "a": "det", "an": "det", "to": "prep", "in": "prep", "at": "prep", "on": "prep",
        "last": "prep", "next": "prep", "'s": "particle", "is": "copula", "are": "copula",
        "was": "copula", "were": "copula", "there": "pron", "will": "aux", "and": "conj",
        ".": "punct", ",": "punct",
    },
    "ja": {
        "は": "particle", "が": "particle", "を": "particle", "に": "particle",
        "で": "particle", "の": "particle", "まで": "particle", "と": "particle",
        "だ": "copula", "です": "copula", "だった": "copula", "でした": "copula",
        "ある": "verb_exist", "あります": "verb_exist", "あった": "verb_exist", "ありました": "verb_exist",
        "いる": "verb_exist", "います": "verb_exist", "いた": "verb_exist", "いました": "verb_exist",
        "な": "particle", "個": "counter", "匹": "counter", "人": "counter", "冊": "counter",
        "杯": "counter", "。": "punct", "、": "punct",
    },
    # "xx": a made-up VSO language (see _xx_words and grammar.realize_xx). Particles are chosen so
    # that no syllable-built content word can equal them (content words have >= 2 syllables
    # and end in a vowel; these are one syllable or end in a consonant).
    "xx": {
        "pa": "tense", "fu": "tense", "ko": "particle", "ri": "particle", "mo": "particle",
        "ve": "particle", "ul": "copula", "dau": "verb_exist",
        "·": "punct",
    },
}

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")


@dataclass(frozen=True)
class Concept:
    """One meaning: id, key (English lemma), category and selectional attributes."""

    id: int
    key: str
    pos: str
    noun_class: str = ""  # person/animal/food/drink/readable/object/place for nouns
    attrs: tuple[str, ...] = ()  # verb object classes, adj type, time tense, ...
    ditransitive: bool = False


@dataclass
class Lexicon:
    """Concepts plus their surface forms per language (``forms[lang][key][form]``)."""

    concepts: list[Concept]
    forms: dict[str, dict[str, dict[str, str]]]
    function_words: dict[str, dict[str, str]]

    def __post_init__(self) -> None:
        self._cache: dict[tuple, list[Concept]] = {}

    def by_pos(self, pos: str) -> list[Concept]:
        """Concepts of one category (cached: called once per sampled word)."""
        key = ("pos", pos)
        if key not in self._cache:
            self._cache[key] = [c for c in self.concepts if c.pos == pos]
        return self._cache[key]

    def nouns(self, classes: Sequence[str]) -> list[Concept]:
        """Nouns whose class is one of ``classes`` (cached)."""
        key = ("cls", *classes)
        if key not in self._cache:
            self._cache[key] = [c for c in self.concepts if c.noun_class in classes]
        return self._cache[key]


@dataclass(frozen=True)
class Entry:
    """One line of lexicon.tsv (see its header for what each column holds per category)."""

    pos: str
    noun_class: str
    key: str
    en: str
    ja: str
    attrs: str = ""
    ditransitive: bool = False


def parse_lexicon(text: str, source: str = LEXICON_FILE) -> dict[str, list[Entry]]:
    """Entries of a lexicon table, by category (pos) in file order.

    Lines starting with "#" and blank lines are skipped; the first other line is the header.
    Trailing empty columns may be missing. A category must be one block of lines, because
    concepts are numbered in file order and a small world keeps a share of every category.
    """
    lines = [(n, ln) for n, ln in enumerate(text.splitlines(), 1) if ln.strip() and not ln.startswith("#")]
    if not lines or tuple(lines[0][1].rstrip("\t").split("\t")) != _COLUMNS:
        raise ConfigError(f"{source}: the first non-comment line must be the tab-separated header "
                          f"{' '.join(_COLUMNS)}")
    out: dict[str, list[Entry]] = {}
    for n, line in lines[1:]:
        cells = line.split("\t")
        if not 5 <= len(cells) <= len(_COLUMNS):
            raise ConfigError(f"{source}:{n}: expected 5 to {len(_COLUMNS)} tab-separated columns, got {len(cells)}")
        cells += [""] * (len(_COLUMNS) - len(cells))
        if cells[6] not in ("", "ditr"):
            raise ConfigError(f"{source}:{n}: column ditransitive must be empty or 'ditr', got {cells[6]!r}")
        pos = cells[0]
        if pos in out and pos != next(reversed(out)):
            raise ConfigError(f"{source}:{n}: category {pos!r} continues after another category; "
                              "keep its lines together")
        out.setdefault(pos, []).append(Entry(*cells[:6], ditransitive=cells[6] == "ditr"))
    return out


@functools.cache
def lexicon_table() -> dict[str, list[Entry]]:
    """The packaged concept table (world/lexicon.tsv), by category, read once."""
    text = resources.files("sae_bilingual.world").joinpath(LEXICON_FILE).read_text(encoding="utf-8")
    return parse_lexicon(text)


def _all_entries() -> list[Entry]:
    return [e for entries in lexicon_table().values() for e in entries]


def _forms_for(pos: str, en: str, ja: str, attrs: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Surface forms of one concept in English and Japanese, by form name."""
    if pos == "name":
        return {"sg": en}, {"base": ja}
    if pos in ("person", "animal", "food", "drink", "readable", "object", "place"):
        sg, pl = en.split()
        return {"sg": sg, "pl": pl}, {"base": ja}
    if pos.startswith("verb"):
        base, s3, past = en.split()
        dict_form, stem, ta = ja.split()
        return (
            {"base": base, "pres": s3, "past": past},
            {"pres": dict_form, "past": ta, "pres_polite": stem + "ます", "past_polite": stem + "ました"},
        )
    if pos == "adj":
        return {"base": en}, {"base": ja}
    if pos == "time":
        # "in_morning" -> preposition "in" + word; "夜_に" -> word + particle
        return {"word": en.split("_")[-1]}, {"word": ja.split("_")[0]}
    return {"base": en}, {"base": ja}


def build_lexicon(n_concepts: int | None = None, languages: Sequence[str] = PAPER_LANGUAGES) -> Lexicon:
    """The concept inventory, optionally cut to ``n_concepts`` (a share of each category).

    Why a share per category: a small world for tests keeps every template usable.
    """
    for lang in languages:
        if lang not in FUNCTION_WORDS:
            raise ConfigError(
                f"language {lang!r} has no lexicon; valid languages: {sorted(FUNCTION_WORDS)}. "
                "Add its forms (build_lexicon in sae_bilingual/world/lexicon.py), FUNCTION_WORDS and a realizer "
                "(REALIZERS in sae_bilingual/world/grammar.py) to support it."
            )
    table = lexicon_table()
    rows = _all_entries()
    total = len(rows)
    if n_concepts is None or n_concepts >= total:
        keep = rows
    else:
        if n_concepts < 3 * len(table):
            raise ConfigError(
                f"n_concepts={n_concepts} is too small: need at least {3 * len(table)} "
                f"(3 per category) and at most {total}."
            )
        frac = n_concepts / total
        keep = []
        for entries in table.values():
            k = max(3, int(round(len(entries) * frac)))
            keep.extend(entries[:k])
    concepts: list[Concept] = []
    forms: dict[str, dict[str, dict[str, str]]] = {"en": {}, "ja": {}}
    xx = _xx_words()
    for e in keep:
        flat_attrs = e.attrs.split()
        if e.pos == "time":
            flat_attrs = [e.attrs, e.en, e.ja]  # tense, raw en phrase, raw ja phrase
        if e.pos == "place":
            flat_attrs = [e.attrs]  # English preposition for "in the park"
        c = Concept(len(concepts), e.key, e.pos, e.noun_class, tuple(flat_attrs), e.ditransitive)
        concepts.append(c)
        f_en, f_ja = _forms_for(e.pos, e.en, e.ja, flat_attrs)
        forms["en"][e.key] = f_en
        forms["ja"][e.key] = f_ja
        forms.setdefault("xx", {})[e.key] = {"base": xx[e.key]}
    return Lexicon(
        concepts,
        {lang: forms[lang] for lang in languages},
        {lang: FUNCTION_WORDS[lang] for lang in languages},
    )


# The pseudo-language "xx": one made-up word per concept from syllables, derived from a
# hash of the concept key (so a word never depends on n_concepts or the seed), VSO order.
_XX_ONSETS = "b d g k l m n p r s t v z"
_XX_VOWELS = "a e i o u"


@functools.cache
def _xx_words() -> dict[str, str]:
    """concept key -> xx word, for the whole inventory (built once, deterministic).

    Words are 2-3 CV syllables; a word that equals another concept's word, an English or
    Japanese surface form, or an xx function word is redrawn from the next hash.
    """
    syll = [o + v for o in _XX_ONSETS.split() for v in _XX_VOWELS.split()]
    taken = set(FUNCTION_WORDS["en"]) | set(FUNCTION_WORDS["ja"]) | set(FUNCTION_WORDS["xx"])
    rows = _all_entries()
    for e in rows:
        for col in (e.en, e.ja):
            taken.update(col.replace("_", " ").split())
    out: dict[str, str] = {}
    for e in rows:
        key, salt = e.key, 0
        while True:
            h = hashlib.sha256(f"xx:{key}:{salt}".encode()).digest()
            n = 2 + h[0] % 2
            word = "".join(syll[h[1 + i] % len(syll)] for i in range(n))
            if word not in taken:
                break
            salt += 1
        taken.add(word)
        out[key] = word
    return out


def n_lexicon_concepts() -> int:
    """Size of the full concept inventory."""
    return len(_all_entries())


def vocabulary(lex: Lexicon) -> list[tuple[str, str, int, str, str]]:
    """All tokens as (surface, lang, concept id, concept name, pos), specials first.

    Raises if one surface string would map to two different (language, concept) pairs,
    which would make the token-level ground truth ambiguous.
    """
    rows: list[tuple[str, str, int, str, str]] = [(t, "", NO_CONCEPT, t, "special") for t in SPECIAL_TOKENS]
    seen: dict[str, tuple[str, int]] = {t: ("", NO_CONCEPT) for t in SPECIAL_TOKENS}
    langs = list(lex.forms)
    for lang in langs:
        for tok, pos in lex.function_words[lang].items():
            rows.append((tok, lang, NO_CONCEPT, "", pos))
            if tok in seen:
                raise ConfigError(f"token {tok!r} is both {seen[tok]} and ({lang!r}, function word)")
            seen[tok] = (lang, NO_CONCEPT)
        for c in lex.concepts:
            for form in dict.fromkeys(lex.forms[lang][c.key].values()):
                if form in seen:
                    if seen[form] == (lang, c.id):
                        continue
                    raise ConfigError(f"token {form!r} is both {seen[form]} and ({lang!r}, {c.key!r})")
                seen[form] = (lang, c.id)
                rows.append((form, lang, c.id, c.key, c.pos))
    return rows
