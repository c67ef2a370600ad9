"""The probe (fim_attention.probe): row selection, the one aggregation rule, feeding in chunks, per-head results."""
import math
import subprocess
import sys

import pytest
import torch
from torch.testing import assert_close

from fim_attention.data import mix_seed
from fim_attention.metrics import METRIC_NAMES, fim_metrics, reference_metrics
from fim_attention.probe import MODES, Probe, Rows, aggregate, aggregation_rule, full_spectrum_metrics
from families import make_family

same = lambda a, b: assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def causal_probs(B=2, H=3, T=24, seed=0, scale=3.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(B, H, T, T, generator=g, dtype=torch.float64) * scale)
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), -math.inf)
    return s.softmax(-1).to(dtype)                                           # (B, H, T, T)


def test_query_mode_is_the_engine_reduced_by_the_rule():
    p = causal_probs()
    B, H, T, _ = p.shape
    valid = torch.ones(B, T, dtype=torch.bool); valid[1, 17:] = False
    pr = Probe(rows="all").update(0, p, valid)
    direct = fim_metrics(p, 1.0, "query", normalize=True, valid=valid[:, None].expand(B, H, T))
    for k, v in pr.per_head().items():
        x = direct[k].transpose(0, 1).reshape(H, -1).double()
        want = x.nanmedian(-1).values if k in ("decay", "cond") else torch.stack(
            [r[torch.isfinite(r)].mean() for r in x])
        assert_close(v[0], want, rtol=1e-12, atol=0, equal_nan=True)
    t = pr.per_row()
    assert t["layer"].numel() == H * int(valid.sum())                       # padded rows never enter
    assert set(t) == {"layer", "head", "seq", "pos", *METRIC_NAMES}


def test_rule_median_for_decay_and_cond_counts_inf_and_nan():
    # regression: the old training callback averaged decay/cond by a finite mean, which drops +inf rows silently
    assert [aggregation_rule(k) for k in METRIC_NAMES] == ["finite mean"] * 4 + ["median"] * 2 + ["finite mean"]
    x = torch.tensor([[1.0, math.inf, math.inf, math.nan]])
    same(aggregate({"decay": x, "eigmax": x}, dims=1), {"decay": torch.tensor([math.inf]), "eigmax": torch.tensor([1.0])})
    p = causal_probs(B=1, H=2, T=12)
    pr = Probe().update(0, p)
    c = pr.counts()
    assert c["decay"]["inf"].tolist() == [[4, 4]]                            # rows 0..4 have rank < 5; row 0: decay NaN (eigmax 0)
    assert c["decay"]["nan"].tolist() == [[1, 1]] and c["energy_r8"]["nan"].tolist() == [[1, 1]]
    assert (c["eigmax"]["n"] == 12).all() and (c["eigmax"]["finite"] == 12).all()


@pytest.mark.parametrize("chunk", [1, 5, 24])
def test_chunked_rows_in_any_order_equal_one_update(chunk):
    p = causal_probs(T=24, seed=3)
    B, H, T, _ = p.shape
    whole = Probe(modes=("query", "mean", "reference"), rows={"query": "all", "mean": 20, "reference": 20}, seed=4)
    whole.update(2, p)
    parts = Probe(modes=("query", "mean", "reference"), rows={"query": "all", "mean": 20, "reference": 20}, seed=4)
    plan = parts.plan(2, torch.ones(B, T, dtype=torch.bool), H)
    pos = plan.positions.flip(0)                                             # chunks fed backwards
    for s in range(0, pos.numel(), chunk): parts.update_rows(plan, p[:, :, pos[s:s + chunk]], pos[s:s + chunk])
    parts.finish(plan)
    for m in whole.modes: same(parts.per_head(m), whole.per_head(m))
    assert parts.per_head()["eigmax"].shape == (3, H) and parts.per_head()["eigmax"][:2].isnan().all()   # layers 0, 1 unseen


def test_sampled_rows_are_the_published_draw_and_reference_is_bit_identical():
    p = causal_probs(B=2, H=3, T=30, seed=1)
    pr = Probe(modes=("mean", "reference"), rows=16, seed=mix_seed(1234, 200))
    pr.update(0, p); pr.update(1, p)
    for l in (0, 1):
        want = reference_metrics(p, 16, generator=torch.Generator().manual_seed(mix_seed(1234, 200) + l))
        for k, v in pr.per_head("reference").items(): same(v[l], want[k].double())
        g = torch.Generator().manual_seed(mix_seed(1234, 200) + l)
        rows = p.transpose(0, 1).reshape(3, 60, 30)
        pick = torch.rand(3, 60, generator=g).argsort(-1)[:, :16]
        mean = fim_metrics(rows.gather(1, pick[..., None].expand(3, 16, 30)), 1.0, "mean", normalize=True)
        for k, v in pr.per_head("mean").items(): assert_close(v[l], mean[k].double(), rtol=1e-12, atol=0, equal_nan=True)


