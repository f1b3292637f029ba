"""Bad inputs: an SAE that does not fit the model it is hooked into
(sae_bilingual/intervention/hook.py: FeatureInjection).

Moved from the catalogue of bad inputs (tests/bad_input_fixtures.py has its helpers)."""

from __future__ import annotations

import pytest

from sae_bilingual.errors import SAEFileError
from tests.bad_input_fixtures import names_problem_and_fix, tiny_lm, tiny_sae


def test_sae_width_differs_from_model_intervention():
    from sae_bilingual.intervention.hook import FeatureInjection

    mid, final = tiny_lm(d_model=16), tiny_lm(d_model=16, seed=1)
    with pytest.raises(SAEFileError) as e:
        FeatureInjection(tiny_sae(d_in=32), mid_model=mid, final_model=final, layer=1)
    names_problem_and_fix(e.value, "d_in=32", "d_model=16", fix=("trained on this model",))


def test_sae_at_a_different_hook():
    from sae_bilingual.intervention.hook import FeatureInjection

    mid, final = tiny_lm(), tiny_lm(seed=1)
    with pytest.raises(SAEFileError) as e:
        FeatureInjection(tiny_sae(hook="blocks.0.hook_resid_post"), mid_model=mid, final_model=final, layer=2)
    names_problem_and_fix(e.value, "blocks.0.hook_resid_post", "paper layer 2", fix=("pass layer=1",))

