"""Tests for fim_attention.metrics: definitions against the float64 oracles, edge cases, bad input,
shapes and dtypes, the reference system's definition, and aggregation for logging."""
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from fim_attention.metrics import (METRIC_NAMES, RollingWindow, finite_mean, finite_std, fim_metrics,
                                   fisher_log_dict, lambda_plus_min, mean_support_rank, metric_names,
                                   metrics_from_eigvals, numerical_rank, reduce_metrics, reference_metrics,
                                   support_rank)
from fim_attention.spectrum import fim_eigvalsh
from fim_attention.oracle import mpmath_eigvalsh, scipy_eigvalsh, scipy_mean_fim_eigvalsh

from families import FAMILIES, make_family

F64, F32 = torch.float64, torch.float32
# Relative tolerance of a metric computed by the engine vs the same metric from oracle eigenvalues:
# float64 eigenvalues are required to 1e-10, float32 input to 1e-6 per eigenvalue (issue 3).
RTOL = {F64: 1e-9, F32: 2e-5}


def oracle_metrics(p, tau=1.0, ranks=(8, 16)):
    "Metrics from SciPy's dense float64 eigenvalues of the (float64 copy of the) same input."
    lam = torch.from_numpy(scipy_eigvalsh(p.double(), tau=tau))
    trace = (p.double() * (1 - p.double())).sum(-1) / tau**2
    return lam, metrics_from_eigvals(lam, trace, ranks, rank=support_rank(p))


def certified(lam, rank, j, dtype=F64):
    """Rows where oracle eigenvalue j (0-based, per row) is certified: far above dense float64's absolute
    error (~1e-16 lambda_1: >= 1e-5 lambda_1 certifies 1e-10 relative) and, for float32, a normal number
    (subnormals carry no relative accuracy)."""
    lj = lam.gather(-1, j.clamp(0, lam.shape[-1] - 1)[..., None]).squeeze(-1)
    return (j < 0) | (j >= rank) | ((lj >= 1e-5 * lam[..., 0]) & (lj >= torch.finfo(dtype).tiny))


def assert_metric_close(got, want, rtol, mask=None, atol=0.0):
    if mask is not None: got, want = got[mask], want[mask]
    torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=atol, equal_nan=True)


# ---------------------------------------------------------------- agreement with the oracles

@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("T", [2, 7, 64])
@pytest.mark.parametrize("family", FAMILIES)
def test_query_metrics_match_scipy_oracle(family, T, dtype):
    p = make_family(family, 6, T, dtype, seed=1)  # float32 rows sum to 1 only within float32 rounding
    m = fim_metrics(p)
    lam, mo = oracle_metrics(p)                   # truth: float64 spectrum of the same (rounded) input
    rank = support_rank(p)
    rtol = RTOL[dtype]
    sub = 100 * torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps   # 100 subnormal spacings
    for key in ("eigmax", "trace"):
        assert_metric_close(m[key], mo[key], rtol, atol=sub)
    # ratios of the top of the spectrum to the trace, and the entropy (terms of eigenvalues below the
    # oracle's noise contribute < 1e-13): certified wherever the trace is a normal number
    normal = (mo["trace"] >= torch.finfo(dtype).tiny) | (mo["trace"] == 0)   # zero: exact, NaN metrics
    for key in ("energy_r8", "energy_r16", "eff_rank"):
        assert_metric_close(m[key], mo[key], max(rtol, 1e-10), normal)
    # decay and cond divide by a small eigenvalue: compare where the oracle certifies it
    ok5 = certified(lam, rank, torch.full_like(rank, 4), dtype) & normal
    assert_metric_close(m["decay"], mo["decay"], rtol, ok5)
    okc = certified(lam, rank, rank - 1, dtype) & normal
    assert_metric_close(m["cond"], mo["cond"], rtol, okc)
    if family in ("dirichlet_1", "dirichlet_10", "ties", "uniform", "sink_uniform", "causal"):
        assert okc.all() and ok5.all()  # these families are certified everywhere: the test compared every row


