"""Codes container: safetensors round trip and batched encoding."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from sae_bilingual.analysis.codes import Codes, encode_to_codes
from sae_bilingual.errors import DataError, SAEFileError
from tests.bad_input_fixtures import names_problem_and_fix


def small_codes() -> Codes:
    rng = np.random.default_rng(0)
    return Codes(idx=rng.integers(0, 50, (20, 3)), val=rng.random((20, 3)) * 5,
                 token_id=rng.integers(0, 1000, 20), lang=rng.integers(0, 3, 20),
                 doc_id=np.repeat(np.arange(4), 5), position=np.tile(np.arange(5), 4),
                 languages=("en", "ja", "zh"), metadata={"hook": "blocks.0.hook_resid_post"})


def test_round_trip(tmp_path):
    c = small_codes()
    path = c.save(tmp_path / "codes.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["codes.safetensors"]  # no temp file left
    d = Codes.load(path)
    assert d.languages == ("en", "ja", "zh") and d.metadata == {"hook": "blocks.0.hook_resid_post"}
    assert d.idx.dtype == np.int32 and d.val.dtype == np.float32
    np.testing.assert_array_equal(d.idx, c.idx)
    np.testing.assert_array_equal(d.val, c.val)  # float32 on disk: bit-identical
    for name in ("token_id", "lang", "doc_id", "position"):
        np.testing.assert_array_equal(getattr(d, name), getattr(c, name))


def test_load_errors(tmp_path):
    with pytest.raises(SAEFileError, match="rerun"):
        Codes.load(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(SAEFileError, match="delete it"):
        Codes.load(bad)


def test_validation():
    c = small_codes()
    with pytest.raises(DataError, match="one entry per vector"):
        Codes(c.idx, c.val, c.token_id[:3], c.lang, c.doc_id, c.position)
    with pytest.raises(DataError, match="index into"):
        Codes(c.idx, c.val, c.token_id, c.lang + 5, c.doc_id, c.position)


class FakeSAE(torch.nn.Module):
    def __init__(self, d: int, n: int, k: int):
        super().__init__()
        self.W = torch.nn.Parameter(torch.randn(d, n, generator=torch.Generator().manual_seed(0)))
        self.k = k

    def encode_topk(self, x):
        v, i = torch.topk(x @ self.W, self.k, dim=-1)
        return i, v


class L:
    def __init__(self, m):
        self.lang = torch.arange(m) % 2
        self.token_id = torch.arange(m) + 100
        self.doc_id = torch.arange(m) // 4
        self.position = torch.arange(m) % 4


def test_encode_to_codes_batches_match_direct():
    sae = FakeSAE(8, 32, 4)
    x = torch.nn.functional.normalize(torch.randn(23, 8), dim=1)
    c = encode_to_codes(sae, x, L(23), batch_size=5)
    v, i = torch.topk(x @ sae.W.detach(), 4, dim=-1)
    np.testing.assert_array_equal(c.idx, i.numpy())
    np.testing.assert_allclose(c.val, v.numpy(), rtol=1e-6)
    assert c.languages == ("en", "ja") and c.token_id[0] == 100 and c.doc_id[-1] == 5


def test_encode_to_codes_with_paper_sae():
    sae_mod = pytest.importorskip("sae_bilingual.sae.model")
    sae = sae_mod.new_paper_sae(8, k=4, d_sae=32)
    x = torch.nn.functional.normalize(torch.randn(10, 8), dim=1)
    c = encode_to_codes(sae, x, L(10), batch_size=3)
    with torch.no_grad():
        i, v = sae.encode_topk(x)
    np.testing.assert_array_equal(c.idx, i.numpy())
    np.testing.assert_allclose(c.val, v.detach().numpy(), rtol=1e-6)


def test_analysis_from_disk_equals_analysis_in_memory(tmp_path):
    """Re-analysing written codes gives the in-memory table exactly, feature by feature.

    The values are chosen so that fp16 storage WOULD move some of them across 0.7 x max
    (the earlier format): then this test fails.
    """
    from sae_bilingual.analysis.features import analyse_features
    from sae_bilingual.analysis.semantic import token_graph_from_embeddings

    rng = np.random.default_rng(3)
    m, k, n = 3000, 4, 64
    idx = np.stack([rng.choice(n, size=k, replace=False) for _ in range(m)])
    val = (rng.random((m, k)) * 3 + 0.5).astype(np.float32)
    c = Codes(idx=idx, val=val, token_id=rng.integers(0, 200, m), lang=rng.integers(0, 2, m),
              doc_id=np.arange(m) // 16, position=np.arange(m) % 16, languages=("en", "ja"))
    fp16 = Codes(idx=idx, val=val.astype(np.float16).astype(np.float32), token_id=c.token_id, lang=c.lang,
                 doc_id=c.doc_id, position=c.position, languages=c.languages)
    graph = token_graph_from_embeddings(rng.normal(size=(200, 16)).astype(np.float32), 0.3)
    mem = analyse_features(c, n, token_clusters=graph)
    assert not mem["n_active"].equals(analyse_features(fp16, n, token_clusters=graph)["n_active"])
    disk = analyse_features(Codes.load(c.save(tmp_path / "codes.safetensors")), n, token_clusters=graph)
    pd.testing.assert_frame_equal(disk, mem, check_exact=True)


# ======== bad inputs (moved from test_bad_inputs.py): a corrupt codes file (analysis/codes.py)


def test_corrupt_codes_file(tmp_path):
    from sae_bilingual.analysis.codes import Codes

    p = tmp_path / "codes.safetensors"
    p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(SAEFileError) as e:
        Codes.load(p)
    names_problem_and_fix(e.value, str(p), fix=("rerun",))

