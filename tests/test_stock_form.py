"""Every saved paper_topk SAE carries its stock SAELens form and a README (issue 28, part 4).

The plain-SAELens side runs in a subprocess that never imports sae_bilingual, as a user
without the plugin would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sae_bilingual.sae.files import README_FILE, STOCK_DIR, load_sae, save_sae
from sae_bilingual.sae.model import make_metadata, new_paper_sae

PLAIN = textwrap.dedent("""
    import json, sys
    from safetensors.torch import load_file, save_file
    from sae_lens import SAE
    folder, xs, out = sys.argv[1:4]
    x = load_file(xs)["x"]
    stock = SAE.load_from_disk(folder + "/stock")
    save_file({"rec": stock(x).contiguous()}, out)
    try:
        SAE.load_from_disk(folder)
        err = None
    except Exception as e:
        err = [type(e).__name__, str(e)]
    print(json.dumps({"arch": stock.cfg.architecture(), "err": err,
                      "plugin_imported": any(m.startswith("sae_bilingual") for m in sys.modules)}))
""")


def _trained_like_sae(d: int = 32, d_sae: int = 128, k: int = 4):
    torch.manual_seed(3)
    sae = new_paper_sae(d, k=k, d_sae=d_sae, metadata=make_metadata(hook_name="blocks.0.hook_resid_post"))
    with torch.no_grad():
        sae.b_dec.normal_(std=0.05)
    return sae


def test_stock_form_loads_in_plain_saelens_and_reconstructs_like_ours(tmp_path: Path) -> None:
    sae = _trained_like_sae()
    folder = save_sae(sae, tmp_path / "sae")
    assert (folder / STOCK_DIR / "cfg.json").is_file() and (folder / README_FILE).is_file()
    x = torch.randn(400, 32) * 9 + 2  # residual scale, not unit norm
    u = x / x.norm(dim=-1, keepdim=True)
    # tokens whose K selected pre-activations are all positive: the two forms agree exactly there
    pos = (torch.topk((u - sae.b_dec) @ sae.W_enc, sae.cfg.k).values > 0).all(-1)
    assert int(pos.sum()) > 50
    save_file({"x": x.contiguous()}, str(tmp_path / "x.safetensors"))
    env = {k: v for k, v in os.environ.items() if k != "SAE_BILINGUAL_RELEASES"}
    res = subprocess.run([sys.executable, "-c", PLAIN, str(folder), str(tmp_path / "x.safetensors"),
                          str(tmp_path / "rec.safetensors")], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["plugin_imported"] is False and info["arch"] == "topk"
    rec_stock = load_file(str(tmp_path / "rec.safetensors"))["rec"]
    ours = load_sae(folder)
    with torch.no_grad():
        rec_ours = ours(x)
    # independent: the paper's reconstruction at residual scale, ||x|| (W_dec TopK((u - b_pre) W_enc) + b_pre)
    vals, idx = torch.topk((u - sae.b_dec) @ sae.W_enc, sae.cfg.k)
    z = torch.zeros(400, 128).scatter_(-1, idx, vals)
    want = (z @ sae.W_dec + sae.b_dec) * x.norm(dim=-1, keepdim=True)
    assert torch.allclose(rec_ours, want, atol=1e-4)
    assert torch.allclose(rec_stock[pos], want[pos], atol=1e-4)
    # the paper_topk folder fails in plain SAELens with the name the README explains
    assert info["err"] is not None and "paper_topk" in info["err"][1]
    readme = (folder / README_FILE).read_text()
    assert "KeyError: 'paper_topk'" in readme and "import sae_bilingual" in readme
    assert f'SAE.load_from_disk("THIS_FOLDER/{STOCK_DIR}")' in readme


def test_stock_form_can_be_left_out_and_is_not_written_for_other_architectures(tmp_path: Path) -> None:
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

    save_sae(_trained_like_sae(), tmp_path / "plain", stock=False)
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    save_sae(StandardSAE(StandardSAEConfig(d_in=8, d_sae=16)), tmp_path / "std")
    assert sorted(p.name for p in (tmp_path / "std").iterdir()) == ["cfg.json", "sae_weights.safetensors"]
