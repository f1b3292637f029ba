"""The toy world's grammar: language-free sentence meanings (frames) and one realizer per language.

Why separate from the sampler: a :class:`Frame` (predicate, arguments, tense...) says what
a sentence means; ``REALIZERS[lang](lexicon, frame, style)`` says how one language puts it
into words, ``[(token, concept_id), ...]`` in its own word order: English SVO with articles
and prepositions, Japanese SOV with particles (は/が/を/に/で/の/まで), verb forms
(plain/polite, past) and counters, and the made-up "xx" VSO with tense particles. A
translation pair is one frame realised twice, so both sentences hold the same concepts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sae_bilingual.world.lexicon import NO_CONCEPT, Concept, Lexicon


@dataclass
class NP:
    """Noun phrase: head concept, optional adjective, number, possessor (a name/person)."""

    head: Concept
    adj: Concept | None = None
    number: Concept | None = None  # plural/quantified when set
    possessor: Concept | None = None


@dataclass
class Frame:
    """A sentence meaning. kind: transitive / ditransitive / motion / intransitive /
    predicate (NP is ADJ) / existence (there is NP in PLACE)."""

    kind: str
    subj: NP | None = None
    verb: Concept | None = None
    obj: NP | None = None
    recipient: NP | None = None
    place: Concept | None = None
    time: Concept | None = None
    adverb: Concept | None = None
    adj: Concept | None = None
    tense: str = "pres"  # pres / past / fut


@dataclass
class Style:
    """Per-document style choices (Japanese politeness)."""

    polite: bool = False


Token = tuple[str, int]  # (surface, concept id or NO_CONCEPT)


def _f(tok: str) -> Token:
    return (tok, NO_CONCEPT)


def _en_np(lex: Lexicon, np_: NP, *, article: str = "the") -> list[Token]:
    """English noun phrase; ``article`` is "the" or "a" (a/an chosen by the next word)."""
    F = lex.forms["en"]
    out: list[Token] = []
    forms = F[np_.head.key]
    use_article = not forms["sg"][0].isupper()  # proper nouns (names, cities) take none
    if np_.possessor is not None:
        out += _en_np(lex, NP(np_.possessor)) + [_f("'s")]
        use_article = False
    plural = np_.number is not None and np_.number.key != "one"
    if np_.number is not None:
        out.append((F[np_.number.key]["base"], np_.number.id))
        use_article = False
    adj = [(F[np_.adj.key]["base"], np_.adj.id)] if np_.adj is not None else []
    noun = (forms["pl"] if plural and "pl" in forms else forms["sg"], np_.head.id)
    if use_article:
        if article == "a":
            article = "an" if (adj or [noun])[0][0][0] in "aeiou" else "a"
        out.append(_f(article))
    return out + adj + [noun]


def _en_verb(lex: Lexicon, verb: Concept, tense: str) -> list[Token]:
    F = lex.forms["en"][verb.key]
    if tense == "past":
        return [(F["past"], verb.id)]
    if tense == "fut":
        return [_f("will"), (F["base"], verb.id)]
    return [(F["pres"], verb.id)]


def _en_time(lex: Lexicon, t: Concept) -> list[Token]:
    raw = t.attrs[1].split("_")
    prep = [_f(p) for p in raw[:-1]]
    return prep + [(lex.forms["en"][t.key]["word"], t.id)]


def _en_place(lex: Lexicon, p: Concept, prep: str | None = None) -> list[Token]:
    return [_f(prep or p.attrs[0])] + _en_np(lex, NP(p))


def realize_en(lex: Lexicon, fr: Frame, style: Style) -> list[Token]:
    """English: SVO, articles, prepositions; time phrase at the end."""
    out: list[Token] = []
    assert fr.subj is not None, "every frame has a subject"
    if fr.kind == "existence":
        assert fr.place is not None
        plural = fr.subj.number is not None and fr.subj.number.key != "one"
        be = {"past": "were" if plural else "was"}.get(fr.tense, "are" if plural else "is")
        out += [_f("there"), _f(be)] + _en_np(lex, fr.subj, article="a") + _en_place(lex, fr.place)
    elif fr.kind == "predicate":
        be = "is"  # predicates are present tense in this grammar (no adjective past forms)
        assert fr.adj is not None
        out += _en_np(lex, fr.subj) + [_f(be), (lex.forms["en"][fr.adj.key]["base"], fr.adj.id)]
    else:
        assert fr.verb is not None
        out += _en_np(lex, fr.subj) + _en_verb(lex, fr.verb, fr.tense)
        if fr.kind == "transitive":
            assert fr.obj is not None
            out += _en_np(lex, fr.obj)
        elif fr.kind == "ditransitive":
            assert fr.obj is not None and fr.recipient is not None
            out += _en_np(lex, fr.obj) + [_f("to")] + _en_np(lex, fr.recipient)
        elif fr.kind == "motion":
            assert fr.place is not None
            out += _en_place(lex, fr.place, "to")
        if fr.place is not None and fr.kind != "motion":
            out += _en_place(lex, fr.place)
        if fr.adverb is not None:
            out.append((lex.forms["en"][fr.adverb.key]["base"], fr.adverb.id))
    if fr.time is not None:
        out += _en_time(lex, fr.time)
    out.append(_f("."))
    return out


_JA_COUNTER = {"person": "人", "animal": "匹", "readable": "冊", "drink": "杯"}


def _ja_np(lex: Lexicon, np_: NP, *, with_number: bool = False) -> list[Token]:
    """Japanese noun phrase (possessor の, adjective, noun). Numbers are placed by the
    caller after the case particle (りんご を 三 個), the natural floating quantifier."""
    F = lex.forms["ja"]
    out: list[Token] = []
    if np_.possessor is not None:
        out += [(F[np_.possessor.key]["base"], np_.possessor.id), _f("の")]
    if np_.adj is not None:
        out += _ja_adj_attr(lex, np_.adj)
    out.append((F[np_.head.key]["base"], np_.head.id))
    return out


def _ja_adj_attr(lex: Lexicon, adj: Concept) -> list[Token]:
    tok = (lex.forms["ja"][adj.key]["base"], adj.id)
    kind = adj.attrs[0] if adj.attrs else "i"
    if kind == "na":
        return [tok, _f("な")]
    if kind == "na_no":
        return [tok, _f("の")]
    return [tok]


def _ja_quantity(lex: Lexicon, np_: NP) -> list[Token]:
    if np_.number is None:
        return []
    counter = _JA_COUNTER.get(np_.head.noun_class, "個")
    return [(lex.forms["ja"][np_.number.key]["base"], np_.number.id), _f(counter)]


def _ja_verb(lex: Lexicon, verb: Concept, tense: str, style: Style) -> list[Token]:
    F = lex.forms["ja"][verb.key]
    name = ("past" if tense == "past" else "pres") + ("_polite" if style.polite else "")
    return [(F[name], verb.id)]


def _ja_time(lex: Lexicon, t: Concept) -> list[Token]:
    raw = t.attrs[2].split("_")
    return [(lex.forms["ja"][t.key]["word"], t.id)] + [_f(p) for p in raw[1:]]


def _ja_copula(tense: str, style: Style) -> list[Token]:
    if tense == "past":
        return [_f("でした" if style.polite else "だった")]
    return [_f("です" if style.polite else "だ")]


def realize_ja(lex: Lexicon, fr: Frame, style: Style) -> list[Token]:
    """Japanese: topic は, time, place で/に, object を, quantity, adverb, verb (SOV)."""
    F = lex.forms["ja"]
    out: list[Token] = []
    assert fr.subj is not None, "every frame has a subject"
    if fr.kind == "existence":
        assert fr.place is not None
        if fr.time is not None:
            out += _ja_time(lex, fr.time)
        out += [(F[fr.place.key]["base"], fr.place.id), _f("に")]
        out += _ja_np(lex, fr.subj) + [_f("が")] + _ja_quantity(lex, fr.subj)
        animate = fr.subj.head.noun_class in ("person", "animal")
        stem = "い" if animate else "あり"
        if style.polite:
            ex = stem + ("ました" if fr.tense == "past" else "ます")
        else:
            ex = ("いた" if animate else "あった") if fr.tense == "past" else ("いる" if animate else "ある")
        out.append(_f(ex))
        out.append(_f("。"))
        return out
    out += _ja_np(lex, fr.subj) + [_f("は")]
    if fr.time is not None:
        out += _ja_time(lex, fr.time)
    if fr.kind == "predicate":
        out += _ja_quantity(lex, fr.subj)
        adj = fr.adj
        assert adj is not None
        kind = adj.attrs[0] if adj.attrs else "i"
        tok = (F[adj.key]["base"], adj.id)
        if kind == "i":  # i-adjectives are predicates on their own (polite: + です)
            out += [tok] + ([_f("です")] if style.polite else [])
        else:
            out += [tok] + _ja_copula("pres", style)
        out.append(_f("。"))
        return out
    if fr.place is not None and fr.kind != "motion":
        out += [(F[fr.place.key]["base"], fr.place.id), _f("で")]
    if fr.kind == "ditransitive":
        assert fr.recipient is not None
        out += _ja_np(lex, fr.recipient) + [_f("に")]
    if fr.kind in ("transitive", "ditransitive"):
        assert fr.obj is not None
        out += _ja_np(lex, fr.obj) + [_f("を")] + _ja_quantity(lex, fr.obj)
    assert fr.verb is not None
    if fr.kind == "motion":
        assert fr.place is not None
        out += [(F[fr.place.key]["base"], fr.place.id), _f(fr.verb.attrs[0])]
    if fr.adverb is not None:
        out.append((F[fr.adverb.key]["base"], fr.adverb.id))
    out += _ja_verb(lex, fr.verb, fr.tense, style)
    out.append(_f("。"))
    return out


def _xx_np(lex: Lexicon, np_: NP) -> list[Token]:
    """xx noun phrase: [number] noun [adjective] [ve possessor] (heads first)."""
    F = lex.forms["xx"]
    out: list[Token] = []
    if np_.number is not None:
        out.append((F[np_.number.key]["base"], np_.number.id))
    out.append((F[np_.head.key]["base"], np_.head.id))
    if np_.adj is not None:
        out.append((F[np_.adj.key]["base"], np_.adj.id))
    if np_.possessor is not None:
        out += [_f("ve"), (F[np_.possessor.key]["base"], np_.possessor.id)]
    return out


def realize_xx(lex: Lexicon, fr: Frame, style: Style) -> list[Token]:
    """xx (made-up): VSO. [pa|fu] VERB SUBJ [ko OBJ] [ri RECIPIENT] [mo PLACE] [ADV] [TIME] ·

    Tense is a particle before the verb (pa past, fu future); ko marks the object, ri the
    recipient or destination, mo the place; existence: dau NP mo PLACE; predicate:
    ul ADJ NP. ``style`` has no effect (xx has no politeness)."""
    del style
    F = lex.forms["xx"]
    out: list[Token] = []
    tense = [_f("pa")] if fr.tense == "past" else [_f("fu")] if fr.tense == "fut" else []
    assert fr.subj is not None, "every frame has a subject"
    if fr.kind == "existence":
        assert fr.place is not None
        out += tense + [_f("dau")] + _xx_np(lex, fr.subj) + [_f("mo"), (F[fr.place.key]["base"], fr.place.id)]
    elif fr.kind == "predicate":
        assert fr.adj is not None
        out += [_f("ul"), (F[fr.adj.key]["base"], fr.adj.id)] + _xx_np(lex, fr.subj)
    else:
        assert fr.verb is not None
        out += tense + [(F[fr.verb.key]["base"], fr.verb.id)] + _xx_np(lex, fr.subj)
        if fr.kind in ("transitive", "ditransitive"):
            assert fr.obj is not None
            out += [_f("ko")] + _xx_np(lex, fr.obj)
        if fr.kind == "ditransitive":
            assert fr.recipient is not None
            out += [_f("ri")] + _xx_np(lex, fr.recipient)
        if fr.kind == "motion":
            assert fr.place is not None
            out += [_f("ri"), (F[fr.place.key]["base"], fr.place.id)]
        if fr.place is not None and fr.kind != "motion":
            out += [_f("mo"), (F[fr.place.key]["base"], fr.place.id)]
        if fr.adverb is not None:
            out.append((F[fr.adverb.key]["base"], fr.adverb.id))
    if fr.time is not None:
        out.append((F[fr.time.key]["base"], fr.time.id))
    out.append(_f("·"))
    return out


REALIZERS: dict[str, Callable[[Lexicon, Frame, Style], list[Token]]] = {
    "en": realize_en, "ja": realize_ja, "xx": realize_xx,
}