@pytest.mark.parametrize("family", ["dirichlet_0.05", "saturated", "peaked_1-1e-6", "near_ties"])
def test_query_metrics_match_mpmath_on_hard_rows(family):
    "Where dense float64 cannot certify the small eigenvalues, high precision does (T small)."
    p = make_family(family, 4, 8, F64, seed=2)
    keep = (p.where(p > 0, 1).amin(-1) > 1e-80)          # dps below covers 80 decades
    p = p[keep]
    assert p.shape[0] >= 2, "family generator changed: too few rows left"
    dps = 120
    lam = torch.from_numpy(np.asarray(mpmath_eigvalsh(p, dps=dps), dtype=np.float64))
    trace = (p * (1 - p)).sum(-1)
    mo = metrics_from_eigvals(lam, trace, rank=support_rank(p))
    m = fim_metrics(p)
    for key in METRIC_NAMES:
        assert_metric_close(m[key], mo[key], 1e-9)


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("family", ["dirichlet_1", "dirichlet_10", "causal", "sink_uniform", "peaked_0.9"])
def test_mean_metrics_match_scipy_oracle(family, dtype):
    H, N, T = 3, 10, 24
    p = make_family(family, H * N, T, F64, seed=3).reshape(H, N, T).to(dtype)
    p = p / p.sum(-1, keepdim=True)
    m = fim_metrics(p, mode="mean")
    assert all(v.shape == (H,) and v.dtype == dtype for v in m.values())
    lam = torch.from_numpy(scipy_mean_fim_eigvalsh(p.double()))
    trace = (p.double() * (1 - p.double())).sum(-1).mean(-1)
    mo = metrics_from_eigvals(lam, trace, rank=mean_support_rank(p))
    for key in METRIC_NAMES:
        assert_metric_close(m[key], mo[key], RTOL[dtype])


def test_mean_metrics_exclude_invalid_rows():
    H, N, T = 2, 8, 16
    p = make_family("dirichlet_1", H * N, T, F64, seed=4).reshape(H, N, T)
    valid = torch.ones(H, N, dtype=torch.bool)
    valid[0, 5:] = False
    p[0, 6:] = 0  # padding rows: all zeros, allowed because they are marked invalid
    m = fim_metrics(p, mode="mean", valid=valid)
    ref0 = fim_metrics(p[0, :5], mode="mean")
    ref1 = fim_metrics(p[1], mode="mean")
    for key in METRIC_NAMES:
        assert_metric_close(m[key][0], ref0[key], 1e-12)
        assert_metric_close(m[key][1], ref1[key], 1e-12)


def test_top_k_path_equals_full_path():
    "Asking only for metrics that need the top k must not change them."
    p = make_family("dirichlet_1", 5, 40, F64, seed=5)
    full = fim_metrics(p)
    part = fim_metrics(p, which=("eigmax", "trace", "energy_r8", "energy_r16", "decay"))
    assert set(part) == {"eigmax", "trace", "energy_r8", "energy_r16", "decay"}
    for key in part:
        assert_metric_close(part[key], full[key], 1e-12)


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("family", ["dirichlet_0.05", "dirichlet_1", "peaked_1-1e-6", "ties", "near_ties", "causal",
                                    "sink_uniform", "uniform", "saturated"])
def test_lambda_plus_min_is_lambda_r_of_the_full_spectrum(family, dtype):
    "One secular root per row gives exactly the engine's full-spectrum lambda_r (ties deflated, float32 tiny gaps)."
    p = make_family(family, 8, 33, dtype, seed=10)
    r = support_rank(p)
    full = fim_eigvalsh(p)
    want = full.gather(-1, (r - 1).clamp_min(0)[..., None]).squeeze(-1).where(r >= 1, math.nan)
    got = lambda_plus_min(p)
    assert got.dtype == dtype and got.shape == (8,)
    torch.testing.assert_close(got, want, rtol=4 * torch.finfo(dtype).eps, atol=0, equal_nan=True)
    # the cheap path (top-k + one root) gives the same cond as the full path
    cheap = fim_metrics(p, which=("eigmax", "cond"))["cond"]
    torch.testing.assert_close(cheap, fim_metrics(p)["cond"], rtol=4 * torch.finfo(dtype).eps, atol=0, equal_nan=True)


