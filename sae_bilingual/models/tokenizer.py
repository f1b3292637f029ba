"""Tokenizer loading: HF tokenizer files (dir or Hub repo) or a bare SentencePiece ``.model``.

Why a SentencePiece path: the LLM-jp tokenizer is published as
``llm-jp-tokenizer-100k.ver3.0b1.model``; in transformers 5 ``LlamaTokenizer(vocab_file=...)``
no longer reads such a file (it is a BPE ``tokenizers`` backend), so we convert the
SentencePiece proto with transformers's own ``SpmConverter`` into a
``PreTrainedTokenizerFast`` that encodes exactly like ``SentencePieceProcessor.encode`` and
prepends BOS (id 1 for LLM-jp).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerFast
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


def sentencepiece_tokenizer(model_file: str | Path) -> Any:
    """A ``PreTrainedTokenizerFast`` equivalent to a SentencePiece ``.model`` plus BOS first."""
    model_file = Path(model_file)
    proto = import_protobuf().ModelProto()
    proto.ParseFromString(model_file.read_bytes())
    pieces = [p.piece for p in proto.pieces]
    vocab = [(p.piece, p.score) for p in proto.pieces]
    # legacy=True doubles a leading "▁" like SentencePiece's dummy prefix does; checked
    # against SentencePieceProcessor on the small_parallel_enja test set in the tests.
    backend = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, legacy=True)
    if backend is None:
        raise CheckpointError(f"{model_file} is not a SentencePiece model this loader can convert")
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
    return tok


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
