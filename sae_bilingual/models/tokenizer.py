"""Tokenizer loading: HF tokenizer files (dir or Hub repo) or a bare SentencePiece ``.model``.

Why a SentencePiece path: the LLM-jp tokenizer is published as
``llm-jp-tokenizer-100k.ver3.0b1.model``; in transformers 5 ``LlamaTokenizer(vocab_file=...)``
builds an empty 3-token tokenizer from such a file, and ``AutoTokenizer.from_pretrained`` of a
folder with only the ``.model`` builds a BPE tokenizer without SentencePiece's NFKC normaliser.
So we convert the SentencePiece proto with transformers's own ``SpmConverter``, following the
model's type (unigram, BPE, word, char), into a ``PreTrainedTokenizerFast`` that encodes like
``SentencePieceProcessor.encode`` and prepends BOS (id 1 for LLM-jp). It remembers its
``.model`` (:func:`sentencepiece_source`), and :func:`verify_sentencepiece` checks it on real
texts (the study's preflight does, on a sample of the corpus).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sentencepiece as spm
from tokenizers import models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

from sae_bilingual.errors import CheckpointError

log = logging.getLogger(__name__)

# HF special-token attribute -> piece names it may take in an LLM-jp-style .model file.
_SPECIAL_CANDIDATES = {
    "pad_token": ("<PAD>", "<PAD|LLM-jp>", "<pad>"),
    "cls_token": ("<CLS>", "<CLS|LLM-jp>"),
    "sep_token": ("<SEP>", "<SEP|LLM-jp>"),
    "mask_token": ("<MASK>", "<MASK|LLM-jp>", "<mask>"),
}


MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}
"""SentencePiece's ``TrainerSpec.model_type`` values."""
VERIFY_CHARS = 4096
"""Characters of each text that :func:`verify_sentencepiece` compares."""


def _backend(proto: Any, model_file: Path) -> Any:
    """The ``tokenizers`` pipeline of a SentencePiece model of any type.

    unigram and char: a Unigram model over the pieces and their scores (a char model's pieces
    are single characters, so the only segmentation is SentencePiece's). bpe: a BPE model whose
    merges are ranked by piece score. word: a WordLevel model over the pieces, the text split
    before each "▁"; SentencePiece fuses a run of unknown words into one ``<unk>`` and a
    tokenizers pipeline cannot, so there a text with two unknown words in a row tokenises
    differently (:func:`verify_sentencepiece` finds it).
    """
    kind = MODEL_TYPES.get(int(proto.trainer_spec.model_type))
    if kind is None:
        raise CheckpointError(f"{model_file}: unknown SentencePiece model_type {proto.trainer_spec.model_type}; "
                              f"this loader reads {sorted(MODEL_TYPES.values())}")
    ids = {p.piece: i for i, p in enumerate(proto.pieces)}
    vocab: Any = ids if kind == "bpe" else [(p.piece, p.score) for p in proto.pieces]
    # legacy=True doubles a leading "▁" like SentencePiece's dummy prefix does; checked
    # against SentencePieceProcessor on the small_parallel_enja test set in the tests.
    backend = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, legacy=True)
    if backend is None:
        raise CheckpointError(f"{model_file} is not a SentencePiece model this loader can convert")
    if kind == "word":
        backend.model = models.WordLevel(ids, unk_token=proto.trainer_spec.unk_piece)
        split = pre_tokenizers.Split("▁", behavior="merged_with_next")
        backend.pre_tokenizer = pre_tokenizers.Sequence([p for p in (backend.pre_tokenizer, split) if p is not None])
    return backend


def sentencepiece_tokenizer(model_file: str | Path) -> Any:
    """A ``PreTrainedTokenizerFast`` equivalent to a SentencePiece ``.model`` plus BOS first."""
    model_file = Path(model_file)
    sentencepiece_pb2: Any = import_protobuf()  # protobuf modules generated at run time: no stubs
    proto = sentencepiece_pb2.ModelProto()
    try:
        proto.ParseFromString(model_file.read_bytes())
    except Exception as e:  # protobuf's DecodeError has no stable import path
        raise CheckpointError(f"{model_file} is not a SentencePiece model ({e}); give the tokenizer's .model "
                              "file, or an HF tokenizer directory") from e
    pieces = [p.piece for p in proto.pieces]
    backend = _backend(proto, model_file)
    ts = proto.trainer_spec

    def piece(i: int) -> str | None:
        return pieces[i] if 0 <= i < len(pieces) else None

    kwargs: dict[str, Any] = {
        "unk_token": piece(ts.unk_id),
        "bos_token": piece(ts.bos_id),
        "eos_token": piece(ts.eos_id),
    }
    present = set(pieces)
    for attr, names in _SPECIAL_CANDIDATES.items():
        for n in names:
            if n in present:
                kwargs[attr] = n
                break
    if ts.pad_id >= 0 and piece(ts.pad_id):
        kwargs["pad_token"] = piece(ts.pad_id)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        add_bos_token=kwargs.get("bos_token") is not None,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        **kwargs,
    )
    # TransformerLens's set_tokenizer reads init_kwargs["name_or_path"] (KeyError without it).
    tok.name_or_path = str(model_file)
    tok.init_kwargs["name_or_path"] = str(model_file)
    tok.sentencepiece_model_file = model_file  # not saved by save_pretrained; see sentencepiece_source
    tok.sentencepiece_model_type = MODEL_TYPES[int(ts.model_type)]
    return tok


