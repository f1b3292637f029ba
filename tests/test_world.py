"""Tests for the embedded toy world (generator, tokenizer, pre-training, cache)."""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np
import pytest
import torch

from sae_bilingual.errors import ConfigError
from sae_bilingual.models.catalogue import iter_dirname
from sae_bilingual.world import World, WorldConfig, build_world, is_complete, world_dir
from sae_bilingual.world.generator import FrameSampler, GeneratorConfig, generate_documents, generate_translation_pairs
from sae_bilingual.world.grammar import Frame, Style, realize_en, realize_ja
from sae_bilingual.world.lexicon import (
    NO_CONCEPT,
    build_lexicon,
    lexicon_table,
    n_lexicon_concepts,
    parse_lexicon,
    vocabulary,
)
from sae_bilingual.world.pretrain import checkpoint_steps

# ------------------------------------------------------------------ generator (fast)


def test_lexicon_has_300_concepts_each_in_both_languages():
    lex = build_lexicon()
    assert len(lex.concepts) == n_lexicon_concepts()
    assert len(lex.concepts) >= 300
    rows = vocabulary(lex)  # raises on an ambiguous surface form
    by_lang: dict[str, set[int]] = {"en": set(), "ja": set()}
    for _tok, lang, cid, _name, _pos in rows:
        if cid != NO_CONCEPT:
            by_lang[lang].add(cid)
    ids = {c.id for c in lex.concepts}
    assert by_lang["en"] == ids and by_lang["ja"] == ids
    # Japanese surface forms really are Japanese script
    ja_forms = [t for t, lang, *_ in rows if lang == "ja"]
    assert all(any("\u3000" <= ch <= "\u30ff" or "\u4e00" <= ch <= "\u9fff" for ch in t) for t in ja_forms)


def test_lexicon_file_is_parsed_by_category_and_bad_files_are_named():
    header = "pos\tnoun_class\tkey\ten\tja\tattrs\tditransitive"
    text = "\n".join(["# comment", header, "verb\t\tgive\tgive gives gave\tあげる あげ あげた\tfood object\tditr",
                      "verb\t\teat\teat eats ate\t食べる 食べ 食べた\tfood", "", "number\t\tone\tone\t一"])
    table = parse_lexicon(text)
    assert list(table) == ["verb", "number"]
    give, eat = table["verb"]
    assert (give.key, give.attrs, give.ditransitive) == ("give", "food object", True)
    assert (eat.attrs, eat.ditransitive) == ("food", False)  # trailing empty column left out
    assert table["number"][0].attrs == "" and table["number"][0].ja == "一"
    with pytest.raises(ConfigError, match="header"):
        parse_lexicon("verb\t\tgive\tgive gives gave\tあげる あげ あげた")
    with pytest.raises(ConfigError, match=":3: expected 5"):
        parse_lexicon(f"{header}\nnumber\t\tone\tone\t一\nnumber\tone")
    with pytest.raises(ConfigError, match="keep its lines together"):
        parse_lexicon(f"{header}\nnumber\t\tone\tone\t一\nadverb\t\tagain\tagain\tまた\nnumber\t\ttwo\ttwo\t二")
    # the packaged file: 15 categories in the order concepts are numbered, ids follow file order
    lex = build_lexicon()
    packaged = [e.key for entries in lexicon_table().values() for e in entries]
    assert [c.key for c in lex.concepts] == packaged and [c.id for c in lex.concepts] == list(range(len(packaged)))
    assert list(lexicon_table())[:3] == ["name", "person", "animal"] and len(lexicon_table()) == 15


def test_generator_is_deterministic_from_seed():
    lex = build_lexicon(120)
    a = generate_documents(lex, GeneratorConfig(seed=3), 50)
    b = generate_documents(lex, GeneratorConfig(seed=3), 50)
    c = generate_documents(lex, GeneratorConfig(seed=4), 50)
    assert [d.tokens for d in a] == [d.tokens for d in b]
    assert [d.concepts for d in a] == [d.concepts for d in b]
    assert [d.tokens for d in a] != [d.tokens for d in c]


def _frames(n: int, kind: str) -> list[Frame]:
    lex = build_lexicon()
    cfg = GeneratorConfig(seed=0, frame_weights={kind: 1.0})
    s = FrameSampler(lex, cfg, np.random.default_rng(0))
    out = []
    for _ in range(n):
        s.new_doc()
        out.append(s.frame())
    return lex, out