def test_lambda_plus_min_tau_and_valid():
    p = make_family("dirichlet_1", 4, 9, F64, seed=11)
    valid = torch.tensor([True, False, True, True])
    a = lambda_plus_min(p, tau=0.5, valid=valid)
    assert a[1].isnan()
    torch.testing.assert_close(a[valid], 4 * lambda_plus_min(p[valid]), rtol=1e-14, atol=0)
    assert lambda_plus_min(torch.tensor([1.0, 0.0], dtype=F64)).isnan()          # m = 1: no tangent space
    assert lambda_plus_min(torch.tensor([0.5, 0.5], dtype=F64)) == 0.5            # m = 2: the one nonzero eigenvalue is the trace, 1/2


# ---------------------------------------------------------------- definitions and edge cases

def test_hand_spectrum():
    lam = torch.tensor([4.0, 2.0, 1.0, 1.0, 0.0], dtype=F64)
    m = metrics_from_eigvals(lam, ranks=(2, 8))
    assert list(m) == ["eigmax", "trace", "energy_r2", "energy_r8", "decay", "cond", "eff_rank"]
    assert m["eigmax"] == 4 and m["trace"] == 8 and m["energy_r2"] == 0.75 and m["energy_r8"] == 1
    assert m["decay"] == math.inf and m["cond"] == 4
    q = torch.tensor([0.5, 0.25, 0.125, 0.125], dtype=F64)
    assert torch.isclose(m["eff_rank"], torch.exp(-(q * q.log()).sum()))


def test_edge_rows():
    E = torch.tensor([[1.0, 0, 0, 0, 0, 0],
                      [0.5, 0.5, 0, 0, 0, 0],
                      [0.25, 0.25, 0.25, 0.25, 0, 0],
                      [1 / 6] * 6], dtype=F64)
    m = fim_metrics(E)
    # one-hot: zero matrix
    assert m["eigmax"][0] == 0 and m["trace"][0] == 0
    for key in ("energy_r8", "energy_r16", "decay", "cond", "eff_rank"):
        assert m[key][0].isnan()
    # two keys: rank 1
    assert m["cond"][1] == 1 and m["eff_rank"][1] == 1 and m["decay"][1] == math.inf and m["energy_r8"][1] == 1
    assert torch.isclose(m["eigmax"][1], torch.tensor(0.5, dtype=F64))
    # ties / uniform: all nonzero eigenvalues equal -> eff_rank = rank, cond = 1
    torch.testing.assert_close(m["eff_rank"][2:], torch.tensor([3.0, 5.0], dtype=F64))
    torch.testing.assert_close(m["cond"][2:], torch.ones(2, dtype=F64))
    assert m["decay"][3] == 1


def test_single_key():
    m = fim_metrics(torch.tensor([1.0], dtype=F64))
    assert m["eigmax"] == 0 and m["trace"] == 0 and m["cond"].isnan() and m["eff_rank"].isnan()


def test_uniform_closed_form():
    T = 50
    m = fim_metrics(torch.full((T,), 1.0 / T, dtype=F64), tau=0.5)
    # F = (I/T - 11^T/T^2)/tau^2: eigenvalue 1/(T tau^2) with multiplicity T-1
    torch.testing.assert_close(m["eigmax"], torch.tensor(4.0 / T, dtype=F64))
    torch.testing.assert_close(m["trace"], torch.tensor(4.0 * (T - 1) / T, dtype=F64))
    torch.testing.assert_close(m["energy_r8"], torch.tensor(8 / (T - 1), dtype=F64))
    torch.testing.assert_close(m["eff_rank"], torch.tensor(float(T - 1), dtype=F64))
    assert torch.isclose(m["decay"], torch.tensor(1.0, dtype=F64)) and torch.isclose(m["cond"], torch.tensor(1.0, dtype=F64))


def test_decay_for_short_rows_is_inf():
    "T < 5: lambda_5 := 0 (the padding convention), so decay = +inf, like any row of rank < 5."
    assert fim_metrics(torch.tensor([0.5, 0.3, 0.2], dtype=F64))["decay"] == math.inf
    assert fim_metrics(torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=F64))["decay"] == math.inf
    assert fim_metrics(torch.tensor([0.3, 0.25, 0.2, 0.15, 0.1], dtype=F64))["decay"] == math.inf   # rank 4
    assert math.isfinite(fim_metrics(torch.full((6,), 1 / 6, dtype=F64))["decay"])


