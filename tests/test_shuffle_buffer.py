"""The shuffle buffer on hand-made chunks (no LM): every vector once per epoch, bounded, seeded."""

from __future__ import annotations

import itertools

import torch

from sae_bilingual.data.labels import Labels
from sae_bilingual.data.shuffle_buffer import Chunk, ShuffleBuffer


def _epochs(n_rows: int, chunk_rows: int):
    """Endless epochs of ``n_rows`` vectors whose value is their row id, in chunks; None ends each."""
    while True:
        for s in range(0, n_rows, chunk_rows):
            ids = torch.arange(s, min(n_rows, s + chunk_rows))
            z = torch.zeros_like(ids)
            yield {"h": ids[:, None].float().repeat(1, 3)}, Labels(z, ids, ids, z + 1)
        yield None


def _served(buf: ShuffleBuffer, n: int) -> list[int]:
    out: list[int] = []
    while len(out) < n:
        acts, lab = buf.next_with_labels()
        assert torch.equal(acts["h"][:, 0].long(), lab.doc_id)  # rows and labels travel together
        out += lab.doc_id.tolist()
    return out


def test_each_epoch_serves_every_vector_once_in_a_seeded_order() -> None:
    def make(seed: int) -> ShuffleBuffer:
        return ShuffleBuffer(_epochs(100, 7), ["h"], batch_size=10, buffer_vectors=30,
                             generator=torch.Generator().manual_seed(seed))

    a = make(0)
    got = _served(a, 300)
    for e in range(3):
        assert sorted(got[100 * e:100 * (e + 1)]) == list(range(100)), f"epoch {e}"
    assert got[:100] != list(range(100)) and got[:100] != got[100:200]
    assert a.epoch >= 2 and a.n_served == 300
    assert _served(make(0), 300) == got and _served(make(1), 300) != got
    assert a._buf is not None and a._buf["h"].shape == (30, 3)  # the buffer never grows


def test_unshuffled_buffer_serves_arrival_order() -> None:
    buf = ShuffleBuffer(_epochs(50, 6), ["h"], batch_size=8, buffer_vectors=20,
                        generator=torch.Generator().manual_seed(0), shuffle=False)
    assert _served(buf, 96)[:50] == list(range(50))


def test_a_chunk_larger_than_the_free_slots_is_kept_for_the_next_refill() -> None:
    chunks: list[Chunk | None] = [next(_epochs(40, 40)), None]
    buf = ShuffleBuffer(itertools.cycle(chunks), ["h"], batch_size=5, buffer_vectors=12,
                        generator=torch.Generator().manual_seed(2))
    assert sorted(_served(buf, 40)) == list(range(40))
