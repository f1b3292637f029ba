"""Deterministic kill and hold points for resume tests.

Why: a resume test that SIGKILLs a study on a timer hits a different moment on a busy
machine (and had to give up then); a test that races a second run against a fast first one
loses when the first finishes before the second starts. Two variables name a point:

* ``SAE_BILINGUAL_CRASH_AFTER=<point>:<n>``: the process ends itself with ``os._exit(137)``
  (the exit status of a SIGKILL: no cleanup, no ``finally``, no atexit) right after the
  ``n``-th time it passes ``<point>``;
* ``SAE_BILINGUAL_HOLD_AT=<point>:<n>`` with ``SAE_BILINGUAL_HOLD_RELEASE=<file>``: the
  ``n``-th time it passes ``<point>`` the process waits until ``<file>`` exists, then goes on.

Points: ``lr_grid`` (the LR grid's table is written, no unit has started), ``trained`` (a
unit's SAEs of one LM pass are trained, none of their files written), ``layer`` (a layer's
``summary.json`` is written: the layer is finished), ``intervention_models`` (the intervention's
two models are loaded, none of its tables written), ``intervention_table`` (``intervention.csv`` is
written, its settings file not yet).

Unset (the normal case) they cost two environment lookups per point.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from pathlib import Path

from sae_bilingual.errors import ConfigError

log = logging.getLogger(__name__)

CRASH_ENV = "SAE_BILINGUAL_CRASH_AFTER"
HOLD_ENV = "SAE_BILINGUAL_HOLD_AT"
RELEASE_ENV = "SAE_BILINGUAL_HOLD_RELEASE"
POINTS = ("lr_grid", "trained", "layer", "intervention_models", "intervention_table")
KILLED_STATUS = 137
"""What a shell reports for a process ended by SIGKILL (128 + 9)."""
_passed: Counter[tuple[str, str]] = Counter()


def _reached(env: str, point: str) -> bool:
    """True the ``n``-th time ``point`` is passed when ``$env`` names ``<point>:<n>``."""
    spec = os.environ.get(env, "").strip()
    if not spec:
        return False
    name, _, count = spec.partition(":")
    if name not in POINTS or not (count or "1").isdigit():
        raise ConfigError(f"${env}={spec!r}: write <point>:<n> with a point of {', '.join(POINTS)}")
    if name != point:
        return False
    _passed[env, point] += 1
    return _passed[env, point] == int(count or 1)


def crash_point(point: str) -> None:
    """End the process or wait here when ``$SAE_BILINGUAL_CRASH_AFTER`` / ``$SAE_BILINGUAL_HOLD_AT``
    name this point and count."""
    if _reached(HOLD_ENV, point):
        release = os.environ.get(RELEASE_ENV, "").strip()
        if not release:
            raise ConfigError(f"${HOLD_ENV} is set but ${RELEASE_ENV} is not: name the file that releases the hold")
        log.warning("$%s: holding at %s until %s exists", HOLD_ENV, point, release)
        while not Path(release).exists():
            time.sleep(0.05)
    if _reached(CRASH_ENV, point):
        log.warning("$%s: ending the process at %s as a kill would", CRASH_ENV, point)
        os._exit(KILLED_STATUS)
