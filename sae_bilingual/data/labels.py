"""Per-vector labels (language, token, document, position) that travel with activation rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import torch


@dataclass
class Labels:
    """Per-vector labels, aligned with the activation rows.

    lang: LongTensor[M] index into the windows' languages.
    token_id: LongTensor[M] the token at that position.
    doc_id: LongTensor[M] document id.
    position: LongTensor[M] position in the window (1..T-1; BOS = 0 is never present).
    """

    lang: torch.Tensor
    token_id: torch.Tensor
    doc_id: torch.Tensor
    position: torch.Tensor

    def __len__(self) -> int:
        return int(self.lang.shape[0])

    def index(self, idx: torch.Tensor | slice) -> Labels:
        """Rows ``idx`` (a permutation, mask or slice) of every label."""
        return Labels(*(getattr(self, f.name)[idx] for f in fields(self)))

    @staticmethod
    def cat(parts: Sequence[Labels]) -> Labels:
        """Concatenate label sets."""
        if not parts:
            return Labels.empty()
        return Labels(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Labels)))

    @staticmethod
    def empty() -> Labels:
        z = torch.zeros(0, dtype=torch.long)
        return Labels(z, z.clone(), z.clone(), z.clone())

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {f"label_{f.name}": getattr(self, f.name) for f in fields(self)}

    @staticmethod
    def from_dict(d: Mapping[str, torch.Tensor]) -> Labels:
        return Labels(*(d[f"label_{f.name}"] for f in fields(Labels)))