def test_tau_scaling():
    p = make_family("dirichlet_1", 4, 20, F64, seed=6)
    a, b = fim_metrics(p, tau=1.0), fim_metrics(p, tau=0.25)
    for key in ("eigmax", "trace"):
        torch.testing.assert_close(b[key], a[key] * 16, rtol=1e-12, atol=0)
    for key in ("energy_r8", "energy_r16", "decay", "cond", "eff_rank"):
        torch.testing.assert_close(b[key], a[key], rtol=1e-9, atol=0)


@settings(max_examples=40, deadline=None)
@given(alpha=st.sampled_from([0.3, 1.0, 5.0]), T=st.integers(1, 12), pad=st.integers(1, 5), seed=st.integers(0, 10**6))
def test_invariant_under_zero_padding_and_permutation(alpha, T, pad, seed):
    rng = np.random.default_rng(seed)
    p = torch.from_numpy(rng.dirichlet(np.full(T, alpha)) if T > 1 else np.ones(1))
    p = p / p.sum()
    q = torch.cat([p, torch.zeros(pad, dtype=F64)])[torch.from_numpy(rng.permutation(T + pad))]
    a, b = fim_metrics(p), fim_metrics(q)
    for key in METRIC_NAMES:
        torch.testing.assert_close(b[key], a[key], rtol=1e-9, atol=0, equal_nan=True)


@settings(max_examples=30, deadline=None)
@given(alpha=st.floats(0.2, 20.0), T=st.integers(2, 40), zeros=st.integers(0, 5), tau=st.floats(0.1, 5.0),
       seed=st.integers(0, 10**6))
def test_property_metrics_match_oracle(alpha, T, zeros, tau, seed):
    "Random Dirichlet rows with random exact zeros and temperature: every certified metric matches SciPy."
    rng = np.random.default_rng(seed)
    x = rng.dirichlet(np.full(T, alpha))
    x[rng.permutation(T)[:min(zeros, T - 1)]] = 0
    p = torch.from_numpy(x / x.sum())[None]
    m = fim_metrics(p, tau=tau)
    lam, mo = oracle_metrics(p, tau=tau)
    r = support_rank(p)
    for key in ("eigmax", "trace", "energy_r8", "energy_r16", "eff_rank"):
        assert_metric_close(m[key], mo[key], 1e-9)
    assert_metric_close(m["decay"], mo["decay"], 1e-9, certified(lam, r, torch.full_like(r, 4)))
    assert_metric_close(m["cond"], mo["cond"], 1e-9, certified(lam, r, r - 1))


def test_support_rank_and_structural_zeros_match_oracle():
    q = torch.tensor([0.4, 0.3, 0.0, 0.2, 0.0, 0.1], dtype=F64)
    lam = torch.from_numpy(scipy_eigvalsh(q))
    assert support_rank(q) == 3
    assert (lam[:3] > 1e-3).all() and (lam[3:].abs() < 1e-15).all()
    ps = q.sort(descending=True).values
    assert ps[3] <= lam[2] <= ps[2]  # lambda+_min in its interlacing bracket
    torch.testing.assert_close(fim_metrics(q)["cond"], lam[0] / lam[2], rtol=1e-12, atol=0)


def test_mean_support_rank_components():
    blk = torch.zeros(2, 5, 9, dtype=F64)
    blk[0, :2, :3] = 1 / 3
    blk[0, 2:4, 3:6] = 1 / 3
    blk[0, 4, 6:8] = 0.5            # key 8 never attended
    blk[1] = torch.tril(torch.ones(5, 9, dtype=F64), 4)
    blk[1] = blk[1] / blk[1].sum(-1, keepdim=True)
    r = mean_support_rank(blk)
    assert r.tolist() == [8 - 3, 9 - 1]   # |U| - components
    lam = torch.from_numpy(scipy_mean_fim_eigvalsh(blk))
    for h in range(2):
        assert (lam[h, : r[h]] > 1e-6).all() and (lam[h, r[h]:].abs() < 1e-14).all()
    # a chain of overlapping supports: one component, found by the propagation
    chain = torch.zeros(7, 8, dtype=F64)
    for i in range(7): chain[i, i:i + 2] = 0.5
    assert mean_support_rank(chain) == 7
    assert mean_support_rank(chain, torch.tensor([True, True, False, True, True, True, True])) == 6


