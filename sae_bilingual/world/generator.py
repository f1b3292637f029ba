"""Bilingual toy-world corpus generator: documents sampled from the lexicon and the grammar.

Why: the paper asks which SAE features are English-only, Japanese-only or bilingual. On a
real corpus "same meaning" can only be approximated (embedding clusters). Here every
content word is a surface form of a known concept, so each token's language and meaning
are exact and an analysis can be scored against them.

Structure (so a third language can be added later):

* :mod:`sae_bilingual.world.lexicon`: the concept inventory (package data
  ``world/lexicon.tsv``) read into a :class:`~sae_bilingual.world.lexicon.Lexicon`:
  ``concepts`` (language-free: key, part of speech, selectional attributes),
  ``forms[lang][concept_key] -> {form_name: surface}`` and ``function_words[lang]``
  (``FUNCTION_WORDS``); :func:`~sae_bilingual.world.lexicon.vocabulary` is the token table.
* :mod:`sae_bilingual.world.grammar`: a ``Frame`` is a language-free sentence meaning;
  ``REALIZERS[lang](lex, frame, style)`` linearises it into ``[(token, concept_id), ...]``.
* Here: :class:`FrameSampler` draws frames (Zipf-weighted concepts, a document's small
  recurring cast); :func:`generate_documents` writes documents of BOS + sentences of one
  language up to ``max_doc_tokens`` tokens, or (``bilingual_share`` of them) translation
  pairs of the same frame in both languages, the order alternating from pair to pair.

A third language ships: ``"xx"``, a made-up VSO language with one syllable-built word
per concept (derived from a hash of the concept key) and its own particles, so that
``WorldConfig(languages=("en", "ja", "xx"))`` builds a trilingual world. Nothing is keyed
on exactly two languages.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from sae_bilingual.defaults import PAPER_LANGUAGES
from sae_bilingual.errors import ConfigError
from sae_bilingual.world.grammar import NP, REALIZERS, Frame, Style, Token
from sae_bilingual.world.lexicon import Concept, Lexicon
from sae_bilingual.world.variants import CodeSwitcher, disjoint_lexicons


@dataclass
class GeneratorConfig:
    """Knobs of the corpus generator (a subset of WorldConfig)."""

    seed: int = 0
    """Random seed: the same seed and config give the same corpus."""
    n_concepts: int | None = None
    """Number of concepts (None = the whole lexicon, 330)."""
    languages: tuple[str, ...] = PAPER_LANGUAGES
    """Language codes; each needs forms in world/lexicon.py and a realizer in world/grammar.py."""
    bilingual_share: float = 0.2
    """Share of documents made of translation pairs (both languages, alternating order)."""
    max_doc_tokens: int = 64
    """Maximum tokens per document, BOS included."""
    zipf: float = 0.5
    """Zipf exponent of concept frequencies within a category (0 = uniform)."""
    cast_reuse: float = 0.5
    """Probability that a person/place slot reuses the document's cast (topic coherence)."""
    codeswitch_rate: float = 0.0
    """Probability that a content word is realised in another language's form (positive control)."""
    disjoint: bool = False
    """Each language talks about its own share of the concepts (negative control)."""
    frame_weights: dict[str, float] = field(
        default_factory=lambda: {
            "transitive": 0.35, "ditransitive": 0.1, "motion": 0.15,
            "intransitive": 0.15, "predicate": 0.15, "existence": 0.1,
        }
    )
    """Relative frequency of each sentence template."""


