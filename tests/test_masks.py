"""Bad inputs: feature masks (sae_bilingual/intervention/masks.py: class_mask).

Moved from the catalogue of bad inputs (tests/bad_input_fixtures.py has its helpers)."""

from __future__ import annotations

import pandas as pd
import pytest

from sae_bilingual.errors import DataError
from tests.bad_input_fixtures import names_problem_and_fix


def test_class_with_fewer_than_m_features():
    from sae_bilingual.intervention.masks import class_mask

    df = pd.DataFrame({"cls": ["en"] * 5 + ["mixed"] * 2, "dead": [False] * 7})
    with pytest.raises(DataError) as e:
        class_mask(df, "mixed", m=3, seed=0)
    names_problem_and_fix(e.value, "'mixed'", "only 2", "m=3", fix=("lower m",))

