"""Released llm-jp SAEs: both formats convert, forward reproduced exactly, release resolves."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file
from sae_lens import SAE

from sae_bilingual.sae.convert import RELEASE, convert_released
from sae_bilingual.sae.model import PaperTopKSAE
from sae_bilingual.errors import SAEFileError
from tests.bad_input_fixtures import names_problem_and_fix

N, D, K = 64, 16, 4


def _weights():
    g = torch.Generator().manual_seed(0)
    return {"encoder.weight": torch.randn(N, D, generator=g), "encoder.bias": torch.randn(N, generator=g) * 0.3,
            "W_dec": torch.randn(N, D, generator=g), "b_dec": torch.randn(D, generator=g) * 0.1}


def _reference(sd, x_unit):
    """The released module's forward, written out by hand."""
    pre = torch.relu((x_unit - sd["b_dec"]) @ sd["encoder.weight"].T + sd["encoder.bias"])
    vals, idx = pre.topk(K, dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, idx, vals)
    return acts, acts @ sd["W_dec"] + sd["b_dec"]


@pytest.mark.parametrize("fmt", ["pth", "hf_safetensors"])
def test_convert_reproduces_released_forward(tmp_path, fmt):
    sd = _weights()
    if fmt == "pth":
        src = tmp_path / "sae.pth"
        torch.save(sd, src)
    else:
        src = tmp_path / "hf"
        src.mkdir()
        (src / "config.json").write_text(json.dumps({"model_type": "topk_sae", "d_in": D, "num_latents": N, "k": K}))
        hf = {"encoder.weight": sd["encoder.weight"], "encoder.bias": sd["encoder.bias"],
              "decoder.weight": sd["W_dec"].T.contiguous(), "b_dec": sd["b_dec"]}
        save_file(hf, src / "model.safetensors")
    convert_released(src, tmp_path / "out", k=K)
    sae = SAE.load_from_disk(tmp_path / "out")
    assert isinstance(sae, PaperTopKSAE) and sae.cfg.encoder_bias and sae.cfg.relu_before_topk
    x = torch.randn(50, D) * 3
    u = x / x.norm(dim=-1, keepdim=True)
    acts, rec = _reference(sd, u)
    assert torch.allclose(sae.encode_normalized(u), acts, atol=1e-5)
    assert torch.allclose(sae.decode_normalized(acts), rec, atol=1e-5)
    assert torch.allclose(sae(x), rec * x.norm(dim=-1, keepdim=True), atol=1e-4)


def test_from_pretrained_release_local_dir(tmp_path, monkeypatch):
    d = tmp_path / "llm-jp-3-1.8b-sae-l12-k32-16x-c988240"
    d.mkdir()
    torch.save({k: v.bfloat16() for k, v in _weights().items()}, d / "sae.pth")
    monkeypatch.setenv("SAE_BILINGUAL_RELEASED_SAES", str(tmp_path))
    sae = SAE.from_pretrained(release=RELEASE, sae_id="c988240")
    assert isinstance(sae, PaperTopKSAE) and sae.cfg.k == 32
    assert sae.cfg.metadata.checkpoint_iteration == 988240
    assert sae.cfg.metadata.hook_name == "blocks.11.hook_resid_post"


def test_bad_file_is_named(tmp_path):
    from sae_bilingual.errors import SAEFileError

    torch.save({"foo": torch.zeros(2)}, tmp_path / "sae.pth")
    with pytest.raises(SAEFileError, match="encoder.weight"):
        convert_released(tmp_path / "sae.pth", tmp_path / "out")


# ----------------------------------------------------------------------------- destination safety (issue 21)


def _release(tmp_path):
    src = tmp_path / "release"
    src.mkdir()
    torch.save(_weights(), src / "sae.pth")
    return src


def test_convert_refuses_a_folder_of_other_files(tmp_path):
    """Before: convert_released(src, existing_dir) deleted everything in the folder."""
    from sae_bilingual.errors import OutputError

    dst = tmp_path / "mine"
    dst.mkdir()
    (dst / "notes.txt").write_text("keep")
    with pytest.raises(OutputError) as e:
        convert_released(_release(tmp_path), dst, k=K)
    assert str(dst) in str(e.value) and "--force" in str(e.value)
    assert sorted(p.name for p in dst.iterdir()) == ["notes.txt"]


def test_convert_in_place_keeps_the_source(tmp_path):
    """Before: converting a folder into itself deleted its sae.pth."""
    from sae_bilingual.errors import OutputError

    src = _release(tmp_path)
    with pytest.raises(OutputError) as e:
        convert_released(src, src, k=K)
    assert "source" in str(e.value) and "--force" in str(e.value)
    assert sorted(p.name for p in src.iterdir()) == ["sae.pth"]
    convert_released(src, src, k=K, force=True)  # asked for: written beside the source
    assert sorted(p.name for p in src.iterdir()) == ["cfg.json", "sae.pth", "sae_weights.safetensors"]
    assert isinstance(SAE.load_from_disk(src), PaperTopKSAE)


def test_convert_over_an_sae_folder_keeps_files_it_did_not_write(tmp_path):
    src, dst = _release(tmp_path), tmp_path / "sae"
    convert_released(src, dst, k=K)
    (dst / "README.md").write_text("my notes")
    convert_released(src, dst, k=K)  # an SAE folder: replaced without --force
    assert (dst / "README.md").read_text() == "my notes"
    assert isinstance(SAE.load_from_disk(dst), PaperTopKSAE)


def test_convert_refuses_a_file_as_destination(tmp_path):
    from sae_bilingual.errors import OutputError

    src = _release(tmp_path)
    with pytest.raises(OutputError, match="is a file"):
        convert_released(src / "sae.pth", src / "sae.pth", k=K, force=True)
    assert (src / "sae.pth").stat().st_size > 0


# ======== bad inputs (moved from test_bad_inputs.py): pickled weights refused (sae/convert.py)


def test_pickled_sae_weights_are_refused(tmp_path):
    """convert.py reads .pth with weights_only=True: a pickle carrying code is an SAEFileError."""
    from sae_bilingual.sae.convert import _load_tensors

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    p = tmp_path / "sae.pth"
    torch.save({"W_enc": Evil()}, p)
    with pytest.raises(SAEFileError) as e:
        _load_tensors(p)
    names_problem_and_fix(e.value, "weights_only=True", fix=("never pickled code",))
    assert not (tmp_path / "pwned").exists()

