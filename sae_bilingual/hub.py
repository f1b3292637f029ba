"""Is the Hugging Face Hub reachable? Asked once, quickly, before a study needs it.

Why: an LLM-jp (or other public) model without ``source`` (or ``corpus: hf``) on a machine without the Hub
used to spend 24-47 s in the Hub client's retries and end in a traceback. The planner now
asks here first: ``HF_HUB_OFFLINE`` (or a failed connection to the Hub endpoint within a
few seconds) means offline, and the recipe is refused with "offline, pass a local source"
unless the files are already in the Hub cache and offline mode is on.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit

import datasets.config
from huggingface_hub import constants, try_to_load_from_cache

from sae_bilingual.config import Recipe
from sae_bilingual.config_checks import canonical_family
from sae_bilingual.errors import CheckpointError, DataError
from sae_bilingual.models.public import PUBLIC_FAMILIES

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT_S = 3.0
_TRUE = ("1", "true", "yes", "on")
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def offline_message(what: str, fix: str, why: str) -> str:
    """The one wording of 'this needs the Hub, which is offline'."""
    return f"{what} needs the Hugging Face Hub, but the Hub is offline, pass a local source: {fix} ({why})"


def offline_by_env(*names: str) -> str | None:
    """The first of ``names`` (default: the Hub's offline switches) set to a true value."""
    for name in names or ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in _TRUE:
            return name
    return None


@functools.lru_cache(maxsize=8)
def _connects(host: str, port: int, timeout: float) -> bool:
    ok: list[bool] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            ok.append(False)

    t = threading.Thread(target=attempt, daemon=True)  # name resolution has no timeout of its own
    t.start()
    t.join(timeout)
    return bool(ok and ok[0])


def hub_unreachable(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the Hub cannot be used now (a short reason), or None when it answers.

    One TCP connection to the endpoint (``HF_ENDPOINT``), or to the HTTPS proxy when one
    is set, bounded by ``timeout`` seconds, no retries.
    """
    env = offline_by_env()
    if env:
        return f"{env} is set"
    endpoint = os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT)
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    target = urlsplit(proxy if proxy else endpoint)
    host = target.hostname or ""
    port = target.port or (443 if target.scheme == "https" else 80)
    if not host or not _connects(host, port, timeout):
        return f"no connection to {host or endpoint}:{port} within {timeout:g} s"
    return None


def _cached(repo: str, revision: str | None) -> bool:
    try:
        return isinstance(try_to_load_from_cache(repo, "config.json", revision=revision), str)
    except Exception:  # noqa: BLE001  a malformed id or cache: not usable offline
        return False


def _dataset_cached(name: str) -> bool:
    """A Hub dataset has files in the `datasets` or Hub cache (usable with offline mode on)."""
    flat = name.replace("/", "___")
    return (any(Path(datasets.config.HF_DATASETS_CACHE).glob(f"{flat}*"))
            or (Path(constants.HF_HUB_CACHE) / f"datasets--{name.replace('/', '--')}").is_dir())


def hub_models(recipe: Recipe) -> list[tuple[int, str]]:
    """(index, repo id) of the models whose weights or tokenizer would come from the Hub."""
    out = []
    for i, spec in enumerate(recipe.models):
        src = spec.source
        if src is None:
            fam = canonical_family(spec.family)
            if fam.startswith("llm-jp-3-"):
                out.append((i, f"llm-jp/{fam}"))
            elif fam in PUBLIC_FAMILIES:
                out.append((i, PUBLIC_FAMILIES[fam].repo))
        elif not Path(src).expanduser().exists() and _REPO_ID.fullmatch(src):
            out.append((i, src))
    return out


def check_hub_access(recipe: Recipe) -> None:
    """Refuse, in seconds, a recipe that needs the Hub while it is offline.

    Models: an LLM-jp or public family without ``source`` or a ``source`` that is a repo id (files
    already in the Hub cache are fine with ``HF_HUB_OFFLINE=1``). Data: ``corpus: hf``
    with a dataset name that is not a local path (unless offline mode is on and the
    dataset is in the cache).
    """
    models = hub_models(recipe)
    data = recipe.data
    corpus = data.hf_name if data.corpus == "hf" and data.hf_name and not Path(data.hf_name).exists() else None
    if not models and corpus is None:
        return
    why = hub_unreachable()
    if why is None:
        return
    for i, repo in models:
        spec = recipe.models[i]
        if offline_by_env() and _cached(repo, spec.revision):
            log.info("models[%d]: %s is in the Hub cache; using it offline", i, repo)
            continue
        raise CheckpointError(offline_message(
            f"models[{i}] ({spec.family}, Hub repo {repo})",
            f"models[{i}].source: <a root of iter_NNNNNNN dirs or an HF model dir>",
            f"{why}; with the files in the Hub cache, set HF_HUB_OFFLINE=1"))
    if corpus is not None and not (offline_by_env("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
                                   and _dataset_cached(corpus)):
        raise DataError(offline_message(
            f"data.hf_name {corpus!r}", "data.hf_name: <a dataset dir saved with save_to_disk or a data "
            "file>, or corpus: text", why))