def test_metrics_from_eigvals_truncated():
    lam_full = torch.tensor([5.0, 4, 3, 2, 1, 0.5, 0.25, 0.125, 0.0625, 0.03125], dtype=F64)
    tr = lam_full.sum()
    full = metrics_from_eigvals(lam_full, ranks=(2, 8, 16), rank=torch.tensor(10))
    part = metrics_from_eigvals(lam_full[:6], tr, ranks=(2, 8, 16), rank=torch.tensor(10))
    assert part["eigmax"] == full["eigmax"] and part["decay"] == full["decay"]
    torch.testing.assert_close(part["energy_r2"], full["energy_r2"])
    # needs more than the top 6 -> NaN, never a wrong number
    for key in ("energy_r8", "energy_r16", "cond", "eff_rank"):
        assert part[key].isnan() and not full[key].isnan()
    # but rank <= k is known: energy 1, cond available
    low = metrics_from_eigvals(lam_full[:6], lam_full[:3].sum(), ranks=(8,), rank=torch.tensor(3))
    assert low["energy_r8"] == 1 and low["cond"] == 5 / 3


def test_numerical_rank_and_noise():
    lam = torch.tensor([[1.0, 0.5, 1e-17, -1e-17], [0.0, 0.0, 0.0, 0.0]], dtype=F64)
    assert numerical_rank(lam).tolist() == [2, 0]
    m = metrics_from_eigvals(lam)
    assert m["cond"][0] == 2 and m["cond"][1].isnan() and m["energy_r8"][1].isnan()


def test_trace_zero_energy_nan_and_explicit_trace():
    m = metrics_from_eigvals(torch.zeros(3, dtype=F64))
    assert m["trace"] == 0 and m["energy_r8"].isnan() and m["eff_rank"].isnan() and m["decay"].isnan()


# ---------------------------------------------------------------- shapes, dtypes, masks, bad input

@pytest.mark.parametrize("dtype,out", [(F64, F64), (F32, F32), (torch.float16, F32), (torch.bfloat16, F32)])
def test_shapes_and_dtypes(dtype, out):
    p = torch.softmax(torch.randn(2, 3, 5, 16, generator=torch.Generator().manual_seed(0)), -1).to(dtype)
    q = fim_metrics(p, normalize=True)
    assert list(q) == list(METRIC_NAMES)
    assert all(v.shape == (2, 3, 5) and v.dtype == out for v in q.values())
    mm = fim_metrics(p, mode="mean", normalize=True, ranks=(4,))
    assert list(mm) == list(metric_names((4,)))
    assert all(v.shape == (2, 3) and v.dtype == out for v in mm.values())


def test_masked_rows_give_nan():
    p = make_family("dirichlet_1", 4, 10, F64, seed=7)
    p[2] = 0
    valid = torch.tensor([True, True, False, True])
    m = fim_metrics(p, valid=valid)
    ref = fim_metrics(p[valid])
    for key in METRIC_NAMES:
        assert m[key][2].isnan()
        assert_metric_close(m[key][valid], ref[key], 1e-12)
    g = fim_metrics(torch.zeros(2, 3, 10, dtype=F64), mode="mean", valid=torch.zeros(2, 3, dtype=torch.bool))
    assert all(v.isnan().all() for v in g.values())


def test_normalize():
    p = make_family("dirichlet_1", 3, 12, F64, seed=8)
    torch.testing.assert_close(fim_metrics(p * 3.5, normalize=True)["eff_rank"], fim_metrics(p)["eff_rank"])


@pytest.mark.parametrize("bad,kw,match", [
    (torch.tensor([0.5, 0.6]), {}, "sum"),
    (torch.tensor([0.5, float("nan")]), {}, "(?i)nan"),
    (torch.tensor([1.5, -0.5]), {}, "(?i)negative"),
    (torch.tensor([1, 0]), {}, "(?i)dtype|integer"),
    (torch.zeros(2, 3), {}, "(?i)zero|sum|valid"),                 # all-zero rows need `valid`
    (torch.tensor([0.5, 0.5]), dict(tau=0.0), "tau"),
    (torch.tensor([0.5, 0.5]), dict(tau=float("nan")), "tau"),
    (torch.tensor([0.5, 0.5]), dict(tau=True), "tau"),
    (torch.tensor([0.5, 0.5]), dict(mode="head"), "mode"),
    (torch.tensor([0.5, 0.5]), dict(mode="mean"), "mean"),
    (torch.tensor([0.5, 0.5]), dict(ranks=(0,)), "ranks"),
    (torch.tensor([0.5, 0.5]), dict(ranks=()), "ranks"),
    (torch.tensor([0.5, 0.5]), dict(ranks=(8, 8)), "ranks"),
    (torch.tensor([0.5, 0.5]), dict(which=["spectral_gap"]), "unknown metric"),
])
def test_bad_input_raises(bad, kw, match):
    with pytest.raises(ValueError, match=match):
        fim_metrics(bad, **kw)


