"""Bad inputs: an SAE spliced into a model it does not fit (sae_bilingual/sae/metrics.py: ce_metrics).

Moved from the catalogue of bad inputs (tests/bad_input_fixtures.py has its helpers)."""

from __future__ import annotations

import pytest

from sae_bilingual.errors import SAEFileError
from tests.bad_input_fixtures import names_problem_and_fix, tiny_lm, windows, tiny_sae


def test_sae_width_differs_from_model_splice():
    from sae_bilingual.sae.metrics import ce_metrics

    with pytest.raises(SAEFileError) as e:
        ce_metrics(tiny_lm(d_model=16), tiny_sae(d_in=32), windows([[1, 2, 3]]))
    names_problem_and_fix(e.value, "d_in=32", "d_model is 16", fix=("trained on this model",))


def test_sae_hook_missing_from_model_splice():
    from sae_bilingual.sae.metrics import ce_metrics

    with pytest.raises(SAEFileError) as e:
        ce_metrics(tiny_lm(n_layers=2), tiny_sae(hook="blocks.5.hook_resid_post"), windows([[1, 2, 3]]))
    names_problem_and_fix(e.value, "blocks.5.hook_resid_post", fix=("trained on this model",))

