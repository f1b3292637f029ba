"""Sparse SAE codes of an evaluation set: the TopK indices and values of every vector.

Feature analysis never needs the dense [M, n_latents] activation matrix: each vector
selects only K features, so a `Codes` object ([M, K] indices + values, plus the label of
every vector) is all the analysis reads. It is saved once per (checkpoint, layer) unit as
``codes.safetensors`` (values in float32, exactly what the analysis read) so that the
analysis can be rerun from disk with other options and give the same table. (fp16 would
halve the file but move values across the 0.7 x max threshold.)
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from sae_bilingual.errors import DataError, SAEFileError
from sae_bilingual.io import atomic_save_safetensors

log = logging.getLogger(__name__)

CODES_FORMAT = "sae_bilingual.codes"
"""The format tag in a codes file's metadata (a file format name, kept across module moves)."""
CODES_FORMAT_VERSION = "2"
"""2: values stored as float32 (1: fp16, still readable)."""
_LABEL_FIELDS = ("token_id", "lang", "doc_id", "position")


def _as_np(x: Any, dtype: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x), dtype=dtype)


@dataclass
class Codes:
    """TopK codes of M vectors and the labels of each vector (numpy arrays)."""

    idx: np.ndarray
    """int32 [M, K]: feature ids selected by the TopK for each vector."""
    val: np.ndarray
    """float32 [M, K]: their activations (float32 on disk too)."""
    token_id: np.ndarray
    """int64 [M]: token id at that position."""
    lang: np.ndarray
    """int64 [M]: document language, index into `languages`."""
    doc_id: np.ndarray
    """int64 [M]: document id (spans never cross documents)."""
    position: np.ndarray
    """int64 [M]: position of the token inside its document."""
    languages: tuple[str, ...] = ("en", "ja")
    """language codes that `lang` indexes."""
    metadata: dict[str, str] = field(default_factory=dict)
    """free-form provenance (hook, checkpoint...), saved with the file."""

    @classmethod
    def of(cls, idx: torch.Tensor | np.ndarray, val: torch.Tensor | np.ndarray, labels: Any,
           languages: tuple[str, ...], metadata: dict[str, str] | None = None) -> Codes:
        """From TopK output (tensors or arrays) and per-row labels (a ``Labels``: token_id, lang, doc_id, position)."""
        token_id, lang, doc_id, position = (_as_np(getattr(labels, f), np.int64) for f in _LABEL_FIELDS)
        return cls(_as_np(idx, np.int32), _as_np(val, np.float32), token_id, lang, doc_id, position,
                   tuple(languages), dict(metadata or {}))

    def __post_init__(self) -> None:
        self.idx = _as_np(self.idx, np.int32)
        self.val = _as_np(self.val, np.float32)
        for name in _LABEL_FIELDS:
            setattr(self, name, _as_np(getattr(self, name), np.int64))
        self.languages = tuple(self.languages)
        if self.idx.ndim != 2 or self.idx.shape != self.val.shape:
            raise DataError(
                f"Codes.idx {self.idx.shape} and Codes.val {self.val.shape} must both be [M, K]; "
                "pass the (idx, val) pair returned by encode_topk unchanged."
            )
        m = self.idx.shape[0]
        for name in _LABEL_FIELDS:
            arr = getattr(self, name)
            if arr.shape != (m,):
                raise DataError(
                    f"Codes.{name} has shape {arr.shape} but there are {m} code vectors; "
                    "labels must hold one entry per vector (same order as the vectors)."
                )
        if len(self.languages) == 0:
            raise DataError("Codes.languages is empty; pass the language codes, e.g. ('en', 'ja').")
        if m and (self.lang.min() < 0 or self.lang.max() >= len(self.languages)):
            raise DataError(
                f"Codes.lang holds values outside 0..{len(self.languages) - 1} "
                f"(languages={self.languages}); lang must index into `languages`."
            )

    @property
    def n(self) -> int:
        """Number of code vectors M."""
        return int(self.idx.shape[0])

    @property
    def k(self) -> int:
        """Features selected per vector K."""
        return int(self.idx.shape[1])

    def subset(self, rows: np.ndarray) -> Codes:
        """Codes of a subset (or permutation) of the vectors."""
        return Codes(
            self.idx[rows], self.val[rows], self.token_id[rows], self.lang[rows],
            self.doc_id[rows], self.position[rows], self.languages, dict(self.metadata),
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write to safetensors atomically (languages and provenance in the metadata)."""
        meta = {str(k): str(v) for k, v in self.metadata.items()}
        meta.update(format=CODES_FORMAT, version=CODES_FORMAT_VERSION,
                    languages=json.dumps(list(self.languages)))
        tensors = {
            "idx": torch.from_numpy(self.idx),
            "val": torch.from_numpy(self.val),
            **{name: torch.from_numpy(getattr(self, name)) for name in _LABEL_FIELDS},
        }
        return atomic_save_safetensors(tensors, path, metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Codes:
        """Read a file written by `save`; raises SAEFileError naming the fix if it is not one."""
        path = Path(path)
        if not path.is_file():
            raise SAEFileError(f"codes file {path} does not exist; rerun the encode step of this unit.")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types
            raise SAEFileError(
                f"codes file {path} is unreadable ({e}); delete it and rerun the encode step."
            ) from e
        missing = [k for k in ("idx", "val", *_LABEL_FIELDS) if k not in tensors]
        if meta.get("format") != CODES_FORMAT or missing:
            raise SAEFileError(
                f"{path} is not a sae_bilingual codes file (missing {missing or 'format tag'}); "
                "delete it and rerun the encode step."
            )
        languages = tuple(json.loads(meta.pop("languages")))
        for k in ("format", "version"):
            meta.pop(k, None)
        return cls(
            idx=tensors["idx"].numpy(), val=tensors["val"].float().numpy(),
            **{name: tensors[name].numpy() for name in _LABEL_FIELDS},
            languages=languages, metadata=meta,
        )


class CodesSpool:
    """Top-K codes of one SAE appended to two raw files (int32 idx, float32 val) batch by batch.

    Why: the evaluation streams, so a layer's codes are written as each LM batch is encoded
    and read back whole only when that layer is analysed (one layer in RAM at a time).
    """

    def __init__(self, folder: str | os.PathLike, k: int):
        self.folder, self.k = Path(folder), int(k)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._idx = open(self.folder / "idx.int32", "wb")  # closed by close()
        self._val = open(self.folder / "val.float32", "wb")  # noqa: SIM115
        self.n = 0

    def append(self, idx: torch.Tensor, val: torch.Tensor) -> None:
        """Write one batch of codes ([m, K] each)."""
        self._idx.write(_as_np(idx, np.int32).tobytes())
        self._val.write(_as_np(val, np.float32).tobytes())
        self.n += int(idx.shape[0])

    def close(self) -> None:
        """Flush both files (reading them needs this first)."""
        for f in (self._idx, self._val):
            if not f.closed:
                f.close()

    def read(self, labels: Any, languages: tuple[str, ...], metadata: dict[str, str] | None = None) -> Codes:
        """The spooled codes with their labels, as one in-memory :class:`Codes`."""
        self.close()
        idx = np.fromfile(self.folder / "idx.int32", dtype=np.int32).reshape(-1, self.k)
        val = np.fromfile(self.folder / "val.float32", dtype=np.float32).reshape(-1, self.k)
        return Codes(idx=idx, val=val, token_id=labels.token_id, lang=labels.lang, doc_id=labels.doc_id,
                     position=labels.position, languages=languages, metadata=dict(metadata or {}))

    def remove(self) -> None:
        """Delete the spool (after the layer's ``codes.safetensors`` is written)."""
        self.close()
        for name in ("idx.int32", "val.float32"):
            (self.folder / name).unlink(missing_ok=True)
        self.folder.rmdir()


@torch.no_grad()
def encode_to_codes(
    sae: Any,
    vectors: torch.Tensor,
    labels: Any,
    batch_size: int = 8192,
    *,
    languages: tuple[str, ...] | None = None,
    metadata: dict[str, str] | None = None,
) -> Codes:
    """Encode unit-norm vectors held in memory with ``sae.encode_topk`` in batches and keep
    only the codes (small sets, tests; the study streams: :mod:`sae_bilingual.analysis.stream`).

    ``labels`` is a `store.Labels`-like object with ``lang``, ``token_id``, ``doc_id`` and
    ``position`` ([M] each); ``languages`` defaults to ``labels.languages`` or ("en", "ja").
    """
    if not hasattr(sae, "encode_topk"):
        raise DataError(
            f"{type(sae).__name__} has no encode_topk(x_unit) -> (idx, val); "
            "load the SAE as a sae_bilingual PaperTopKSAE (architecture 'paper_topk')."
        )
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}.")
    m = int(vectors.shape[0])
    idx_parts, val_parts = [], []
    param = next(iter(sae.parameters()), None) if hasattr(sae, "parameters") else None
    device = param.device if param is not None else vectors.device
    dtype = param.dtype if param is not None else vectors.dtype
    for s in range(0, m, batch_size):
        x = vectors[s : s + batch_size].to(device=device, dtype=dtype)
        i, v = sae.encode_topk(x)
        idx_parts.append(i.to(torch.int32).cpu())
        val_parts.append(v.float().cpu())
    if languages is None:
        languages = tuple(getattr(labels, "languages", ("en", "ja")))
    k = int(idx_parts[0].shape[1]) if idx_parts else 0
    idx = torch.cat(idx_parts) if idx_parts else torch.zeros(0, k, dtype=torch.int32)
    val = torch.cat(val_parts) if val_parts else torch.zeros(0, k)
    return Codes.of(idx, val, labels, tuple(languages), metadata)
