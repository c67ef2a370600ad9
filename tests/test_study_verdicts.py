"""The verdict rules: sign and equivalence, and the claims' comparisons on a synthetic study."""
import math

import pytest

from fim_attention.study.recipe import LABELS
from fim_attention.study.verdicts import _direction, _equivalent, verdicts
from study_common import _synthetic_summary


def _mk(lo, hi, base=1.0):
    return {"ci_lo": lo, "ci_hi": hi, "rel_lo": lo / base, "rel_hi": hi / base}

@pytest.mark.parametrize("lo,hi,want,expected", [(-0.3, -0.1, "<", "holds"), (0.1, 0.3, "<", "does not hold"),
                                                 (-0.1, 0.1, "<", "inconclusive"), (0.1, 0.3, ">", "holds"),
                                                 (math.nan, 0.1, "<", "inconclusive")])
def test_direction_rule(lo, hi, want, expected):
    assert _direction(_mk(lo, hi), want) == expected

@pytest.mark.parametrize("lo,hi,expected", [(-0.05, 0.05, "holds"), (0.12, 0.3, "does not hold"),
                                            (-0.3, -0.11, "does not hold"), (-0.05, 0.15, "inconclusive")])
def test_equivalence_rule(lo, hi, expected):
    assert _equivalent(_mk(lo, hi), 0.1) == expected

def test_verdicts_follow_the_rules():
    # KVSplice 20% worse than MLA with tiny noise: claim 3 (quality) does not hold; RA+MLA clearly lower eigmax: claim 1 holds
    vals = {"mla": {0: 1.0, 1: 1.01, 2: 0.99}, "mla_kvsplice": {0: 1.2, 1: 1.21, 2: 1.2},
            "ra_mla": {0: 0.5, 1: 0.52, 2: 0.49}, "ra_mla_kvsplice": {0: 0.5, 1: 0.5, 2: 0.51},
            "standard": {0: 1.0, 1: 1.0, 2: 1.0}, "ra": {0: 1.0, 1: 1.001, 2: 0.999}}
    rows = verdicts(_synthetic_summary(vals))
    get = lambda claim, a, b, metric: next(r for r in rows if r["claim"] == claim and r["A"] == LABELS[a]
                                           and r["B"] == LABELS[b] and r["metric"] == metric)["verdict"]
    assert get(1, "ra_mla", "mla", "fim:ref:eigmax") == "holds" and get(1, "ra_mla", "mla", "fim:all:eigmax") == "holds"
    assert get(1, "ra", "standard", "fim:ref:eigmax") == "inconclusive"
    assert get(3, "mla_kvsplice", "mla", "val_loss") == "does not hold"
    assert get(3, "mla_kvsplice", "mla", "fim:ref:eigmax") == "does not hold"  # 20% apart: not "unchanged"
    assert get(2, "mla_kvsplice", "mla", "val_loss") == "holds"  # compressing costs 20%