def test_metrics_from_eigvals_bad_input():
    with pytest.raises(ValueError): metrics_from_eigvals(torch.tensor([1, 0]))
    with pytest.raises(ValueError): metrics_from_eigvals(torch.zeros(0))
    with pytest.raises(ValueError): metrics_from_eigvals(torch.ones(3), which=["nope"])


# ---------------------------------------------------------------- the reference system's definition

def test_reference_metrics_definition():
    B, H, T = 1, 3, 32
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(B, H, T, T, generator=g) + torch.triu(torch.full((T, T), -math.inf), 1), -1)
    ref = reference_metrics(probs, n_samples=64, return_eigvals=True)       # B*T = 32 <= 64: every row used
    ours = fim_metrics(probs[0], mode="mean")  # float32 in (float64 inside the engine), float32 out
    torch.testing.assert_close(ref["eigmax"], ours["eigmax"], rtol=1e-5, atol=0)
    torch.testing.assert_close(ref["trace"], ours["trace"], rtol=1e-5, atol=0)
    torch.testing.assert_close(ref["energy_r8"], ours["energy_r8"], rtol=1e-5, atol=0)
    assert ref["eigvals"].shape == (H, T) and ref["eigvals"].dtype == F32
    # the artefact: lambda_min is float32 noise of the exact zero, so cond = eigmax / (|noise| + 1e-8)
    assert (ref["eigvals"][:, 0].abs() <= 8 * T * torch.finfo(F32).eps * ref["eigmax"]).all()
    r = ref["cond"] / (ref["eigmax"] * 1e8)
    assert ((r > 0.1) & (r <= 1 + 1e-6)).all()
    assert torch.isclose(ref["eigmax_mean"], ref["eigmax"].mean())


def test_reference_metrics_decay_and_cond_as_published():
    "decay = eigmax / (|lambda_5| + 1e-8), cond = eigmax / (|lambda_min| + 1e-8) of the dense float32 mean FIM (Nov-2025 code)."
    T = 32
    probs = torch.softmax(2 * torch.randn(1, 3, T, T, generator=torch.Generator().manual_seed(3)), -1)
    ref = reference_metrics(probs, return_eigvals=True)                     # B*T = 32 <= 64: every row used
    ev = ref["eigvals"]                                                     # (H, T) ascending
    assert torch.equal(ref["decay"], ev[:, -1] / (ev[:, -5].abs() + 1e-8))
    assert torch.equal(ref["cond"], ev[:, -1] / (ev[:, 0].abs() + 1e-8))
    ours = fim_metrics(probs[0], mode="mean")                               # lambda_5 >> 1e-8: the same decay as ours
    torch.testing.assert_close(ref["decay"], ours["decay"], rtol=1e-4, atol=0)
    assert reference_metrics(torch.full((1, 2, 4, 4), 0.25))["decay"].isnan().all()   # T < 5: no lambda_5


def test_rank_and_lambda_plus_min_live_in_spectrum():
    "Regression (issue 12): one implementation, in the engine's module, re-exported by metrics; one check_tau."
    import fim_attention.metrics as M, fim_attention.spectrum as S
    assert M.support_rank is S.support_rank and M.mean_support_rank is S.mean_support_rank
    assert M.lambda_plus_min is S.lambda_plus_min and M.check_tau is S.check_tau
    assert not hasattr(M, "_check_tau") and not hasattr(M, "_secular_pairs")


def test_reference_metrics_sampling_is_seeded():
    probs = torch.softmax(torch.randn(2, 2, 40, 40, generator=torch.Generator().manual_seed(1)), -1)
    a = reference_metrics(probs, n_samples=16, generator=torch.Generator().manual_seed(5))
    b = reference_metrics(probs, n_samples=16, generator=torch.Generator().manual_seed(5))
    c = reference_metrics(probs, n_samples=16, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a["eigmax"], b["eigmax"]) and not torch.equal(a["eigmax"], c["eigmax"])
    with pytest.raises(ValueError): reference_metrics(probs[0])


