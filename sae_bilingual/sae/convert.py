"""Convert the authors' released SAEs (llm-jp/llm-jp-sae) into SAELens-loadable directories.

Released module (LLMJP.md): z = TopK(ReLU(encoder(x - b_dec))), x_hat = z @ W_dec + b_dec on
unit-norm inputs. It has an encoder bias and a ReLU, so the converted SAE is a
``paper_topk`` with ``encoder_bias=True, relu_before_topk=True`` (exact same forward).

Two formats are accepted, each as safetensors or ``torch.load(weights_only=True)``:
 (a) a state dict (``sae.pth``): ``encoder.weight`` [n, d], ``encoder.bias`` [n],
     ``W_dec`` [n, d], ``b_dec`` [d];
 (b) an HF ``TopKSAE.save_pretrained`` dir: ``config.json`` (model_type "topk_sae", d_in,
     num_latents, k) + ``encoder.weight``, ``encoder.bias``, ``decoder.weight`` [d, n], ``b_dec``.

Importing this module also registers the release ``llm-jp-3-1.8b-sae-l12-k32-16x`` with
SAELens's pretrained directory, so ``SAE.from_pretrained(release=..., sae_id="c988240")``
works: from a local folder (argument/env ``SAE_BILINGUAL_RELEASED_SAES``) or the Hub.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import snapshot_download
from sae_lens.loading.pretrained_sae_loaders import NAMED_PRETRAINED_SAE_LOADERS
from sae_lens.loading.pretrained_saes_directory import PretrainedSAELookup, get_pretrained_saes_directory
from safetensors.torch import load_file

from sae_bilingual.errors import OutputError, SAEFileError
from sae_bilingual.io import atomic_write_bytes
from sae_bilingual.sae.files import check_finite, save_sae
from sae_bilingual.sae.model import PaperTopKSAE, make_metadata
from sae_bilingual.sae.topk_config import PaperTopKSAEConfig

RELEASED_HOOK = "blocks.11.hook_resid_post"
"""The hook of the authors' released SAE (1.8B, paper layer 12): ``convert``'s default."""

log = logging.getLogger(__name__)

RELEASE = "llm-jp-3-1.8b-sae-l12-k32-16x"
RELEASE_ITERATIONS = (10, 100, 1000, 10000, 100000, 988240)
RELEASE_REPO = "llm-jp/llm-jp-3-1.8b-sae-l12-k32-16x-c{it}"
LOADER_NAME = "sae_bilingual_llmjp_released"
ENV_LOCAL = "SAE_BILINGUAL_RELEASED_SAES"
_WEIGHT_FILES = ("sae.safetensors", "model.safetensors", "sae.pth", "pytorch_model.bin", "sae.pt")


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001  safetensors raises its own types on a bad header or size
            raise SAEFileError(f"{path} is not a readable safetensors file ({e}): it is damaged or truncated; "
                               "re-download it") from e
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise SAEFileError(f"cannot read {path} with torch.load(weights_only=True): {e}. "
                           "Only plain tensor state dicts are accepted (never pickled code)") from e
    if not isinstance(sd, dict):
        raise SAEFileError(f"{path} does not hold a state dict")
    return sd


def _read_config(path: Path) -> dict[str, Any]:
    """An HF TopKSAE's config.json, refused in one line when it is not a usable object."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SAEFileError(f"{path} is not valid JSON ({e}); re-download it, or delete it to use the weights alone") from e
    if not isinstance(info, dict):
        raise SAEFileError(f"{path} must hold a JSON object (model_type, d_in, num_latents, k), "
                           f"got {type(info).__name__}; re-download it")
    k = info.get("k", 1)
    if isinstance(k, bool) or not isinstance(k, int):
        raise SAEFileError(f"{path}: k = {k!r} must be a whole number (latents kept per token, e.g. 32); fix the file")
    return info