class FrameSampler:
    """Draws random frames from a lexicon with a numpy Generator (deterministic)."""

    def __init__(self, lex: Lexicon, cfg: GeneratorConfig, rng: np.random.Generator):
        self.lex, self.cfg, self.rng = lex, cfg, rng
        self._pools: dict[str, tuple[list[Concept], list[float]]] = {}
        self.cast: dict[str, list[Concept]] = {}
        kinds = list(cfg.frame_weights)
        w = np.array([cfg.frame_weights[k] for k in kinds], dtype=float)
        self.kinds, self.kind_cdf = kinds, np.cumsum(w / w.sum())[:-1].tolist()

    def _pool(self, name: str, items: list[Concept]) -> tuple[list[Concept], list[float]]:
        if name not in self._pools:
            ranks = np.arange(1, len(items) + 1, dtype=float)
            p = ranks ** (-self.cfg.zipf)
            self._pools[name] = (items, np.cumsum(p / p.sum()).tolist())
        return self._pools[name]

    def pick(self, name: str, items: list[Concept]) -> Concept:
        """Zipf-weighted draw from ``items`` (pool cached under ``name``)."""
        items, cdf = self._pool(name, items)
        return items[min(bisect.bisect_right(cdf, self.rng.random()), len(items) - 1)]

    def new_doc(self) -> None:
        """Choose a small cast of people and places that the document keeps returning to."""
        people = self.lex.nouns(["person"])
        places = self.lex.by_pos("place")
        self.cast = {
            "person": [self.pick("person", people) for _ in range(2)],
            "place": [self.pick("place", places) for _ in range(2)],
        }

    def noun(self, classes: Sequence[str]) -> Concept:
        classes = list(classes)
        cls = classes[self.rng.integers(len(classes))]
        if cls in self.cast and self.rng.random() < self.cfg.cast_reuse:
            return self.cast[cls][self.rng.integers(len(self.cast[cls]))]
        if cls == "place":
            return self.pick("place", self.lex.by_pos("place"))
        return self.pick(cls, self.lex.nouns([cls]))

    def np_(self, classes: Sequence[str], *, allow_number: bool = True, allow_poss: bool = True) -> NP:
        head = self.noun(classes)
        r = self.rng.random
        adj = self.pick("adj", self.lex.by_pos("adj")) if head.pos != "name" and r() < 0.35 else None
        number = None
        if allow_number and head.pos not in ("name", "place") and r() < 0.2:
            number = self.pick("number", self.lex.by_pos("number"))
        poss = None
        if allow_poss and head.pos not in ("name", "place") and number is None and r() < 0.12:
            poss = self.noun(["person"])
            if poss.pos != "name":
                poss = self.pick("name", self.lex.by_pos("name"))
        return NP(head, adj, number, poss)

    def frame(self) -> Frame:
        rng, lex = self.rng, self.lex
        kind = self.kinds[bisect.bisect_right(self.kind_cdf, rng.random())]
        time = self.pick("time", lex.by_pos("time")) if rng.random() < 0.4 else None
        u = rng.random()
        tense = "pres" if u < 0.4 else ("past" if u < 0.85 else "fut")
        if time is not None:
            t = time.attrs[0]
            tense = {"past": "past", "future": "fut"}.get(t, tense)
        subj_np = lambda: self.np_(["person"], allow_number=False)  # noqa: E731
        place = None
        adverb = self.pick("adverb", lex.by_pos("adverb")) if rng.random() < 0.2 else None
        if kind in ("transitive", "ditransitive"):
            verbs = [v for v in lex.by_pos("verb") if v.ditransitive] if kind == "ditransitive" else lex.by_pos("verb")
            if not verbs:
                kind, verbs = "transitive", lex.by_pos("verb")
            verb = self.pick(kind, verbs)
            obj_classes = [c for c in verb.attrs if c != "person" or kind == "transitive"]
            obj_classes = [c for c in obj_classes if c != "place"] or ["object"]
            if not any(lex.nouns([c]) for c in obj_classes):
                obj_classes = ["object"]
            obj_classes = [c for c in obj_classes if lex.nouns([c])]
            subj = subj_np()
            obj = self.np_(obj_classes)
            for _ in range(5):  # "Emma drew Emma": redraw the object
                if obj.head.id != subj.head.id:
                    break
                obj = self.np_(obj_classes)
            rec = None
            if kind == "ditransitive":
                rec = self.np_(["person"], allow_number=False)
                for _ in range(5):
                    if rec.head.id != subj.head.id:
                        break
                    rec = self.np_(["person"], allow_number=False)
            if rng.random() < 0.3:
                place = self.noun(["place"])
            return Frame(kind, subj, verb, obj, rec, place, time, adverb, tense=tense)
        if kind == "motion":
            return Frame(kind, subj_np(), self.pick("motion", lex.by_pos("verb_motion")), place=self.noun(["place"]),
                         time=time, adverb=adverb, tense=tense)
        if kind == "intransitive":
            if rng.random() < 0.5:
                place = self.noun(["place"])
            return Frame(kind, subj_np(), self.pick("intr", lex.by_pos("verb_intrans")), place=place, time=time,
                         adverb=adverb, tense=tense)
        if kind == "predicate":
            subj = self.np_(["person", "animal", "food", "drink", "readable", "object", "place"], allow_number=False)
            subj.adj = None
            adj = self.pick("adj", lex.by_pos("adj"))
            if time is not None and time.attrs[0] != "any":
                time = None  # "is big yesterday" would be odd: predicates are timeless here
            return Frame(kind, subj, adj=adj, time=time, tense="pres")
        # existence
        subj = self.np_(["animal", "object", "food", "readable"], allow_poss=False)
        return Frame("existence", subj, place=self.noun(["place"]), time=time,
                     tense="past" if tense == "past" else "pres")


