"""The budget tables (the other tables: tests/test_study_report.py and the chapters' checks)."""
from fim_attention.study.budget import budget_fits, by_budget
from fim_attention.study.tables import budget_gap_markdown, budget_table_markdown
from study_common import _budget_study, _power


def test_budget_tables():
    lim = {"standard": 1.30, "mla": 1.40}
    SB = by_budget([_budget_study(n, lim, seeds=(0, 1, 2) if n == 2500 else (0,)) for n in (1250, 2500, 5000, 10000)])
    t = budget_table_markdown(SB)
    row = next(l for l in t.splitlines() if l.startswith("| standard |"))
    assert f"{_power(10000, 1.3):.3f}" in row and "1.300 [1.300, 1.300]" in row
    f = budget_fits(SB)["standard"]
    assert f"{f['converged_steps']:,.0f}" in row and f"{f['converged_steps'] * 0.15 / 3600:.1f} h" in row
    assert "seed sd (2,500 steps)" in t and "| 0.0020 |" in row  # seeds differ by 0.002 each
    g = budget_gap_markdown(SB)
    row = next(l for l in g.splitlines() if l.startswith("| MLA − standard"))
    assert f"{100 * (1.4 / 1.3 - 1):+.1f}% [" in row
    assert "KVSplice" not in g  # pairs with a missing variant are left out
    two = by_budget([_budget_study(n, lim) for n in (2500, 5000)])
    assert "< 3 budgets" in budget_table_markdown(two)