def read_released(path: str | os.PathLike, k: int | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a released SAE -> (SAELens state dict W_enc/b_enc/W_dec/b_dec in float32, info)."""
    p = Path(path)
    info: dict[str, Any] = {}
    if p.is_dir():
        cfg_path = p / "config.json"
        if cfg_path.exists():
            info = _read_config(cfg_path)
        files = [p / f for f in _WEIGHT_FILES if (p / f).exists()]
        if not files:
            raise SAEFileError(f"{p} holds none of {list(_WEIGHT_FILES)}: not a released SAE directory")
        wfile = files[0]
    elif p.exists():
        wfile = p
    else:
        raise SAEFileError(f"{p} does not exist")
    sd = _load_tensors(wfile)
    sd = {k_.removeprefix("module."): v for k_, v in sd.items()}
    need_enc = ("encoder.weight", "b_dec")
    if any(key not in sd for key in need_enc):
        raise SAEFileError(f"{wfile} lacks {[x for x in need_enc if x not in sd]}; keys: {sorted(sd)[:10]}")
    enc_w = sd["encoder.weight"].float()  # [n, d]
    if enc_w.dim() != 2:
        raise SAEFileError(f"{wfile}: encoder.weight has shape {tuple(enc_w.shape)}; it must be 2-D [latents, d_in]")
    n, d = enc_w.shape
    for name, want, what in (("b_dec", d, f"d_in = {d}"), ("encoder.bias", n, f"{n} latents")):
        if name in sd and tuple(sd[name].shape) != (want,):
            raise SAEFileError(f"{wfile}: {name} has shape {tuple(sd[name].shape)}; a released SAE of {what} "
                               f"needs ({want},): the file does not hold one SAE")
    if "W_dec" in sd:  # format (a)
        W_dec = sd["W_dec"].float()
    elif "decoder.weight" in sd:  # format (b): nn.Linear(n, d).weight is [d, n]
        W_dec = sd["decoder.weight"].float().T
    else:
        raise SAEFileError(f"{wfile} has neither W_dec nor decoder.weight")
    if W_dec.shape != (n, d):
        raise SAEFileError(f"decoder shape {tuple(W_dec.shape)} does not match encoder {(n, d)}")
    b_enc = sd.get("encoder.bias", torch.zeros(n)).float()
    out = {"W_enc": enc_w.T.contiguous(), "b_enc": b_enc.contiguous(),
           "W_dec": W_dec.contiguous(), "b_dec": sd["b_dec"].float().contiguous()}
    check_finite(out, wfile, "nothing was written; re-download it, or convert another checkpoint")
    if info and info.get("d_in", d) != d:
        raise SAEFileError(f"config.json says d_in={info['d_in']} but the weights have {d}")
    info.setdefault("k", k if k is not None else 32)
    if k is not None:
        info["k"] = k
    info["d_in"], info["num_latents"] = d, n
    return out, info


def released_to_sae(path: str | os.PathLike, *, k: int | None = None, hook_name: str = RELEASED_HOOK,
                    model_name: str = "llm-jp-3-1.8b", **provenance: Any) -> PaperTopKSAE:
    """A released SAE as a ``paper_topk`` SAE (encoder bias + ReLU before TopK)."""
    sd, info = read_released(path, k)
    if "checkpoint_iteration" not in provenance:
        m = re.search(r"-c(\d+)", str(path))
        if m:
            provenance["checkpoint_iteration"] = int(m.group(1))
    md = make_metadata(hook_name=hook_name, model_name=model_name, source="llm-jp released SAE",
                       converted_from=str(path), **provenance)
    cfg = PaperTopKSAEConfig(d_in=info["d_in"], d_sae=info["num_latents"], k=int(info["k"]),
                             encoder_bias=True, relu_before_topk=True, metadata=md)
    sae = PaperTopKSAE(cfg)
    sae.load_state_dict(sd)
    return sae


SAE_FILES = ("cfg.json", "sae_weights.safetensors")


def _check_destination(src: Path, dst: Path, force: bool) -> bool:
    """Whether ``dst`` already holds files (then only the SAE files are written into it).

    Refused unless ``force``: a destination that holds the source (converting in place) or
    other files without being an SAE folder. A file as destination is always refused.
    """
    if dst.exists() and not dst.is_dir():
        raise OutputError(f"convert destination {dst} is a file; give a folder for the SAELens SAE")
    if not dst.exists() or not any(dst.iterdir()):
        return False
    holds_source = dst.resolve() == src.resolve() or dst.resolve() in src.resolve().parents
    is_sae = all((dst / f).is_file() for f in SAE_FILES)
    if not force and (holds_source or not is_sae):
        why = ("it holds the source" if holds_source
               else f"it is not empty and not an SAE folder (no {' + '.join(SAE_FILES)})")
        raise OutputError(f"convert destination {dst}: {why}. Give another destination, or pass --force "
                          f"(force=True) to write {' and '.join(SAE_FILES)} into it; nothing else there is touched")
    return True


def convert_released(src: str | os.PathLike, dst: str | os.PathLike, *, force: bool = False, **kw: Any) -> Path:
    """Convert a released SAE (file or dir) into a SAELens dir loadable by ``SAE.load_from_disk``.

    A new or empty ``dst`` is written whole (atomically). Into an existing SAE folder (or,
    with ``force``, any folder) only cfg.json and sae_weights.safetensors are written,
    each atomically: files the conversion did not write, the source included, stay.
    """
    src, dst = Path(src), Path(dst)
    beside_others = _check_destination(src, dst, force)
    sae = released_to_sae(src, **kw)
    if not beside_others:
        return save_sae(sae, dst)
    with tempfile.TemporaryDirectory() as tmp:
        written = save_sae(sae, Path(tmp) / "sae")
        for name in SAE_FILES:
            atomic_write_bytes(dst / name, (written / name).read_bytes())
    return dst


# --------------------------------------------------------------------------- pretrained directory


def _find_local(folder_name: str, local_dir: str | None) -> Path | None:
    root = local_dir or os.environ.get(ENV_LOCAL)
    if not root:
        return None
    base = folder_name.split("/")[-1]
    sae_id = base.rsplit("-", 1)[-1]
    for cand in (Path(root) / base, Path(root) / sae_id, Path(root) / folder_name):
        if cand.exists():
            return cand
    return None


def released_loader(repo_id: str, folder_name: str, device: str = "cpu", force_download: bool = False,
                    cfg_overrides: dict[str, Any] | None = None, local_dir: str | None = None):
    """SAELens pretrained loader: (cfg_dict, state_dict, log_sparsity) for one released SAE."""
    local = _find_local(folder_name, local_dir)
    if local is None:
        try:
            local = Path(snapshot_download(folder_name, force_download=force_download))
        except Exception as e:  # noqa: BLE001
            raise SAEFileError(
                f"cannot fetch {folder_name} from the Hugging Face Hub ({type(e).__name__}: {e}). "
                f"Download it elsewhere and set {ENV_LOCAL}=<dir holding {folder_name.split('/')[-1]}/>"
            ) from e
    sae = released_to_sae(local)
    cfg = sae.cfg.to_dict()
    cfg.update(cfg_overrides or {})
    cfg["device"] = device
    sd = {k: v.to(device) for k, v in sae.state_dict().items()}
    return cfg, sd, None


def register_release() -> None:
    """Add the released SAEs to SAELens's pretrained directory (idempotent, no fork)."""
    NAMED_PRETRAINED_SAE_LOADERS[LOADER_NAME] = released_loader
    directory = get_pretrained_saes_directory()  # cached dict: entries added here persist
    if RELEASE in directory:
        return
    ids = {f"c{it}": RELEASE_REPO.format(it=it) for it in RELEASE_ITERATIONS}
    directory[RELEASE] = PretrainedSAELookup(
        release=RELEASE, repo_id="llm-jp", model="llm-jp/llm-jp-3-1.8b", conversion_func=LOADER_NAME,
        saes_map=ids, expected_var_explained={}, expected_l0={i: 32.0 for i in ids},
        neuronpedia_id={}, norm_scaling_factor={},
        config_overrides=None)


register_release()