# ---------------------------------------------------------------- aggregation

def test_fisher_log_dict_keys_and_values():
    ph = {"eigmax": torch.tensor([[0.2, 0.4, 0.6], [0.1, math.nan, 0.3]], dtype=F64),
          "decay": torch.tensor([[2.0, math.inf, 4.0], [math.nan, math.nan, math.nan]], dtype=F64)}
    d = fisher_log_dict(ph, layers=[0, 5])
    expected = {f"fisher/layer{l}/head{h}/{m}" for l in (0, 5) for h in range(3) for m in ph}
    expected |= {f"fisher/layer{l}/{m}_{s}" for l in (0, 5) for m in ph for s in ("mean", "std")}
    expected |= {f"fisher/{m}_global_mean" for m in ph}
    assert set(d) == expected and all(isinstance(v, float) for v in d.values())
    assert math.isclose(d["fisher/layer0/eigmax_mean"], 0.4) and math.isclose(d["fisher/layer0/eigmax_std"], math.sqrt(0.08 / 3))
    assert math.isclose(d["fisher/layer5/eigmax_mean"], 0.2) and math.isclose(d["fisher/layer5/eigmax_std"], 0.1)
    assert math.isclose(d["fisher/eigmax_global_mean"], 1.6 / 5)
    assert d["fisher/layer0/head1/decay"] == math.inf and d["fisher/layer0/decay_mean"] == 3.0
    assert math.isnan(d["fisher/layer5/decay_mean"]) and math.isnan(d["fisher/layer5/decay_std"])
    assert d["fisher/decay_global_mean"] == 3.0
    assert "attn/layer0/head0/eigmax" in fisher_log_dict(ph, prefix="attn")


def test_fisher_log_dict_bad_shapes():
    with pytest.raises(ValueError): fisher_log_dict({"eigmax": torch.ones(3)})
    with pytest.raises(ValueError): fisher_log_dict({"eigmax": torch.ones(2, 3)}, layers=[0])


def test_finite_reductions_and_reduce_metrics():
    x = torch.tensor([[1.0, math.nan, 3.0], [math.inf, math.nan, -math.inf]], dtype=F64)
    assert finite_mean(x).item() == 2.0
    assert finite_mean(x, 1)[0] == 2.0 and finite_mean(x, 1)[1].isnan()
    assert finite_std(x, 1)[0] == 1.0 and finite_std(x, 1)[1].isnan()
    assert finite_mean(x, (0, 1), keepdim=True).shape == (1, 1)
    p = make_family("causal", 2 * 3 * 6, 6, F64, seed=9).reshape(2, 3, 6, 6)
    m = fim_metrics(p)
    red = reduce_metrics(m, dim=(0, -1))
    assert all(v.shape == (3,) for v in red.values())
    torch.testing.assert_close(red["eigmax"], m["eigmax"].mean((0, -1)))


def test_rolling_window():
    rw = RollingWindow(size=3)
    for i in range(5):
        rw.update({"a": float(i), "b": math.nan if i == 4 else 2.0 * i})
    assert rw.mean() == {"a_last3": 3.0, "b_last3": 5.0}
    assert len(rw) == 3
    rw.update({"c": math.inf})
    assert math.isnan(rw.mean()["c_last3"])
    state = json.loads(json.dumps(rw.state_dict(), allow_nan=True))
    rw2 = RollingWindow()
    rw2.load_state_dict(state)
    assert rw2.size == 3 and rw2.mean().keys() == rw.mean().keys()
    assert all(rw2.mean()[k] == v or (math.isnan(v) and math.isnan(rw2.mean()[k])) for k, v in rw.mean().items())
    rw2.update({"a": 100.0})
    assert rw2.mean()["a_last3"] == (3.0 + 4.0 + 100.0) / 3
    assert RollingWindow().mean() == {} and "last100" in next(iter(_one(RollingWindow())))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError): RollingWindow(bad)


def _one(rw):
    rw.update({"x": 1.0})
    return rw.mean()


# ---------------------------------------------------------------- the benchmark scripts run (small, on the CPU)