def test_japanese_is_sov_with_particles_english_is_svo():
    lex, frames = _frames(200, "transitive")
    for fr in frames:
        ja = realize_ja(lex, fr, Style(polite=bool(fr.verb.id % 2)))
        en = realize_en(lex, fr, Style())
        ja_toks = [t for t, _ in ja]
        ja_cids = [c for _, c in ja]
        en_cids = [c for _, c in en]
        # Japanese: topic は after the subject, object marked by を, verb last before 。
        assert ja_toks[-1] == "。"
        assert ja_cids[-2] == fr.verb.id
        assert ja_toks.index("を") < ja_cids.index(fr.verb.id)
        assert fr.obj.head.id != fr.subj.head.id
        assert ja_cids.index(fr.obj.head.id) < ja_toks.index("を")
        assert ja_toks.index("は") < ja_toks.index("を")
        assert ja_cids.index(fr.subj.head.id) < ja_toks.index("は")
        # English: subject, verb, object
        assert en_cids.index(fr.subj.head.id) < en_cids.index(fr.verb.id) < en_cids.index(fr.obj.head.id)
        # same concepts in both realisations (translation, not paraphrase)
        assert sorted(c for c in ja_cids if c >= 0) == sorted(c for c in en_cids if c >= 0)
    lex, frames = _frames(100, "ditransitive")
    for fr in frames:
        ja = [t for t, _ in realize_ja(lex, fr, Style())]
        assert "に" in ja and "を" in ja


def test_bilingual_documents_alternate_translation_pairs():
    lex = build_lexicon(120)
    docs = generate_documents(lex, GeneratorConfig(seed=0, bilingual_share=1.0), 30)
    for d in docs:
        assert d.bilingual and set(d.token_langs) == {"en", "ja"}
        # sentence languages in order; pairs alternate en-ja, ja-en, ...
        ends = [i for i, t in enumerate(d.tokens) if t in (".", "。")]
        sent_langs = [d.token_langs[i] for i in ends]
        assert len(sent_langs) % 2 == 0
        pairs = [tuple(sent_langs[i : i + 2]) for i in range(0, len(sent_langs), 2)]
        assert all(set(p) == {"en", "ja"} for p in pairs)
        assert all(pairs[i][0] != pairs[i + 1][0] for i in range(len(pairs) - 1))
    mono = generate_documents(lex, GeneratorConfig(seed=0, bilingual_share=0.0), 30)
    assert all(len(set(d.token_langs)) == 1 and d.token_langs[0] == d.lang for d in mono)
    assert all(len(d.tokens) + 1 <= 64 for d in docs + mono)


def _corpus_digest(cfg: WorldConfig) -> str:
    """sha256 over everything the generator gives build_world: vocabulary, train/eval documents, pairs."""
    gcfg = cfg.generator_config()
    lex = build_lexicon(cfg.n_concepts, cfg.languages)
    h = hashlib.sha256(json.dumps(vocabulary(lex), ensure_ascii=False).encode())
    for n, offset, share in ((cfg.n_train_docs, 0, cfg.bilingual_share), (cfg.n_eval_docs, 1, 0.0)):
        for d in generate_documents(lex, gcfg, n, seed_offset=offset, bilingual_share=share):
            h.update(json.dumps([d.lang, d.tokens, d.concepts, d.token_langs, d.bilingual], ensure_ascii=False).encode())
    h.update(json.dumps(generate_translation_pairs(lex, gcfg, cfg.n_translation_pairs), ensure_ascii=False).encode())
    return h.hexdigest()


# Pinned before the lexicon moved from Python tables to world/lexicon.tsv (issue 18): the
# generated corpus must stay token for token what it was, or every cached world and every
# study result changes. Update a hash only with a deliberate change of the generator (and
# a WORLD_VERSION bump).
_PINNED_CORPORA = [
    (dict(), "f282ca5953059653a2bd3878c23ef6018164402d9dfc71c3ff7c2ac645748832"),
    (dict(n_concepts=None, n_train_docs=300, n_eval_docs=50, n_translation_pairs=20),
     "6e1cb578bc2e76d41d6f4340efb73f2dcc4bcef800cd2f4288b3c3b14d0caa02"),
    (dict(languages=("en", "ja", "xx"), n_train_docs=300), "57a252d91d4e5568b6ac0a00de122cf11fc5bbbbd5f9734cb91c9f86562084a6"),
    (dict(codeswitch_rate=0.5, n_train_docs=300), "3468c8c5c91951b2cb6646951f332899a707c9a8f75863462dc6069d8b5e3a59"),
    (dict(disjoint=True, bilingual_share=0.0, n_train_docs=300),
     "5a245fb8237dfa66b60dc30da721b008a629126f124ad84beea2b33b8cfc88e9"),
]


@pytest.mark.parametrize(("overrides", "digest"), _PINNED_CORPORA, ids=["tiny", "default-lexicon", "trilingual",
                                                                        "codeswitch", "disjoint"])
