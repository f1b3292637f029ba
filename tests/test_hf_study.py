"""A study on `family: hf` local roots of tiny random Llama and GPT-NeoX checkpoints, end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sae_bilingual.config import load_recipe
from sae_bilingual.errors import ConfigError
from sae_bilingual.study.run import run_study
from tests.test_families import VOCAB, make_root


def word_tokenizer():
    """Word-level tokenizer "w<i>" -> i over the tiny vocab, BOS <s>=1."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module")
def hf_roots(tmp_path_factory) -> dict[str, Path]:
    """A Llama root (iter_ folders, tokenizer in <root>/tokenizer/) and a GPT-NeoX root (stepN folders +
    catalogue.json), plus a two-language text corpus (one document per line)."""
    base = tmp_path_factory.mktemp("hf")
    llama = make_root(base / "llama-ckpts", "llama", ["iter_0000010", "iter_0000020"])
    word_tokenizer().save_pretrained(llama / "tokenizer")
    neox = make_root(base / "neox-ckpts", "neox", ["step0", "step100"])
    (neox / "catalogue.json").write_text(json.dumps({"tokens_per_iteration": 512}))
    rng = random.Random(0)
    for lang, lo, hi in (("en", 3, 150), ("ja", 150, VOCAB)):
        docs = [" ".join(f"w{rng.randrange(lo, hi)}" for _ in range(20)) for _ in range(150)]
        (base / f"{lang}.txt").write_text("\n".join(docs) + "\n")
    return {"base": base, "llama": llama, "neox": neox}


def _recipe(roots: dict[str, Path], out: Path, checkpoints: str) -> Path:
    base = roots["base"]
    data = {
        "name": "hf-tiny", "output_dir": str(out), "seed": 0,
        "models": [
            {"name": "tiny-llama", "family": "hf", "source": str(roots["llama"]), "tokens_per_step": 4096,
             "checkpoints": checkpoints, "layers": [1, 2]},
            {"name": "tiny-neox", "family": "hf", "source": str(roots["neox"]),
             "tokenizer": str(roots["llama"] / "tokenizer"), "checkpoints": checkpoints, "layers": [1]},
        ],
        "data": {"corpus": "text", "paths": {"en": str(base / "en.txt"), "ja": str(base / "ja.txt")},
                 "languages": ["en", "ja"], "context": 16, "train_tokens_per_lang": 1024,
                 "eval_tokens_per_lang": 256, "buffer_vectors": 2048, "lm_batch_size": 32},
        "sae": {"k": 4, "expansion": 2, "lr": 0.001, "batch_size": 128, "warmup_steps": 2},
        "analysis": {"n_browser_features": 6, "n_examples": 2, "ce_docs_per_lang": 8},
        "export": {"enabled": True},
        "expected_gpu_hours": 0,
    }
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_hf_family_study_dry_run_then_one_unit_each(hf_roots, tmp_path: Path, monkeypatch) -> None:
    import sae_bilingual.world as world

    def no_world(*a, **k):
        raise AssertionError("a study without the toy world must not build it")

    monkeypatch.setattr(world, "build_world", no_world)
    plan = run_study(load_recipe(_recipe(hf_roots, tmp_path / "plan", "all")), dry_run=True, progress=False)
    # tokens: recipe tokens_per_step for the Llama root, catalogue.json for the GPT-NeoX root
    assert "tiny-llama/iter_0000010" in plan and f"{10 * 4096:>16,}" in plan
    assert "tiny-llama/iter_0000020" in plan and f"{20 * 4096:>16,}" in plan
    assert "tiny-neox/iter_0000000" in plan and f"{100 * 512:>16,}" in plan
    assert "total: 4 units, 6 SAEs" in plan

    out = tmp_path / "study"
    run_study(load_recipe(_recipe(hf_roots, out, "final")), progress=False)
    summary = pd.read_csv(out / "tables" / "summary.csv")
    got = sorted(zip(summary["model"], summary["iteration"], summary["tokens"], summary["layer"]))
    assert got == [("tiny-llama", 20, 20 * 4096, 1), ("tiny-llama", 20, 20 * 4096, 2), ("tiny-neox", 100, 51200, 1)]
    assert (summary["fvu"] < 1).all() and (summary["d_sae"] == 128).all()
    cfg = json.loads((out / "units/tiny-neox/iter_0000100/L01/sae/cfg.json").read_text())
    assert cfg["metadata"]["model_name"] == "tiny-neox" and cfg["metadata"]["model_family"] == "hf"
    assert not (out / "tables" / "world.json").exists()
    assert (out / "report.html").exists()
    # export: enabled in the recipe -> a release folder with one release per model
    release = yaml.safe_load((out / "release" / "pretrained_saes.yaml").read_text())
    assert sorted(release) == ["hf-tiny-tiny-llama", "hf-tiny-tiny-neox"]
    assert release["hf-tiny-tiny-llama"]["model"] == "tiny-llama"  # a local root: no Hub name to give
    assert [s["id"] for s in release["hf-tiny-tiny-llama"]["saes"]] == ["iter_0000020/L01", "iter_0000020/L02"]
    assert (out / "release" / "tiny-neox/iter_0000100/L01/sae_weights.safetensors").exists()


def test_toy_family_with_source_does_not_build_the_world(hf_roots, tmp_path: Path, monkeypatch) -> None:
    import sae_bilingual.world as world

    monkeypatch.setattr(world, "build_world", lambda *a, **k: (_ for _ in ()).throw(AssertionError("built")))
    path = _recipe(hf_roots, tmp_path / "toy", "all")
    data = yaml.safe_load(path.read_text())
    data["models"] = [{"family": "toy", "source": str(hf_roots["llama"]), "tokens_per_step": 3}]
    path.write_text(yaml.safe_dump(data))
    plan = run_study(load_recipe(path), dry_run=True, progress=False)
    assert "toy/iter_0000020" in plan and f"{60:>16,}" in plan


def test_tokens_per_step_must_be_positive(hf_roots, tmp_path: Path) -> None:
    path = _recipe(hf_roots, tmp_path / "bad", "all")
    data = yaml.safe_load(path.read_text())
    data["models"][0]["tokens_per_step"] = 0
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"models\[0\].tokens_per_step"):
        load_recipe(path)


def test_readme_own_model_recipe_validates() -> None:
    from sae_bilingual.config import Recipe, from_dict

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = text.split("## Your own model", 1)[1].split("\n## ", 1)[0]
    block = section.split("```yaml", 1)[1].split("```", 1)[0]
    recipe = from_dict(Recipe, yaml.safe_load(block)).validate()
    m = recipe.models[0]
    assert (m.family, m.name, m.tokens_per_step) == ("hf", "my-model-1b", 2048 * 2048)
    assert recipe.export.enabled and recipe.data.languages == ["en", "fr"]
