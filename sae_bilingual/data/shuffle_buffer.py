"""A memory-bounded shuffle buffer over chunks of activation rows: no LM, no files.

Why a class of its own: the order in which a store serves vectors (and so every SAE's
batches) is decided here alone, from the chunks it is fed and its generator, whatever made
the chunks (an LM pass, cache shards, a test's list). The store
(:class:`sae_bilingual.data.store.ActivationStore`) only picks the chunk source.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import fields

import torch

from sae_bilingual.data.labels import Labels

Chunk = tuple[dict[str, torch.Tensor], Labels]
"""Rows of one LM batch (or cache shard): {hook: Tensor[m, d]} and their labels."""


class ShuffleBuffer:
    """Serves ``batch_size`` rows per step from ``chunks`` (None in the stream ends an epoch).

    The buffer is allocated once, ``buffer_vectors`` rows per hook (and one row of labels per
    vector), and refilled in place: new chunks overwrite the slots already served, then the
    slots still unserved are put in a new seeded random order (a permutation of indices: no
    vector is copied), and the first half of that order is served before the next refill.
    Peak memory is the buffer plus one chunk and one batch. ``epoch`` counts the epoch ends
    seen; the vectors of one epoch are all served before any of the next.
    """

    def __init__(self, chunks: Iterator[Chunk | None], hooks: Sequence[str], *, batch_size: int,
                 buffer_vectors: int, generator: torch.Generator, shuffle: bool = True):
        self.hooks = list(hooks)
        self.batch_size, self.buffer_vectors = int(batch_size), int(buffer_vectors)
        self.gen, self.shuffle = generator, shuffle
        self.epoch = 0
        self.n_served = 0
        self._source = chunks
        C = self.buffer_vectors
        self._buf: dict[str, torch.Tensor] | None = None  # [C, d] per hook, allocated at the first chunk
        self._lab = Labels(*(torch.zeros(C, dtype=torch.long) for _ in fields(Labels)))
        self._used = torch.zeros(C, dtype=torch.bool)  # slot holds a vector not served yet
        self._seq = torch.zeros(C, dtype=torch.long)  # arrival number (serving order without shuffle)
        self._n_in = 0  # vectors written so far
        self._order = torch.zeros(0, dtype=torch.long)  # slots in serving order
        self._pos = 0  # next entry of _order to serve
        self._ready = 0  # entries of _order servable before the next refill
        self._pending: Chunk | None = None  # rest of a chunk that did not fit

    def _next_chunk(self) -> Chunk | None:
        chunk = next(self._source)
        if chunk is None:
            self.epoch += 1
        return chunk

    def _size(self) -> int:
        """Vectors in the buffer not served yet."""
        return int(self._order.shape[0]) - self._pos

    def _write(self, slots: torch.Tensor, acts: Mapping[str, torch.Tensor], lab: Labels) -> None:
        """Copy the first ``len(slots)`` vectors of a chunk into those slots of the buffer."""
        m = int(slots.shape[0])
        if self._buf is None:
            C = self.buffer_vectors
            self._buf = {h: torch.empty(C, acts[h].shape[1], dtype=acts[h].dtype) for h in self.hooks}
        for h in self.hooks:
            self._buf[h].index_copy_(0, slots, acts[h][:m])
        for f in fields(Labels):
            getattr(self._lab, f.name).index_copy_(0, slots, getattr(lab, f.name)[:m])
        self._used[slots] = True
        self._seq[slots] = torch.arange(self._n_in, self._n_in + m)
        self._n_in += m

    def _refill(self) -> None:
        """Overwrite the served slots with new vectors, then reorder the unserved ones."""
        self._used[self._order[:self._pos]] = False
        free = (~self._used).nonzero().flatten()
        w = 0
        end_of_epoch = False
        while w < free.shape[0]:
            chunk, self._pending = (self._pending, None) if self._pending is not None else (self._next_chunk(), None)
            if chunk is None:
                end_of_epoch = True
                if w > 0 or bool(self._used.any()):
                    break
                continue
            acts, lab = chunk
            m = min(len(lab), int(free.shape[0]) - w)
            self._write(free[w:w + m], acts, lab)
            if m < len(lab):  # keep the rest for the next refill (views: no copy)
                self._pending = ({h: acts[h][m:] for h in self.hooks}, lab.index(slice(m, None)))
            w += m
        live = self._used.nonzero().flatten()
        if self.shuffle:
            self._order = live[torch.randperm(live.shape[0], generator=self.gen)]
        else:
            self._order = live[torch.argsort(self._seq[live])]
        self._pos = 0
        n = int(live.shape[0])
        self._ready = n if end_of_epoch else max(min(n, self.batch_size), n // 2)

    def _take(self, n: int) -> Chunk:
        """The next ``n`` vectors in serving order (copies: their slots are refilled later)."""
        assert self._buf is not None
        slots = self._order[self._pos:self._pos + n]
        out = {h: a.index_select(0, slots) for h, a in self._buf.items()}
        lab = self._lab.index(slots)
        self._pos += n
        self._ready -= n
        return out, lab

    def next_with_labels(self) -> Chunk:
        """Next batch and its labels."""
        got_a: list[dict[str, torch.Tensor]] = []
        got_l: list[Labels] = []
        need = self.batch_size
        while need > 0:
            if self._ready <= 0:
                self._refill()
            a, lab = self._take(min(need, self._ready))
            got_a.append(a)
            got_l.append(lab)
            need -= len(lab)
        self.n_served += self.batch_size
        if len(got_a) == 1:
            return got_a[0], got_l[0]
        return {h: torch.cat([g[h] for g in got_a]) for h in self.hooks}, Labels.cat(got_l)