def test_generated_corpus_is_pinned(overrides, digest):
    assert _corpus_digest(WorldConfig.tiny(**overrides)) == digest


def test_checkpoint_steps_log_spaced():
    s = checkpoint_steps(600, 10)
    assert len(s) == 10 and s[0] == 0 and s[-1] == 600 and s == sorted(set(s))
    assert s[1] <= 2 and s[5] < 60  # dense early
    assert checkpoint_steps(5, 10) == [0, 1, 2, 3, 4, 5]
    assert iter_dirname(42) == "iter_0000042"


# ------------------------------------------------------------------ the tiny world


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    cache = tmp_path_factory.mktemp("cache")
    return build_world(WorldConfig.tiny(), cache_dir=cache, progress=False)


@pytest.mark.slow
def test_corpus_schema_and_ground_truth_alignment(world):
    gt = world.ground_truth
    tok = world.tokenizer
    assert tok.bos_token_id == 1 and tok.unk_token_id == 0 and tok.eos_token_id == 2 and tok.pad_token_id == 3
    assert list(gt.index) == list(range(len(tok)))
    for split in ("train", "eval"):
        ds = world.corpus[split]
        assert set(ds.column_names) >= {"text", "lang", "doc_id", "input_ids", "concept_ids"}
        for row in ds.select(range(40)):
            ids, cids = row["input_ids"], row["concept_ids"]
            assert ids[0] == 1 and len(ids) == len(cids) <= world.config.context
            assert tok(row["text"])["input_ids"] == ids  # text round-trips through the tokenizer
            assert gt.loc[ids, "concept"].tolist() == cids
            langs = set(gt.loc[ids[1:], "lang"])
            if not row["bilingual"]:
                assert langs == {row["lang"]}
            else:
                assert langs == {"en", "ja"}
    assert not any(world.corpus["eval"]["bilingual"])
    share = np.mean(world.corpus["train"]["bilingual"])
    assert abs(share - world.config.bilingual_share) < 0.05
    assert set(world.translation_pairs.columns) == {"en", "ja"} and len(world.translation_pairs) > 0


@pytest.mark.slow
def test_every_concept_appears_in_both_languages(world):
    gt = world.ground_truth
    ids = np.concatenate([np.asarray(x) for x in world.corpus["train"]["input_ids"]])
    used = gt.loc[np.unique(ids)]
    used = used[used.concept >= 0]
    per_concept = used.groupby("concept")["lang"].agg(lambda s: set(s))
    all_concepts = set(gt.loc[gt.concept >= 0, "concept"])
    assert set(per_concept.index) == all_concepts
    assert all(v == {"en", "ja"} for v in per_concept)


@pytest.mark.slow
def test_loss_falls_and_catalogue_matches_dirs(world):
    cat = json.loads((world.root / "catalogue.json").read_text())
    its = [c["iteration"] for c in cat["checkpoints"]]
    dirs = sorted(int(p.name.split("_")[1]) for p in world.root.glob("iter_*"))
    assert dirs == its and len(its) >= 9 and its[0] == 0 and its[-1] == world.config.steps
    assert cat["tokens_per_iteration"] == world.config.batch_size * world.config.context
    assert all(c["tokens"] == c["iteration"] * cat["tokens_per_iteration"] for c in cat["checkpoints"])
    first, last = cat["checkpoints"][0]["loss"], cat["checkpoints"][-1]["loss"]
    assert last < 0.5 * first, (first, last)
    # uniform guess over the vocabulary is the loss scale at step 0
    assert abs(first - np.log(len(world.tokenizer))) < 0.5
    curve = world.loss_curve
    assert len(curve) == world.config.steps and curve.loss.iloc[-10:].mean() < curve.loss.iloc[:10].mean() - 1.0


@pytest.mark.slow
def test_checkpoints_load_with_plain_transformers(world):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = world.final_checkpoint
    model = AutoModelForCausalLM.from_pretrained(final)
    c = model.config
    assert c.model_type == "llama" and not c.tie_word_embeddings and c.rms_norm_eps == 1e-5
    assert c.rope_parameters["rope_theta"] == 10000.0 and not c.attention_bias and not c.mlp_bias
    assert not model.model.embed_tokens.weight.data_ptr() == model.lm_head.weight.data_ptr()
    assert all(not n.endswith("bias") for n, _ in model.named_parameters())
    tok = AutoTokenizer.from_pretrained(final)
    text = world.corpus["eval"][0]["text"]
    assert tok(text)["input_ids"] == world.corpus["eval"][0]["input_ids"]
    # the catalogue's held-out loss is reproduced by HF's own loss on the same windows
    ids = world.corpus["eval"]["input_ids"][:256]
    x = torch.full((len(ids), world.config.context), 3)
    for i, r in enumerate(ids):
        x[i, : len(r)] = torch.tensor(r)
    y = x.clone()
    y[x == 3] = -100
    with torch.no_grad():
        loss = float(model(input_ids=x, labels=y).loss)
    assert loss == pytest.approx(world.catalogue["checkpoints"][-1]["loss"], abs=2e-3)
    first = AutoModelForCausalLM.from_pretrained(world.checkpoints[0])
    assert not torch.equal(first.lm_head.weight, model.lm_head.weight)


