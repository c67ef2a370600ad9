"""Budget scaling: the power-law fit, its flags and bad inputs, gathering one seed across studies, the recipe guard."""
import math

import numpy as np
import pytest

from fim_attention.study.budget import budget_fit, budget_fits, by_budget
from study_common import _budget_study, _power


@pytest.mark.parametrize("k", [3, 4, 6])
@pytest.mark.parametrize("truth", [(1.30, 40.0, 0.6), (0.9, 3.0, 0.25), (2.2, 500.0, 1.5)])
def test_budget_fit_recovers_a_power_law(k, truth):
    n = 1250.0 * 2.0 ** np.arange(k)
    f = budget_fit(n[::-1], _power(n[::-1], *truth))  # any order
    assert f["ok"] and f["steps"] == sorted(n.tolist())
    assert f["l_inf"] == pytest.approx(truth[0], abs=1e-7) and f["alpha"] == pytest.approx(truth[2], rel=1e-5)
    assert f["a"] == pytest.approx(truth[1], rel=1e-4) and f["rms"] < 1e-9
    top = n[-1]
    assert f["next_doubling"] == pytest.approx((_power(2 * top, *truth) - _power(top, *truth)) / _power(top, *truth), abs=1e-9)
    g = f["converged_steps"]  # the first doubling budget whose next doubling gains < 1%
    gain = lambda m: (_power(m, *truth) - _power(2 * m, *truth)) / _power(m, *truth)
    assert gain(g) < 0.01 and (g == top or gain(g / 2) >= 0.01)
    assert f["gap_to_limit"] == pytest.approx(_power(top, *truth) / truth[0] - 1, rel=1e-6)
    if k >= 4:
        assert f["holdout"]["predicted"] == pytest.approx(_power(top, *truth), abs=1e-7)
        assert np.allclose(f["l_inf_loo"], truth[0], atol=1e-6)
    else: assert "holdout" not in f

def test_budget_fit_three_doublings_is_aitken():
    L = [2.10, 1.95, 1.86]
    d1, d2 = L[0] - L[1], L[1] - L[2]
    r = d2 / d1
    assert budget_fit([1000, 2000, 4000], L)["l_inf"] == pytest.approx(L[2] - d2 * r / (1 - r), abs=1e-9)

def test_budget_fit_flags_losses_without_a_limit():
    n = [1250, 2500, 5000, 10000]
    for L, why in (([2.0, 2.1, 2.2, 2.3], "rises"), ([2.0, 1.8, 1.7, 1.75], "rises"),
                   (3.0 - 0.1 * np.log2(np.array(n) / 1250), "no plateau"),
                   ([1.769, 1.678, 1.548, 1.467], "below 0")):  # gains that do not shrink: the limit fit goes negative
        f = budget_fit(n, L)
        assert not f["ok"] and why in f["reason"] and math.isnan(f["l_inf"]) and math.isnan(f["converged_steps"])

@pytest.mark.parametrize("steps, losses", [([1, 2], [1, 1]), ([1, 1, 2], [3, 2, 1]), ([0, 1, 2], [3, 2, 1]),
                                           ([1, 2, 4], [3, np.nan, 1]), ([1, 2, 4], [3, 2]), ([1, 2, np.inf], [3, 2, 1])])
def test_budget_fit_rejects_bad_input(steps, losses):
    with pytest.raises(ValueError): budget_fit(steps, losses)

def test_budget_fits_gathers_one_seed_across_studies():
    def study(steps):
        runs = {}
        for v in ("standard", "mla"):
            for seed in (0, 1):
                runs[f"{v}_s{seed}"] = {"variant": v, "seed": seed, "steps": steps, "finished": True,
                                        "val_loss": float(_power(steps, 1.3 + 0.1 * (v == "mla"))) + 0.01 * seed}
        return {"study": {}, "runs": runs}
    S = {n: study(n) for n in (1250, 2500, 5000, 10000)}
    S[5000]["runs"]["mla_s0"]["finished"] = False  # unfinished runs are left out
    fits = budget_fits(S, seed=0)
    assert fits["standard"]["steps"] == [1250, 2500, 5000, 10000] and fits["mla"]["steps"] == [1250, 2500, 10000]
    assert fits["standard"]["l_inf"] == pytest.approx(1.3, abs=1e-6) and fits["mla"]["l_inf"] == pytest.approx(1.4, abs=1e-6)
    assert budget_fits(S, seed=1)["standard"]["l_inf"] == pytest.approx(1.31, abs=1e-6)
    assert budget_fits(S, seed=2) == {}

def test_by_budget_checks_the_recipe():
    a, b = _budget_study(2500, {"standard": 1.3}), _budget_study(5000, {"standard": 1.3})
    assert list(by_budget([b, a])) == [2500, 5000]  # sorted; eval_interval may differ
    with pytest.raises(ValueError, match="differ in more than their budget: lr"):
        by_budget([a, _budget_study(5000, {"standard": 1.3}, lr=1e-3)])
    with pytest.raises(ValueError, match="two studies with 2500"):
        by_budget([a, _budget_study(2500, {"standard": 1.3})])
    mixed = _budget_study(2500, {"standard": 1.3}); mixed["runs"]["standard_s0"]["steps"] = 100
    mixed["runs"]["x"] = dict(a["runs"]["standard_s0"])
    with pytest.raises(ValueError, match="mixes budgets"):
        by_budget([mixed])