@dataclass
class Document:
    """One generated document: language label, tokens (no BOS), concept ids, token languages."""

    lang: str
    tokens: list[str]
    concepts: list[int]
    token_langs: list[str]
    bilingual: bool


def generate_documents(
    lex: Lexicon, cfg: GeneratorConfig, n_docs: int, *, seed_offset: int = 0, bilingual_share: float | None = None,
    codeswitch_rate: float | None = None,
) -> list[Document]:
    """Generate ``n_docs`` documents, deterministic in (cfg.seed, seed_offset).

    Monolingual documents cycle through the languages; a ``bilingual_share`` of documents
    are translation pairs (the same frame realised in two languages, order alternating);
    such a document is labelled with the language of its first sentence. With
    ``codeswitch_rate`` > 0 content words switch language (world/variants.py); with
    ``cfg.disjoint`` each language draws from its own concepts.
    """
    share = cfg.bilingual_share if bilingual_share is None else bilingual_share
    rate = cfg.codeswitch_rate if codeswitch_rate is None else codeswitch_rate
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"bilingual_share={share} must be within [0, 1].")
    if cfg.disjoint and share > 0:
        raise ConfigError("disjoint concept sets leave nothing to translate: set bilingual_share to 0")
    rng = np.random.default_rng([cfg.seed, seed_offset])
    langs = list(cfg.languages)
    if cfg.disjoint:
        samplers = {lang: FrameSampler(sub, cfg, rng) for lang, sub in disjoint_lexicons(lex, langs).items()}
    else:
        shared = FrameSampler(lex, cfg, rng)
        samplers = {lang: shared for lang in langs}
    switcher = CodeSwitcher(lex, langs, rate) if rate > 0 else None

    def realise(fr: Frame, lang: str, style: Style) -> tuple[list[Token], list[str]]:
        sent = REALIZERS[lang](lex, fr, style)
        return switcher.apply(sent, lang, rng) if switcher else (sent, [lang] * len(sent))

    budget = cfg.max_doc_tokens - 1  # BOS
    docs: list[Document] = []
    for i in range(n_docs):
        first = langs[i % len(langs)]
        sampler = samplers[first]
        sampler.new_doc()
        style = Style(polite=bool(rng.random() < 0.5))
        bilingual = len(langs) > 1 and rng.random() < share
        toks: list[str] = []
        cons: list[int] = []
        tl: list[str] = []
        if bilingual:
            other = [l for l in langs if l != first]
            second = other[rng.integers(len(other))]
            order = [first, second]
            while True:
                fr = sampler.frame()
                pair = [realise(fr, lang, style) for lang in order]
                n = sum(len(s) for s, _ in pair)
                if len(toks) + n > budget:
                    break
                for sent, sl in pair:
                    toks += [t for t, _ in sent]
                    cons += [c for _, c in sent]
                    tl += sl
                order = order[::-1]
        else:
            while True:
                sent, sl = realise(sampler.frame(), first, style)
                if len(toks) + len(sent) > budget:
                    break
                toks += [t for t, _ in sent]
                cons += [c for _, c in sent]
                tl += sl
        if not toks:  # one sentence longer than the budget: keep a truncated sentence
            sent, sl = realise(sampler.frame(), first, style)
            toks, cons, tl = [t for t, _ in sent[:budget]], [c for _, c in sent[:budget]], sl[:budget]
        docs.append(Document(first, toks, cons, tl, bilingual))
    return docs


def generate_translation_pairs(lex: Lexicon, cfg: GeneratorConfig, n_pairs: int, *, seed_offset: int = 99) -> list[dict[str, str]]:
    """Parallel sentences (one per language, same frame) for translation tests."""
    rng = np.random.default_rng([cfg.seed, seed_offset])
    sampler = FrameSampler(lex, cfg, rng)
    out = []
    for _ in range(n_pairs):
        sampler.new_doc()
        style = Style(polite=bool(rng.random() < 0.5))
        fr = sampler.frame()
        out.append({lang: " ".join(t for t, _ in REALIZERS[lang](lex, fr, style)) for lang in cfg.languages})
    return out