@pytest.mark.slow
def test_final_model_continues_in_the_prompt_language(world):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(world.final_checkpoint).eval()
    gt = world.ground_truth
    ev = world.corpus["eval"]
    for lang in ("en", "ja"):
        rows = [r for r in ev.select(range(60)) if r["lang"] == lang][:8]
        prompts = torch.tensor([r["input_ids"][:6] for r in rows])  # BOS + 5 words
        with torch.no_grad():
            out = model.generate(prompts, max_new_tokens=12, do_sample=False, pad_token_id=3)
        # the current sentence is finished in the prompt's language. (After its end a
        # translation is a legitimate continuation: bilingual documents are in training.)
        end_ids = set(gt.index[gt.pos == "punct"]) & set(gt.index[gt.token.isin([".", "。"])])
        generated = []
        for row in out[:, 6:].tolist():
            cut = next((i for i, t in enumerate(row) if t in end_ids), len(row) - 1)
            generated += row[: cut + 1]
        langs = gt.loc[generated, "lang"]
        langs = langs[langs != ""]
        share = float((langs == lang).mean())
        assert len(langs) >= 8 and share >= 0.95, (lang, share, gt.loc[generated, "token"].tolist())
        # independent of greedy decoding: probability mass on the prompt language,
        # teacher-forced over the whole monolingual documents
        ids = torch.tensor([r["input_ids"][:24] for r in rows if len(r["input_ids"]) >= 24])
        with torch.no_grad():
            p = torch.softmax(model(input_ids=ids).logits, -1)  # (B, T, V)
        in_lang = torch.tensor((gt.lang == lang).to_numpy())
        mass = float(p[..., in_lang].sum(-1).mean())
        assert mass > 0.8, (lang, mass)


@pytest.mark.slow
def test_cache_hit_is_fast_and_config_changes_dir(world):
    cache = world.root.parents[1]
    t = time.perf_counter()
    again = build_world(WorldConfig.tiny(), cache_dir=cache, progress=False)
    assert again.from_cache and again.root == world.root
    assert time.perf_counter() - t < 5.0
    assert again.build_seconds == world.build_seconds  # no retraining happened
    assert world_dir(WorldConfig.tiny(seed=1), cache) != world.root
    assert world_dir(WorldConfig.tiny(bilingual_share=0.3), cache) != world.root
    assert world_dir(WorldConfig.tiny(threads=1), cache) == world.root  # runtime-only field


@pytest.mark.slow
def test_partial_build_is_detected_and_rebuilt(tmp_path):
    cfg = WorldConfig.tiny(n_train_docs=64, n_eval_docs=16, n_translation_pairs=4, steps=3, n_checkpoints=3)
    root = world_dir(cfg, tmp_path)
    (root / "iter_0000000").mkdir(parents=True)  # what a crash mid-build could leave
    (root / "world.json").write_text("{}")
    assert not is_complete(root)
    w = build_world(cfg, cache_dir=tmp_path, progress=False)
    assert not w.from_cache and is_complete(root)
    assert [p.name for p in w.checkpoints] == ["iter_0000000", "iter_0000001", "iter_0000003"]


def test_config_validation_and_thread_backoff(monkeypatch):
    from sae_bilingual.world import pretrain as pt

    with pytest.raises(ConfigError, match="bilingual_share"):
        WorldConfig(bilingual_share=1.5)
    with pytest.raises(ConfigError, match="n_heads"):
        WorldConfig(d_model=100, n_heads=3)
    with pytest.raises(ConfigError, match="languages"):
        WorldConfig(languages=("en",))
    with pytest.raises(ConfigError, match="valid languages"):
        build_lexicon(languages=("en", "zz"))
    monkeypatch.setattr(pt.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(pt.os, "getloadavg", lambda: (5.0, 5.0, 5.0))
    assert pt.effective_threads(2) == 1
    monkeypatch.setattr(pt.os, "getloadavg", lambda: (0.5, 0.5, 0.5))
    assert pt.effective_threads(2) == 2 and pt.effective_threads(1) == 1