def test_sampler_leaves_global_rng_alone_and_rows_last_at():
    p = causal_probs(B=1, H=2, T=10)
    state = torch.get_rng_state()
    Probe(rows=4).update(0, p)
    assert torch.equal(torch.get_rng_state(), state)
    pr = Probe(rows="last:3").update(0, p)
    assert pr.per_row()["pos"].unique().tolist() == [7, 8, 9]
    pr = Probe(rows=[0, -1]).update(0, p)
    assert pr.per_row()["pos"].unique().tolist() == [0, 9]


def test_group_sequence_gives_one_mean_fim_per_sequence():
    p = causal_probs(B=3, H=2, T=16, seed=2)
    pr = Probe(modes=("mean",), group="sequence").update(0, p)
    t = pr.per_row("mean")
    assert t["group"].tolist() == [0, 0, 1, 1, 2, 2] and (t["n"] == 16).all()
    one = fim_metrics(p, 1.0, "mean", normalize=True)                       # (B, H): mean FIM per sequence and head
    want = aggregate({k: v.transpose(0, 1).double() for k, v in one.items()}, dims=1)
    for k, v in pr.per_head("mean").items(): assert_close(v[0], want[k], rtol=1e-12, atol=0, equal_nan=True)


def test_full_spectrum_off_skips_only_what_needs_every_eigenvalue():
    assert full_spectrum_metrics("query") == ("eff_rank",) and full_spectrum_metrics("mean") == ("eff_rank", "cond")
    p = causal_probs(B=1, H=2, T=20)
    pr = Probe(modes=("query", "mean"), full_spectrum=False).update(0, p)
    assert "eff_rank" not in pr.per_head("query") and "cond" in pr.per_head("query")
    assert set(pr.per_head("mean")) == set(METRIC_NAMES) - {"eff_rank", "cond"}
    same(pr.per_head("query")["cond"], Probe().update(0, p).per_head()["cond"])


def test_families_rows_bidirectional_and_causal_flag():
    rows = make_family("dirichlet_1", 12, 32, torch.float64, 0).view(1, 1, 12, 32)   # 12 queries, 32 keys
    pr = Probe().update(0, rows)
    assert not pr.causal                                                     # mass after each query's own position
    assert_close(pr.per_row()["eigmax"], fim_metrics(rows[0, 0], normalize=True)["eigmax"], rtol=0, atol=0)


def test_measure_project_gpt_restores_mode_and_matches_manual_feed():
    from fim_attention.model import GPT, GPTConfig
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, dropout=0.1)).train()
    x = torch.randint(0, 256, (2, 16))
    pr = Probe(modes=("query", "mean"), rows={"mean": 8}, seed=11)
    res = pr.measure(gpt, x, step=3)
    assert gpt.training and pr.seed == 11
    gpt.eval()
    with torch.no_grad(): probs = gpt(x, capture=True)[-1]
    ref = Probe(modes=("query", "mean"), rows={"mean": 8}, seed=mix_seed(11, 3))
    for l, q in enumerate(probs): ref.update(l, q)
    for m in res: same(res[m], ref.summary()[m])


def test_wrong_inputs():
    with pytest.raises(ValueError, match="modes"): Probe(modes=())
    with pytest.raises(ValueError, match="modes"): Probe(modes=("query", "query"))
    with pytest.raises(ValueError, match="modes"): Probe(modes=("spectrum",))
    with pytest.raises(ValueError, match="unknown metric"): Probe(metrics=("eigmin",))
    with pytest.raises(ValueError, match="tau"): Probe(tau=0)
    with pytest.raises(ValueError, match="tau"): Probe(tau=True)
    with pytest.raises(ValueError, match="group"): Probe(group="head")
    with pytest.raises(ValueError, match="unknown modes"): Probe(rows={"qeury": 4})
    with pytest.raises(ValueError, match="seed"): Probe(seed=1.5)
    for bad in ("some", "last", 0, -1, True, 2.5, []): 
        with pytest.raises(ValueError): Rows.parse(bad)
    pr = Probe()
    with pytest.raises(ValueError, match=r"\(B, H, Tq, Tk\)"): pr.update(0, torch.rand(2, 3, 4))
    with pytest.raises(ValueError, match="Tq <= Tk"): pr.update(0, torch.rand(1, 1, 5, 4).softmax(-1))
    with pytest.raises(ValueError, match="layer"): pr.update(-1, causal_probs())
    with pytest.raises(ValueError, match="out of range"): Probe(rows=[30]).update(0, causal_probs(T=24))
    with pytest.raises(ValueError, match="modes"): pr.per_head("mean")
    plan = pr.plan(0, torch.ones(2, 24, dtype=torch.bool), 3)
    with pytest.raises(ValueError, match="rows must be"): pr.update_rows(plan, torch.rand(2, 3, 2, 24), torch.tensor([0]))
    pr.finish(plan)
    with pytest.raises(RuntimeError, match="finished"): pr.finish(plan)


def test_module_does_not_import_transformers():
    code = "import sys, fim_attention.probe; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
