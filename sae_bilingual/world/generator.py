"""Bilingual toy-world corpus generator: a lexicon of concepts, a grammar, ground truth.

Why: the paper asks which SAE features are English-only, Japanese-only or bilingual. On a
real corpus "same meaning" can only be approximated (embedding clusters). Here every
content word is a surface form of a known concept, so each token's language and meaning
are exact and an analysis can be scored against them.

Structure (so a third language can be added later):

* ``LEXICON``: one list of :class:`Concept` (the meaning inventory, language-free:
  key, part of speech, selectional attributes) plus, per language, a dict
  ``FORMS[lang][concept_key] -> {form_name: surface}`` and ``FUNCTION_WORDS[lang]``.
* A :class:`Frame` is a language-free sentence meaning (predicate, arguments, tense...).
  ``REALIZERS[lang](frame, style)`` linearises it into ``[(token, concept_id), ...]``
  with that language's word order: English SVO, Japanese SOV with particles
  (は/が/を/に/で/の/まで), verb forms (plain/polite, past), counters.
* Documents: BOS + sentences of one language up to ``max_doc_tokens`` tokens, or
  (``bilingual_share`` of them) translation pairs of the same frame in both languages,
  the order alternating from pair to pair.

A third language ships: ``"xx"``, a made-up VSO language with one syllable-built word
per concept (derived from a hash of the concept key) and its own particles, so that
``WorldConfig(languages=("en", "ja", "xx"))`` builds a trilingual world.

Adding a language: add its forms in ``build_lexicon``, ``FUNCTION_WORDS[code]`` and a
realizer in ``REALIZERS``; nothing else is keyed on exactly two languages.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from sae_bilingual.errors import ConfigError
from sae_bilingual.world.variants import CodeSwitcher, disjoint_lexicons

log = logging.getLogger(__name__)

NO_CONCEPT = -1

# --------------------------------------------------------------------------------------
# Lexicon. One line per concept: "key | english forms | japanese forms | attrs".
# --------------------------------------------------------------------------------------
# Nouns: en "singular plural", ja "form".  Verbs: en "base 3sg past", ja "dict stem ta"
# (polite = stem+ます / stem+ました).  Adjectives: ja type i|na.  Times: en phrase words
# before "_" are a preposition, ja particle after "_".

_NAMES = """
taro|Taro|太郎
hanako|Hanako|花子
ken|Ken|健
yuki|Yuki|雪子
sakura|Sakura|さくら
hiroshi|Hiroshi|博
aiko|Aiko|愛子
kenji|Kenji|健二
mary|Mary|メアリー
john|John|ジョン
emma|Emma|エマ
tom|Tom|トム
lucy|Lucy|ルーシー
david|David|デビッド
anna|Anna|アンナ
mike|Mike|マイク
sarah|Sarah|サラ
paul|Paul|ポール
nana|Nana|奈々
jiro|Jiro|次郎
"""

_ROLES = """
teacher|teacher teachers|先生
student|student students|学生
doctor|doctor doctors|医者
mother|mother mothers|母
father|father fathers|父
friend|friend friends|友達
child|child children|子供
girl|girl girls|少女
boy|boy boys|少年
chef|chef chefs|料理人
farmer|farmer farmers|農家
police|officer officers|警官
singer|singer singers|歌手
driver|driver drivers|運転手
artist|artist artists|画家
king|king kings|王様
nurse|nurse nurses|看護師
baby|baby babies|赤ちゃん
grandmother|grandmother grandmothers|祖母
neighbor|neighbor neighbors|隣人
"""

_ANIMALS = """
dog|dog dogs|犬
cat|cat cats|猫
bird|bird birds|鳥
fish|fish fish|魚
horse|horse horses|馬
cow|cow cows|牛
pig|pig pigs|豚
rabbit|rabbit rabbits|うさぎ
mouse|mouse mice|ねずみ
bear|bear bears|熊
monkey|monkey monkeys|猿
elephant|elephant elephants|象
lion|lion lions|ライオン
tiger|tiger tigers|虎
fox|fox foxes|狐
duck|duck ducks|アヒル
frog|frog frogs|蛙
snake|snake snakes|蛇
sheep|sheep sheep|羊
turtle|turtle turtles|亀
"""

_FOODS = """
apple|apple apples|りんご
banana|banana bananas|バナナ
bread|bread breads|パン
rice|rice rices|ご飯
egg|egg eggs|卵
cake|cake cakes|ケーキ
orange|orange oranges|みかん
meat|meat meats|肉
soup|soup soups|スープ
noodle|noodle noodles|麺
sushi|sushi sushis|寿司
cheese|cheese cheeses|チーズ
tomato|tomato tomatoes|トマト
potato|potato potatoes|じゃがいも
carrot|carrot carrots|にんじん
peach|peach peaches|桃
grape|grape grapes|ぶどう
cookie|cookie cookies|クッキー
sandwich|sandwich sandwiches|サンドイッチ
salad|salad salads|サラダ
"""

_DRINKS = """
water|water waters|水
tea|tea teas|お茶
milk|milk milks|牛乳
coffee|coffee coffees|コーヒー
juice|juice juices|ジュース
beer|beer beers|ビール
wine|wine wines|ワイン
sake|sake sakes|酒
cola|cola colas|コーラ
soda|soda sodas|ソーダ
"""

_READABLES = """
book|book books|本
letter|letter letters|手紙
newspaper|newspaper newspapers|新聞
magazine|magazine magazines|雑誌
novel|novel novels|小説
poem|poem poems|詩
report|report reports|報告書
story|story stories|物語
map|map maps|地図
dictionary|dictionary dictionaries|辞書
"""

_OBJECTS = """
pen|pen pens|ペン
pencil|pencil pencils|鉛筆
bag|bag bags|かばん
box|box boxes|箱
chair|chair chairs|椅子
table|table tables|机
cup|cup cups|コップ
plate|plate plates|皿
knife|knife knives|ナイフ
key|key keys|鍵
door|door doors|ドア
window|window windows|窓
clock|clock clocks|時計
phone|phone phones|電話
computer|computer computers|パソコン
camera|camera cameras|カメラ
umbrella|umbrella umbrellas|傘
hat|hat hats|帽子
shoe|shoe shoes|靴
shirt|shirt shirts|シャツ
ball|ball balls|ボール
car|car cars|車
bicycle|bicycle bicycles|自転車
flower|flower flowers|花
tree|tree trees|木
picture|picture pictures|絵
ticket|ticket tickets|切符
toy|toy toys|おもちゃ
bottle|bottle bottles|瓶
guitar|guitar guitars|ギター
"""

_PLACES = """
park|park parks|公園|in
station|station stations|駅|at
school|school schools|学校|at
library|library libraries|図書館|in
hospital|hospital hospitals|病院|at
house|house houses|家|in
garden|garden gardens|庭|in
kitchen|kitchen kitchens|台所|in
river|river rivers|川|at
mountain|mountain mountains|山|on
sea|sea seas|海|at
beach|beach beaches|浜辺|on
store|store stores|店|at
market|market markets|市場|at
restaurant|restaurant restaurants|レストラン|at
office|office offices|会社|at
room|room rooms|部屋|in
city|city cities|町|in
village|village villages|村|in
forest|forest forests|森|in
bridge|bridge bridges|橋|on
temple|temple temples|寺|at
airport|airport airports|空港|at
zoo|zoo zoos|動物園|at
hotel|hotel hotels|ホテル|at
bank|bank banks|銀行|at
museum|museum museums|博物館|at
farm|farm farms|農場|on
lake|lake lakes|湖|at
classroom|classroom classrooms|教室|in
tokyo|Tokyo Tokyo|東京|in
osaka|Osaka Osaka|大阪|in
kyoto|Kyoto Kyoto|京都|in
london|London London|ロンドン|in
paris|Paris Paris|パリ|in
japan|Japan Japan|日本|in
america|America America|アメリカ|in
china|China China|中国|in
island|island islands|島|on
castle|castle castles|城|at
"""

# Transitive verbs: attrs = object classes (food drink readable object animal person),
# "+ditr" = also takes a recipient (give X to Y / YにXを).
_VERBS_TR = """
eat|eat eats ate|食べる 食べ 食べた|food
drink|drink drinks drank|飲む 飲み 飲んだ|drink
read|read reads read|読む 読み 読んだ|readable
write|write writes wrote|書く 書き 書いた|readable
buy|buy buys bought|買う 買い 買った|food drink readable object
sell|sell sells sold|売る 売り 売った|food drink readable object animal
see|see sees saw|見る 見 見た|object animal person place readable
make|make makes made|作る 作り 作った|food object
wash|wash washes washed|洗う 洗い 洗った|object food animal
carry|carry carries carried|運ぶ 運び 運んだ|object food drink readable
find|find finds found|見つける 見つけ 見つけた|object animal readable
open|open opens opened|開ける 開け 開けた|object readable
close|close closes closed|閉める 閉め 閉めた|object readable
break|break breaks broke|壊す 壊し 壊した|object
use|use uses used|使う 使い 使った|object
draw|draw draws drew|描く 描き 描いた|animal object person place
love|love loves loved|愛する 愛し 愛した|person animal
help|help helps helped|助ける 助け 助けた|person animal
call|call calls called|呼ぶ 呼び 呼んだ|person animal
meet|meet meets met|会う 会い 会った|person
teach|teach teaches taught|教える 教え 教えた|readable|ditr
give|give gives gave|あげる あげ あげた|food drink readable object animal|ditr
send|send sends sent|送る 送り 送った|readable object food|ditr
show|show shows showed|見せる 見せ 見せた|readable object animal|ditr
lend|lend lends lent|貸す 貸し 貸した|readable object|ditr
cook|cook cooks cooked|煮る 煮 煮た|food
cut|cut cuts cut|切る 切り 切った|food object
throw|throw throws threw|投げる 投げ 投げた|object food
catch|catch catches caught|捕まえる 捕まえ 捕まえた|animal object
hold|hold holds held|持つ 持ち 持った|object food drink readable animal
lose|lose loses lost|なくす なくし なくした|object readable
pick|pick picks picked|拾う 拾い 拾った|object food
paint|paint paints painted|塗る 塗り 塗った|object
clean|clean cleans cleaned|掃除する 掃除し 掃除した|object place
visit|visit visits visited|訪ねる 訪ね 訪ねた|person place
order|order orders ordered|注文する 注文し 注文した|food drink readable object
choose|choose chooses chose|選ぶ 選び 選んだ|food drink readable object animal
hide|hide hides hid|隠す 隠し 隠した|object food readable
borrow|borrow borrows borrowed|借りる 借り 借りた|readable object
want|want wants wanted|欲しがる 欲しがり 欲しがった|food drink readable object animal
"""

# Motion verbs: "SUBJ went to PLACE" / "SUBJ は PLACE に 行った". attr = ja particle.
_VERBS_MOTION = """
go|go goes went|行く 行き 行った|に
come|come comes came|来る 来 来た|に
return|return returns returned|帰る 帰り 帰った|に
walk|walk walks walked|歩く 歩き 歩いた|まで
run|run runs ran|走る 走り 走った|まで
drive|drive drives drove|運転する 運転し 運転した|まで
fly|fly flies flew|飛ぶ 飛び 飛んだ|まで
hurry|hurry hurries hurried|急ぐ 急ぎ 急いだ|に
move|move moves moved|引っ越す 引っ越し 引っ越した|に
travel|travel travels traveled|旅行する 旅行し 旅行した|に
"""

_VERBS_INTR = """
sleep|sleep sleeps slept|寝る 寝 寝た
work|work works worked|働く 働き 働いた
study|study studies studied|勉強する 勉強し 勉強した
swim|swim swims swam|泳ぐ 泳ぎ 泳いだ
play|play plays played|遊ぶ 遊び 遊んだ
sing|sing sings sang|歌う 歌い 歌った
dance|dance dances danced|踊る 踊り 踊った
laugh|laugh laughs laughed|笑う 笑い 笑った
cry|cry cries cried|泣く 泣き 泣いた
wait|wait waits waited|待つ 待ち 待った
rest|rest rests rested|休む 休み 休んだ
sit|sit sits sat|座る 座り 座った
talk|talk talks talked|話す 話し 話した
jump|jump jumps jumped|跳ぶ 跳び 跳んだ
shop|shop shops shopped|買い物する 買い物し 買い物した
"""

_ADJECTIVES = """
big|big|大きい|i
small|small|小さい|i
new|new|新しい|i
old|old|古い|i
long|long|長い|i
short|short|短い|i
hot|hot|熱い|i
cold|cold|冷たい|i
good|good|良い|i
bad|bad|悪い|i
beautiful|beautiful|美しい|i
delicious|delicious|おいしい|i
expensive|expensive|高い|i
cheap|cheap|安い|i
heavy|heavy|重い|i
light|light|軽い|i
fast|fast|速い|i
strong|strong|強い|i
cute|cute|かわいい|i
young|young|若い|i
quiet|quiet|静か|na
famous|famous|有名|na
pretty|pretty|きれい|na
kind|kind|親切|na
lively|lively|にぎやか|na
tidy|tidy|清潔|na
healthy|healthy|元気|na
convenient|convenient|便利|na
important|important|大切|na
strange|strange|変|na
red|red|赤い|i
blue|blue|青い|i
white|white|白い|i
black|black|黒い|i
yellow|yellow|黄色い|i
green|green|緑|na_no
brown|brown|茶色い|i
pink|pink|ピンク|na_no
dark|dark|暗い|i
bright|bright|明るい|i
"""

_NUMBERS = """
one|one|一
two|two|二
three|three|三
four|four|四
five|five|五
six|six|六
seven|seven|七
eight|eight|八
nine|nine|九
ten|ten|十
eleven|eleven|十一
twelve|twelve|十二
thirteen|thirteen|十三
fourteen|fourteen|十四
fifteen|fifteen|十五
sixteen|sixteen|十六
seventeen|seventeen|十七
eighteen|eighteen|十八
nineteen|nineteen|十九
twenty|twenty|二十
"""

# Times: en "[prep_]word", ja "word[_particle]", attr = tense constraint (past/future/any).
_TIMES = """
yesterday|yesterday|昨日|past
today|today|今日|any
tomorrow|tomorrow|明日|future
morning|in_the_morning|朝|any
evening|in_the_evening|夕方|any
night|at_night|夜_に|any
noon|at_noon|昼_に|any
monday|on_Monday|月曜日_に|any
tuesday|on_Tuesday|火曜日_に|any
wednesday|on_Wednesday|水曜日_に|any
thursday|on_Thursday|木曜日_に|any
friday|on_Friday|金曜日_に|any
saturday|on_Saturday|土曜日_に|any
sunday|on_Sunday|日曜日_に|any
spring|in_spring|春_に|any
summer|in_summer|夏_に|any
autumn|in_autumn|秋_に|any
winter|in_winter|冬_に|any
lastweek|last_week|先週|past
nextmonth|next_month|来月|future
lastyear|last_year|去年|past
later|later|後で|future
weekend|on_the_weekend|週末_に|any
holiday|on_holiday|休日_に|any
christmas|at_Christmas|クリスマス_に|any
"""

_ADVERBS = """
quickly|quickly|速く
slowly|slowly|ゆっくり
often|often|よく
always|always|いつも
sometimes|sometimes|時々
again|again|また
together|together|一緒に
alone|alone|一人で
quietly|quietly|静かに
happily|happily|楽しく
"""

# (table, pos, noun class) in the order concepts are numbered; ``n_concepts`` takes a
# proportional share of every category so a small world keeps the full grammar.
_CATEGORIES: list[tuple[str, str, str]] = [
    (_NAMES, "name", "person"),
    (_ROLES, "person", "person"),
    (_ANIMALS, "animal", "animal"),
    (_FOODS, "food", "food"),
    (_DRINKS, "drink", "drink"),
    (_READABLES, "readable", "readable"),
    (_OBJECTS, "object", "object"),
    (_PLACES, "place", "place"),
    (_VERBS_TR, "verb", ""),
    (_VERBS_MOTION, "verb_motion", ""),
    (_VERBS_INTR, "verb_intrans", ""),
    (_ADJECTIVES, "adj", ""),
    (_NUMBERS, "number", ""),
    (_TIMES, "time", ""),
    (_ADVERBS, "adverb", ""),
]

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
    # "xx": a made-up VSO language (see _xx_word / realize_xx). Particles are chosen so
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


def _parse_table(table: str) -> list[list[str]]:
    return [line.split("|") for line in table.strip().splitlines() if line.strip()]


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


def build_lexicon(n_concepts: int | None = None, languages: Sequence[str] = ("en", "ja")) -> Lexicon:
    """The concept inventory, optionally cut to ``n_concepts`` (a share of each category).

    Why a share per category: a small world for tests keeps every template usable.
    """
    for lang in languages:
        if lang not in FUNCTION_WORDS:
            raise ConfigError(
                f"language {lang!r} has no lexicon; valid languages: {sorted(FUNCTION_WORDS)}. "
                "Add FORMS/FUNCTION_WORDS/REALIZERS entries in sae_bilingual/world/generator.py to support it."
            )
    rows = [(pos, ncls, r) for table, pos, ncls in _CATEGORIES for r in _parse_table(table)]
    total = len(rows)
    if n_concepts is None or n_concepts >= total:
        keep = rows
    else:
        if n_concepts < 3 * len(_CATEGORIES):
            raise ConfigError(
                f"n_concepts={n_concepts} is too small: need at least {3 * len(_CATEGORIES)} "
                f"(3 per category) and at most {total}."
            )
        frac = n_concepts / total
        keep = []
        for table, pos, ncls in _CATEGORIES:
            rs = _parse_table(table)
            k = max(3, int(round(len(rs) * frac)))
            keep.extend((pos, ncls, r) for r in rs[:k])
    concepts: list[Concept] = []
    forms: dict[str, dict[str, dict[str, str]]] = {"en": {}, "ja": {}}
    for pos, ncls, r in keep:
        key, en, ja, *attrs = r
        ditr = "ditr" in attrs
        attrs = [a for a in attrs if a != "ditr"]
        flat_attrs: list[str] = []
        for a in attrs:
            flat_attrs.extend(a.split())
        if pos == "time":
            flat_attrs = [attrs[0], en, ja]  # tense, raw en phrase, raw ja phrase
        if pos == "place":
            flat_attrs = [attrs[0]]  # English preposition for "in the park"
        c = Concept(len(concepts), key, pos, ncls, tuple(flat_attrs), ditr)
        concepts.append(c)
        f_en, f_ja = _forms_for(pos, en, ja, flat_attrs)
        forms["en"][key] = f_en
        forms["ja"][key] = f_ja
        forms.setdefault("xx", {})[key] = {"base": _xx_lexicon()[key]}
    return Lexicon(
        concepts,
        {lang: forms[lang] for lang in languages},
        {lang: FUNCTION_WORDS[lang] for lang in languages},
    )


# The pseudo-language "xx": one made-up word per concept from syllables, derived from a
# hash of the concept key (so a word never depends on n_concepts or the seed), VSO order.
_XX_ONSETS = "b d g k l m n p r s t v z"
_XX_VOWELS = "a e i o u"
_XX_WORDS: dict[str, str] = {}


def _xx_lexicon() -> dict[str, str]:
    """concept key -> xx word, for the whole inventory (built once, deterministic).

    Words are 2-3 CV syllables; a word that equals another concept's word, an English or
    Japanese surface form, or an xx function word is redrawn from the next hash.
    """
    if _XX_WORDS:
        return _XX_WORDS
    import hashlib

    syll = [o + v for o in _XX_ONSETS.split() for v in _XX_VOWELS.split()]
    taken = set(FUNCTION_WORDS["en"]) | set(FUNCTION_WORDS["ja"]) | set(FUNCTION_WORDS["xx"])
    rows = [(pos, r) for table, pos, _ in _CATEGORIES for r in _parse_table(table)]
    for _pos, r in rows:
        for col in r[1:3]:
            taken.update(col.replace("_", " ").split())
    out: dict[str, str] = {}
    for _pos, r in rows:
        key, salt = r[0], 0
        while True:
            h = hashlib.sha256(f"xx:{key}:{salt}".encode()).digest()
            n = 2 + h[0] % 2
            word = "".join(syll[h[1 + i] % len(syll)] for i in range(n))
            if word not in taken:
                break
            salt += 1
        taken.add(word)
        out[key] = word
    _XX_WORDS.update(out)
    return _XX_WORDS


def n_lexicon_concepts() -> int:
    """Size of the full concept inventory."""
    return sum(len(_parse_table(t)) for t, _, _ in _CATEGORIES)


# --------------------------------------------------------------------------------------
# Frames (language-free meanings) and realizers (one per language)
# --------------------------------------------------------------------------------------


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
    if fr.kind == "existence":
        plural = fr.subj.number is not None and fr.subj.number.key != "one"
        be = {"past": "were" if plural else "was"}.get(fr.tense, "are" if plural else "is")
        out += [_f("there"), _f(be)] + _en_np(lex, fr.subj, article="a") + _en_place(lex, fr.place)
    elif fr.kind == "predicate":
        be = "is"  # predicates are present tense in this grammar (no adjective past forms)
        out += _en_np(lex, fr.subj) + [_f(be), (lex.forms["en"][fr.adj.key]["base"], fr.adj.id)]
    else:
        out += _en_np(lex, fr.subj) + _en_verb(lex, fr.verb, fr.tense)
        if fr.kind == "transitive":
            out += _en_np(lex, fr.obj)
        elif fr.kind == "ditransitive":
            out += _en_np(lex, fr.obj) + [_f("to")] + _en_np(lex, fr.recipient)
        elif fr.kind == "motion":
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
    if fr.kind == "existence":
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
        out += _ja_np(lex, fr.recipient) + [_f("に")]
    if fr.kind in ("transitive", "ditransitive"):
        out += _ja_np(lex, fr.obj) + [_f("を")] + _ja_quantity(lex, fr.obj)
    if fr.kind == "motion":
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
    if fr.kind == "existence":
        out += tense + [_f("dau")] + _xx_np(lex, fr.subj) + [_f("mo"), (F[fr.place.key]["base"], fr.place.id)]
    elif fr.kind == "predicate":
        out += [_f("ul"), (F[fr.adj.key]["base"], fr.adj.id)] + _xx_np(lex, fr.subj)
    else:
        out += tense + [(F[fr.verb.key]["base"], fr.verb.id)] + _xx_np(lex, fr.subj)
        if fr.kind in ("transitive", "ditransitive"):
            out += [_f("ko")] + _xx_np(lex, fr.obj)
        if fr.kind == "ditransitive":
            out += [_f("ri")] + _xx_np(lex, fr.recipient)
        if fr.kind == "motion":
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


# --------------------------------------------------------------------------------------
# Sampling frames and documents
# --------------------------------------------------------------------------------------


@dataclass
class GeneratorConfig:
    """Knobs of the corpus generator (a subset of WorldConfig)."""

    seed: int = 0
    """Random seed: the same seed and config give the same corpus."""
    n_concepts: int | None = None
    """Number of concepts (None = the whole lexicon, 335)."""
    languages: tuple[str, ...] = ("en", "ja")
    """Language codes; each needs a lexicon and realizer in generator.py."""
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
