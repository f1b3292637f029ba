"""Bad inputs: activations that cannot be collected (sae_bilingual/data/store.py: collect_activations).

Moved from the catalogue of bad inputs (tests/bad_input_fixtures.py has its helpers)."""

from __future__ import annotations

import pytest
import torch

from sae_bilingual.errors import DataError
from tests.bad_input_fixtures import names_problem_and_fix, tiny_lm, windows


def test_nan_activation_names_hook_document_position():
    from sae_bilingual.data.store import collect_activations

    model = tiny_lm()
    with torch.no_grad():
        model.W_E[9] = float("nan")
    # (a NaN at position p leaks to every position of its row in TL's attention: 0 * NaN)
    w = windows([[1, 2, 3, 4], [1, 9, 5, 6, 7]], doc_ids=[40, 41])
    with pytest.raises(DataError) as e:
        collect_activations(model, w, ["blocks.0.hook_resid_post"], batch_size=2)
    names_problem_and_fix(e.value, "blocks.0.hook_resid_post", "document 41", "position 1",
                          fix=("float32", "check its weights"))


def test_token_ids_beyond_model_vocab():
    from sae_bilingual.data.store import collect_activations

    w = windows([[1, 2, 3], [1, 60, 4]])
    with pytest.raises(DataError) as e:
        collect_activations(tiny_lm(d_vocab=50), w, ["blocks.0.hook_resid_post"])
    names_problem_and_fix(e.value, "token id 60", "d_vocab=50", fix=("model family's own tokenizer",))

