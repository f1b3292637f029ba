"""When the study runs Python's cyclic garbage collector, and what it may skip.

Why: the activation store's generator refers back to the store, and SAELens's activation
normalisation keeps closures over the SAE; reference counting frees neither, so without a
collection each pass's buffers and SAEs stayed resident into the next (peak RSS rose
~0.5 GB a pass). A full collection walks every tracked object, though: with the toy world's
objects in the heap one took ~250 ms, four per toy unit, most of its time. The objects made
before the units (imports, the world, the context) live for the whole study, so they are
frozen out of the walk while the units run.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def free_cycles() -> None:
    """Collect reference cycles now (and return the CUDA cache): after training, after each layer."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextmanager
def long_lived_objects_frozen() -> Iterator[None]:
    """Exempt every object alive now from collection inside the block; thawed afterwards."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