def sentencepiece_source(tokenizer: PreTrainedTokenizerBase) -> Path | None:
    """The ``.model`` a tokenizer was converted from by :func:`sentencepiece_tokenizer`, else None."""
    p = getattr(tokenizer, "sentencepiece_model_file", None)
    return Path(p) if p is not None else None


@dataclass(frozen=True)
class TokenizerCheck:
    """How a tokenizer compares with SentencePiece on some texts."""

    n_texts: int
    n_differ: int
    example: str | None = None
    """The first text that tokenises differently (None when all agree)."""
    ours: tuple[str, ...] = ()
    theirs: tuple[str, ...] = ()
    """Its first pieces under the tokenizer / under SentencePiece."""


def compare_with_sentencepiece(tokenizer: PreTrainedTokenizerBase, model_file: str | Path, texts: Sequence[str]) -> TokenizerCheck:
    """Token ids of ``tokenizer`` (no special tokens) against ``SentencePieceProcessor.encode``."""
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    texts = [t[:VERIFY_CHARS] for t in texts]
    ours = tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []
    theirs = sp.encode(list(texts)) if texts else []
    bad = [i for i, (a, b) in enumerate(zip(ours, theirs)) if list(a) != list(b)]
    if not bad:
        return TokenizerCheck(len(texts), 0)
    i = bad[0]
    return TokenizerCheck(len(texts), len(bad), texts[i], tuple(tokenizer.convert_ids_to_tokens(ours[i])[:12]),
                          tuple(sp.id_to_piece(x) for x in theirs[i][:12]))


def verify_sentencepiece(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], *, where: str = "the tokenizer",
                         model_file: str | Path | None = None) -> TokenizerCheck:
    """Refuse a tokenizer that tokenises any of ``texts`` unlike its SentencePiece source.

    ``model_file``: the source (default: :func:`sentencepiece_source`; nothing to check without one).
    """
    src = Path(model_file) if model_file is not None else sentencepiece_source(tokenizer)
    if src is None:
        return TokenizerCheck(0, 0)
    c = compare_with_sentencepiece(tokenizer, src, texts)
    if c.n_differ:
        kind = getattr(tokenizer, "sentencepiece_model_type", "?")
        why = (" (a word model: SentencePiece fuses a run of unknown words into one <unk>, which an HF "
               "tokenizer cannot)" if kind == "word" else "")
        raise CheckpointError(
            f"{where} tokenises {c.n_differ} of {c.n_texts} corpus texts differently from SentencePiece "
            f"({src}, model type {kind}){why}; e.g. {(c.example or '')[:80]!r}: ours {list(c.ours)} vs SentencePiece "
            f"{list(c.theirs)}. The study would feed the model ids it was not trained on. Give an HF "
            "tokenizer directory that encodes like the model's training tokenizer (README, 'Tokenizers')")
    return c


def load_tokenizer(path_or_repo: str | Path, *, revision: str | None = None) -> Any:
    """Load a tokenizer from an HF tokenizer dir / Hub repo, or a SentencePiece ``.model`` file.

    A directory holding only a ``*.model`` file (no tokenizer.json) is read as SentencePiece.
    ``trust_remote_code`` is never enabled.
    """
    p = Path(path_or_repo).expanduser()
    if p.is_file():
        if p.suffix == ".model":
            return sentencepiece_tokenizer(p)
        if p.name == "tokenizer.json":
            return PreTrainedTokenizerFast(tokenizer_file=str(p))
        raise CheckpointError(
            f"{p} is a file but not a SentencePiece .model or tokenizer.json; pass a tokenizer "
            "directory, a .model file or a Hub repo id"
        )
    if p.is_dir():
        models = sorted(p.glob("*.model"))
        if not (p / "tokenizer.json").exists() and models:
            return sentencepiece_tokenizer(models[0])
        try:
            return AutoTokenizer.from_pretrained(str(p), trust_remote_code=False)
        except Exception as e:
            raise CheckpointError(
                f"cannot load a tokenizer from {p}: {e}. The directory needs tokenizer.json + "
                "tokenizer_config.json (HF) or a SentencePiece .model file"
            ) from e
    if str(path_or_repo).count("/") != 1 or str(path_or_repo).startswith((".", "/", "~")):
        raise CheckpointError(
            f"tokenizer source {str(path_or_repo)!r} does not exist and is not a Hub repo id "
            "('owner/name'); check the path"
        )
    return AutoTokenizer.from_pretrained(str(path_or_repo), revision=revision, trust_remote_code=False)
