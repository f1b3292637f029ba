"""A checkpoint's input embedding matrix, read without loading the model when possible.

Why: H_sem clusters tokens by their input embeddings; a 3.7B model need not be loaded whole
(and onto the GPU) for its 1.2 GB of embeddings, which its safetensors hold by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

INPUT_EMBEDDING_NAMES = ("model.embed_tokens.weight", "gpt_neox.embed_in.weight", "transformer.wte.weight")
"""The input embedding's tensor name in HF Llama, GPT-NeoX and GPT-2/BLOOM-style checkpoints."""


def input_embeddings(family: Any, checkpoint: Any) -> torch.Tensor:
    """The input embedding matrix [vocab, d] (float32) of ``checkpoint``: read alone from its
    safetensors when one holds a known name, else from the model ``family`` loads on the CPU."""
    for f in sorted(Path(checkpoint.path).glob("*.safetensors")) if checkpoint.path else []:
        with safe_open(str(f), framework="pt") as st:
            name = next((n for n in INPUT_EMBEDDING_NAMES if n in st.keys()), None)
            if name is not None:
                return st.get_tensor(name).float()
    model = family.load(checkpoint, device="cpu", dtype=torch.float32)
    return model.W_E.detach().float()
