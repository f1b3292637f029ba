"""`sae-bilingual export`: a SAELens release folder that plain SAELens loads, without this package."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
import yaml
from sae_lens import SAE
from safetensors.torch import load_file, save_file

from sae_bilingual.cli import main
from sae_bilingual.errors import OutputError
from sae_bilingual.report.release import STOCK_DIFFERENCE, export_release, register_release_folder
from sae_bilingual.sae.files import load_sae

# Runs in a fresh interpreter started with -I -S: no PYTHONPATH, no site processing (so no editable
# install of sae_bilingual), only site-packages on sys.path. It proves sae_bilingual cannot be imported,
# then loads every exported SAE with plain SAELens and writes its codes and reconstructions.
PLAIN = r"""
import importlib.util, json, sys
sys.path.append(sys.argv[1])
assert importlib.util.find_spec("sae_bilingual") is None, "sae_bilingual must not be importable here"
import torch
from safetensors.torch import load_file, save_file
from sae_lens import SAE
release, work = sys.argv[2], sys.argv[3]
out = {}
for path in json.loads(open(work + "/paths.json").read()):
    sae = SAE.load_from_disk(release + "/" + path)
    x = load_file(work + "/inputs.safetensors")[path]
    with torch.no_grad():
        codes = sae.encode(x)
        out[path + "|codes"] = codes.contiguous()
        out[path + "|recon"] = sae.decode(codes).contiguous()
    out[path + "|arch"] = torch.tensor([1 if sae.cfg.architecture() == "topk" else 0])
save_file(out, work + "/plain.safetensors")
print("loaded", len(out) // 3, "SAEs without sae_bilingual")
"""


@pytest.fixture(scope="module")
def release(smoke_study, tmp_path_factory) -> Path:
    out, _ = smoke_study
    rel = tmp_path_factory.mktemp("release") / "smoke-saes"
    assert main(["export", str(out), str(rel), "--repo-id", "someone/smoke-saes"]) == 0
    return rel


def _positive_topk_inputs(sae, n: int = 256) -> torch.Tensor:
    """Residual-scale inputs whose K selected pre-activations are all positive (where both forms agree)."""
    x = 3.0 * torch.randn(4 * n, sae.cfg.d_in, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, vals = sae.encode_topk(x / x.norm(dim=-1, keepdim=True))
    keep = (vals > 0).all(dim=-1)
    assert keep.sum() >= n, "too few inputs with positive top-K pre-activations"
    return x[keep][:n].contiguous()


def test_plain_saelens_loads_export_and_matches_plugin(smoke_study, release: Path, tmp_path: Path) -> None:
    out, _ = smoke_study
    doc = yaml.safe_load((release / "pretrained_saes.yaml").read_text())
    entries = doc["smoke-toy"]["saes"]
    paths = [e["path"] for e in entries]
    assert len(paths) == len(list(out.glob("units/*/*/L*/summary.json"))) == 6
    plugin = {p: load_sae(out / "units" / p / "sae") for p in paths}
    inputs = {p: _positive_topk_inputs(plugin[p]) for p in paths}
    save_file(inputs, str(tmp_path / "inputs.safetensors"))
    (tmp_path / "paths.json").write_text(json.dumps(paths))
    site = sysconfig.get_paths()["purelib"]
    r = subprocess.run([sys.executable, "-I", "-S", "-c", PLAIN, site, str(release), str(tmp_path)],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "loaded 6 SAEs without sae_bilingual" in r.stdout
    plain = load_file(str(tmp_path / "plain.safetensors"))
    for p in paths:
        sae, x = plugin[p], inputs[p]
        with torch.no_grad():
            codes = sae.encode(x)
            recon = sae.decode(codes)
        assert plain[p + "|arch"].item() == 1
        assert torch.equal(plain[p + "|codes"] != 0, codes != 0)  # the same K latents per token
        torch.testing.assert_close(plain[p + "|codes"], codes, atol=1e-5, rtol=1e-5)
        assert (plain[p + "|recon"] - recon).abs().max() < 1e-5


def test_from_pretrained_on_registered_folder(release: Path) -> None:
    assert register_release_folder(release) == ["smoke-toy"]
    doc = yaml.safe_load((release / "pretrained_saes.yaml").read_text())
    entry = doc["smoke-toy"]["saes"][-1]
    by_name = SAE.from_pretrained("smoke-toy", entry["id"])
    from_disk = SAE.load_from_disk(release / entry["path"])
    assert by_name.cfg.architecture() == "topk"
    for k, v in from_disk.state_dict().items():
        assert torch.equal(by_name.state_dict()[k], v)


def test_yaml_cfg_and_card_carry_provenance(smoke_study, release: Path) -> None:
    out, _ = smoke_study
    doc = yaml.safe_load((release / "pretrained_saes.yaml").read_text())
    rel = doc["smoke-toy"]
    assert rel["repo_id"] == "someone/smoke-saes" and rel["model"] == "toy"
    summary = {(r["iteration"], r["layer"]): r for r in
               (json.loads(p.read_text()) for p in out.glob("units/toy/*/L*/summary.json"))}
    for s in rel["saes"]:
        row = summary[(s["checkpoint_iteration"], s["paper_layer"])]
        assert s["checkpoint_tokens"] == row["tokens"] and s["hook_name"] == row["hook"]
        assert (s["k"], s["d_sae"]) == (row["k"], row["d_sae"]) and s["fvu"] == pytest.approx(row["fvu"])
        assert s["dead_share"] == pytest.approx(row["n_dead"] / row["n_features"])
        assert s["class_shares"] == pytest.approx({"en": row["frac_en"], "ja": row["frac_ja"], "mixed": row["frac_mixed"]})
        assert s["variance_explained"] == pytest.approx(1 - row["fvu"], abs=1e-6) and s["l0"] == row["k"]
        assert s["training_tokens"] > 0 and s["normalization"].startswith("unit_norm")
        cfg = json.loads((release / s["path"] / "cfg.json").read_text())
        assert cfg["architecture"] == "topk" and cfg["metadata"]["stock_form"] == STOCK_DIFFERENCE
        assert cfg["metadata"]["checkpoint_iteration"] == s["checkpoint_iteration"]
    card = (release / "README.md").read_text()
    assert "ReLU" in card and "SAE.load_from_disk" in card and "SAE.from_pretrained" in card
    assert all(f"`{s['id']}`" in card for s in rel["saes"])
    assert yaml.safe_load((release / "recipe.yaml").read_text()) == yaml.safe_load((out / "recipe.yaml").read_text())


def test_export_refuses_to_overwrite_the_study_or_other_folders(smoke_study, tmp_path: Path) -> None:
    out, _ = smoke_study
    with pytest.raises(OutputError, match="overwrite the study"):
        export_release(out, out)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="not a release folder"):
        export_release(out, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(OutputError, match="no finished SAE"):
        export_release(tmp_path / "mine", tmp_path / "r")
