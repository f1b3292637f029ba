"""COMET-22 scores from a separate Python environment.

``unbabel-comet`` pins numpy<2 and transformers<5, which clash with this project's
environment, so it is never imported here. Instead :func:`comet_score` writes the job to a
temporary JSON file and runs a small embedded worker script with the COMET environment's
interpreter (``$SAE_BILINGUAL_COMET_PYTHON``), which loads
``comet.load_from_checkpoint(model_path)`` and writes the segment scores back as JSON.

Setup (once)::

    python -m venv ~/.venvs/comet && ~/.venvs/comet/bin/pip install unbabel-comet
    ~/.venvs/comet/bin/python -c "from comet import download_model; print(download_model('Unbabel/wmt22-comet-da'))"
    export SAE_BILINGUAL_COMET_PYTHON=~/.venvs/comet/bin/python
    export SAE_BILINGUAL_COMET_MODEL=<printed dir>/checkpoints/model.ckpt
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sae_bilingual.errors import DataError, ExtraMissingError

log = logging.getLogger(__name__)

ENV_PYTHON = "SAE_BILINGUAL_COMET_PYTHON"
ENV_MODEL = "SAE_BILINGUAL_COMET_MODEL"
COMET_MODEL_NAME = "Unbabel/wmt22-comet-da"
SETUP_ENV = "python -m venv ~/.venvs/comet && ~/.venvs/comet/bin/pip install unbabel-comet"
SETUP_MODEL = (
    "~/.venvs/comet/bin/python -c \"from comet import download_model; "
    f"print(download_model('{COMET_MODEL_NAME}'))\" and set {ENV_MODEL}="
    "<that dir>/checkpoints/model.ckpt"
)

# Runs inside the COMET environment: only the standard library and `comet` are available.
WORKER = r"""
import json, sys
job_path = sys.argv[1]
with open(job_path, encoding="utf-8") as f:
    job = json.load(f)
from comet import load_from_checkpoint
model = load_from_checkpoint(job["model_path"])
data = [{"src": s, "mt": h, "ref": r} for s, h, r in zip(job["srcs"], job["hyps"], job["refs"])]
out = model.predict(data, batch_size=job["batch_size"], gpus=job["gpus"], progress_bar=False)
scores = [float(x) for x in out.scores]
with open(job["out_path"], "w", encoding="utf-8") as f:
    json.dump({"scores": scores, "system_score": float(out.system_score)}, f)
"""


@dataclass
class CometResult:
    """Segment scores (aligned with the inputs) and the system score (their mean), 0..1 scale."""

    scores: list[float]
    system_score: float


def comet_python(python: str | os.PathLike | None = None) -> str:
    """The COMET environment's interpreter (argument, else ``$SAE_BILINGUAL_COMET_PYTHON``)."""
    py = python if python is not None else os.environ.get(ENV_PYTHON)
    if not py:
        raise ExtraMissingError(
            f"COMET-22 scoring (set {ENV_PYTHON} to the comet environment's python)", SETUP_ENV
        )
    path = Path(os.path.expanduser(str(py)))
    if not path.exists():
        raise ExtraMissingError(
            f"COMET-22 scoring ({ENV_PYTHON}={py} does not exist)", SETUP_ENV
        )
    return str(path)


def comet_model_path(model_path: str | os.PathLike | None = None) -> str:
    """The COMET checkpoint (argument, else ``$SAE_BILINGUAL_COMET_MODEL``); a dir is searched."""
    mp = model_path if model_path is not None else os.environ.get(ENV_MODEL)
    if not mp:
        raise ExtraMissingError(f"COMET-22 scoring (no model path; set {ENV_MODEL})", SETUP_MODEL)
    path = Path(os.path.expanduser(str(mp)))
    if path.is_dir():
        ckpt = path / "checkpoints" / "model.ckpt"
        path = ckpt if ckpt.exists() else path
    if not path.exists():
        raise ExtraMissingError(f"COMET-22 scoring (model path {mp} does not exist)", SETUP_MODEL)
    return str(path)


def comet_available(python: str | None = None, model_path: str | None = None) -> bool:
    """True when both the COMET interpreter and a checkpoint are configured."""
    try:
        comet_python(python)
        comet_model_path(model_path)
    except ExtraMissingError:
        return False
    return True


def comet_score(
    srcs: Sequence[str],
    hyps: Sequence[str],
    refs: Sequence[str],
    *,
    python: str | os.PathLike | None = None,
    model_path: str | os.PathLike | None = None,
    batch_size: int = 16,
    gpus: int = 0,
    timeout: float | None = None,
) -> CometResult:
    """COMET-22 segment scores for (src, hyp, ref) triples, computed in the COMET env."""
    if not (len(srcs) == len(hyps) == len(refs)):
        raise DataError(
            f"srcs/hyps/refs must be aligned; got {len(srcs)}/{len(hyps)}/{len(refs)} items"
        )
    py = comet_python(python)
    mp = comet_model_path(model_path)
    if not srcs:
        return CometResult([], float("nan"))
    with tempfile.TemporaryDirectory(prefix="sae_bilingual_comet_") as tmp:
        job_path = Path(tmp) / "job.json"
        out_path = Path(tmp) / "out.json"
        job = {
            "srcs": list(map(str, srcs)), "hyps": list(map(str, hyps)), "refs": list(map(str, refs)),
            "model_path": mp, "batch_size": int(batch_size), "gpus": int(gpus), "out_path": str(out_path),
        }
        job_path.write_text(json.dumps(job, ensure_ascii=False), encoding="utf-8")
        proc = subprocess.run(
            [py, "-c", WORKER, str(job_path)], capture_output=True, text=True, timeout=timeout
        )
        if proc.returncode != 0 or not out_path.exists():
            tail = (proc.stderr or proc.stdout or "")[-2000:]
            if "No module named 'comet'" in tail:
                raise ExtraMissingError(f"COMET-22 scoring ({py} has no `comet` module)", SETUP_ENV)
            raise RuntimeError(f"the COMET worker ({py}) failed with exit code {proc.returncode}:\n{tail}")
        res = json.loads(out_path.read_text(encoding="utf-8"))
    scores = [float(s) for s in res["scores"]]
    if len(scores) != len(srcs):
        raise RuntimeError(f"the COMET worker returned {len(scores)} scores for {len(srcs)} segments")
    return CometResult(scores, float(res.get("system_score", sum(scores) / len(scores))))