def _load_script(name):
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_check_runs_on_cpu(tmp_path):
    gc = _load_script("gpu_check")
    assert gc.main(["--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "gpu_check_cpu_quick.json").read_text())
    assert res["all_passed"] and len(res["accuracy"]) >= 20 and res["timing"] and res["mean_fim"]
    assert all(r["ratio_dense/top16"] > 0 for r in res["timing"])


def test_bench_spectrum_smoke(tmp_path):
    bs = _load_script("bench_spectrum")
    res = bs.main(["--quick", "--threads", "1", "--Ts", "32", "64", "--reps", "1", "--no-plot", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "bench_spectrum_quick.json").read_text())
    assert saved["summary"].keys() == {"1"} and set(saved["summary"]["1"]["ratios"]) == {"32", "64"}
    run = res["runs"][0]
    assert all(r["accuracy"]["top16_max_rel_err_vs_scipy"] < 1e-10 for r in run["per_T"])
    assert run["mean_fim"]["top_k_max_rel_diff"] < 1e-10
    assert abs(bs.slope([1, 2, 4], [3.0, 12.0, 48.0]) - 2) < 1e-12


# ---------------------------------------------------------------- normalize=True: rows read as exact distributions
def test_normalize_metrics_stable_under_rounding():
    g = torch.Generator().manual_seed(1)
    p = torch.softmax(torch.randn(128, 64, generator=g, dtype=torch.float64) * 12, -1).float()  # near-one-hot and tiny entries
    q = p * (1 + torch.finfo(F32).eps * 4 * (torch.rand(p.shape, generator=g, dtype=F32) - 0.5))  # 2-ulp noise
    a, b = fim_metrics(p, normalize=True), fim_metrics(q, normalize=True)
    for k in METRIC_NAMES:
        assert ((b[k].double() - a[k].double()).abs() / a[k].double().abs()).max() < 2e-6, k
    lit_a, lit_b = fim_metrics(p), fim_metrics(q)  # the literal floats: cond follows the rounding of the sum
    assert ((lit_b["cond"].double() - lit_a["cond"].double()).abs() / lit_a["cond"].double()).max() > 1e-2
    m64 = fim_metrics(p.double() / p.double().sum(-1, keepdim=True), normalize=True)
    for k in METRIC_NAMES:  # float32 input agrees with float64 on the same distributions
        assert ((a[k].double() - m64[k]).abs() / m64[k].abs()).max() < 2e-6, k


def test_normalize_trace_and_lambda_min_are_the_distributions():
    p = make_family("dirichlet_0.05", 8, 40, F32, seed=9) * 2.5
    lam = fim_eigvalsh(p.double() / p.double().sum(-1, keepdim=True), normalize=True)  # (8, 40) float64 reference
    m = fim_metrics(p, normalize=True)
    torch.testing.assert_close(m["trace"].double(), lam.sum(-1), rtol=2e-6, atol=1e-30)
    rank = support_rank(p)
    lmin = lam.gather(-1, (rank - 1).clamp_min(0)[:, None]).squeeze(-1)
    got = lambda_plus_min(p, normalize=True).double()
    ok = (rank >= 1) & (lmin > torch.finfo(F32).tiny * 2**10)
    assert ((got - lmin).abs() / lmin)[ok].max() < 2e-6


def test_reference_survives_float32_lapack_failure():
    "Regression: a saturated row's FIM made float32 LAPACK fail to converge and stopped an lr-sweep run in the Fisher callback."
    from fim_attention.metrics import reference_from_rows
    from fim_attention.spectrum import eigvalsh_f64_fallback
    pk = torch.softmax(30 * torch.randn(1, 256, generator=torch.Generator().manual_seed(3), dtype=torch.float64), -1).float()
    F = lambda q: torch.diag_embed(q) - q[..., :, None] * q[..., None, :]
    out = reference_from_rows(pk)
    torch.testing.assert_close(out["eigmax"].double(), torch.linalg.eigvalsh(F(pk[0].double()))[-1], rtol=1e-6, atol=0)
    A = torch.randn(4, 6, 6, generator=torch.Generator().manual_seed(0)); A = A + A.mT
    assert torch.equal(eigvalsh_f64_fallback(A), torch.linalg.eigvalsh(A))     # no failure: the plain call, bit for bit
    assert eigvalsh_f64_fallback(F(pk)).dtype == torch.float32
