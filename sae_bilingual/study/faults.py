"""Deterministic kill points for resume tests: ``SAE_BILINGUAL_CRASH_AFTER=<point>:<n>``.

Why: a resume test that SIGKILLs a study on a timer hits a different moment on a busy
machine (and had to give up then). With this variable set, the process ends itself with
``os._exit(137)`` (the exit status of a SIGKILL: no cleanup, no ``finally``, no atexit) right
after the ``n``-th time it passes ``<point>``:

* ``lr_grid``: the LR grid's table is written, no unit has started;
* ``trained``: a unit's SAEs of one LM pass are trained, none of their files written;
* ``layer``: a layer's ``summary.json`` is written (the layer is finished).

Unset (the normal case) it costs one environment lookup per point.
"""

from __future__ import annotations

import logging
import os
from collections import Counter

from sae_bilingual.errors import ConfigError

log = logging.getLogger(__name__)

CRASH_ENV = "SAE_BILINGUAL_CRASH_AFTER"
POINTS = ("lr_grid", "trained", "layer")
KILLED_STATUS = 137
"""What a shell reports for a process ended by SIGKILL (128 + 9)."""
_passed: Counter[str] = Counter()


def crash_point(point: str) -> None:
    """End the process here when ``$SAE_BILINGUAL_CRASH_AFTER`` names this point and count."""
    spec = os.environ.get(CRASH_ENV, "").strip()
    if not spec:
        return
    name, _, count = spec.partition(":")
    if name not in POINTS or not (count or "1").isdigit():
        raise ConfigError(f"${CRASH_ENV}={spec!r}: write <point>:<n> with a point of {', '.join(POINTS)}")
    if name != point:
        return
    _passed[point] += 1
    if _passed[point] >= int(count or 1):
        log.warning("$%s=%s: ending the process as a kill would", CRASH_ENV, spec)
        os._exit(KILLED_STATUS)
