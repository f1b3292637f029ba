"""study/collect.py: objects alive before the units are skipped by the collector, new cycles are not."""

from __future__ import annotations

import gc
import weakref

from sae_bilingual.study.collect import free_cycles, long_lived_objects_frozen


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def _dropped_cycle() -> weakref.ref:
    return weakref.ref(_Node())


def test_frozen_cycles_survive_the_units_and_new_cycles_do_not() -> None:
    gc.collect()
    old = _dropped_cycle()
    with long_lived_objects_frozen():
        new = _dropped_cycle()
        free_cycles()
        assert new() is None, "a cycle made during the units must be collected"
        assert old() is not None, "an object alive before the units is frozen out of the walk"
    free_cycles()
    assert old() is None, "thawed after the units, the old cycle is collectable again"
    assert not gc.get_freeze_count()
