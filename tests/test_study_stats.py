"""Seed statistics: paired comparisons against scipy, seed_stats, final values by layer."""
import math

import numpy as np
import pytest
from scipy import stats

from fim_attention.study.stats import compare, final_values, seed_stats
from study_common import _synthetic_summary


@pytest.mark.parametrize("seed", range(4))
def test_compare_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    n = 3 + seed
    a, b = rng.normal(1, 0.1, n), rng.normal(1.1, 0.1, n)
    c = compare(dict(enumerate(a)), dict(enumerate(b)))
    d = a - b
    hw = stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n)
    assert math.isclose(c["diff"], d.mean(), rel_tol=1e-12) and math.isclose(c["ci_hi"] - c["diff"], hw, rel_tol=1e-12)
    assert math.isclose(c["p"], stats.ttest_rel(a, b).pvalue, rel_tol=1e-9)
    assert math.isclose(c["rel"], d.mean() / b.mean(), rel_tol=1e-12)

def test_compare_pairs_only_common_finite_seeds():
    c = compare({0: 1.0, 1: 2.0, 2: math.nan, 5: 1.0}, {0: 0.5, 1: 1.0, 2: 1.0})
    assert c["seeds"] == [0, 1] and c["n"] == 2 and math.isclose(c["diff"], 0.75)

def test_seed_stats():
    s = seed_stats([1.0, 2.0, 3.0, None, math.nan])
    assert (s["mean"], s["std"], s["n"]) == (2.0, 1.0, 3)
    assert math.isclose(s["ci95"], stats.t.ppf(0.975, 2) / math.sqrt(3))
    assert seed_stats([])["n"] == 0 and math.isnan(seed_stats([1.0])["std"])

def test_final_values_layer_selection():
    s = _synthetic_summary({"ra_mla": {0: 0.3}})
    s["runs"]["ra_mla_s0"]["fim"]["ref"]["eigmax"] = [[0.1, 0.3]]
    assert final_values(s, "fim:ref:eigmax", "reversed")["ra_mla"][0] == 0.3
    assert final_values(s, "fim:ref:eigmax", "standard")["ra_mla"][0] == 0.1
    assert math.isclose(final_values(s, "fim:ref:eigmax")["ra_mla"][0], 0.2)
    with pytest.raises(ValueError):
        final_values(s, "fim:ref:eigmax", "odd")
