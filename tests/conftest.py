"""Suite-wide settings: one intra-op thread keeps tiny-model tests fast on 2 shared cores."""

from __future__ import annotations

import os

import torch

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(1)
