"""Tests of the spectrum engine (fim_attention.spectrum) against the oracles (fim_attention.oracle).

Which oracle certifies what:
- `mpmath_secular_eigvalsh` (90 digits, unfactored determinant ratio): every eigenvalue of every family, any T;
  itself checked against `mpmath_eigvalsh` (dense mpmath.eigsy) on small T below.
- `scipy_eigvalsh` (dense float64): only eigenvalues >= 64 eps lambda_1 / rtol, where its absolute error
  ~ eps lambda_1 is below rtol relative.
- float32 input: truth is the float64 spectrum of the same float32 numbers (engine in float64, itself certified).
"""
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st, HealthCheck

import functools

from fim_attention import spectrum
from fim_attention.spectrum import check_probs, mean_fim_eigvalsh, one_minus_sum, _secular_topk
from fim_attention.spectrum import fim_eigvalsh as _fim_eigvalsh

# This file certifies the torch path (the readable reference, every device); tests/test_kernel.py holds the compiled
# CPU kernel, the default for CPU tensors, to it and to the same oracles.
fim_eigvalsh = functools.partial(_fim_eigvalsh, method="secular")
from fim_attention.oracle import (scipy_eigvalsh, mpmath_eigvalsh, mpmath_secular_eigvalsh, scipy_mean_fim_eigvalsh)
from families import FAMILIES, make_family

EPS64 = np.finfo(np.float64).eps


@pytest.fixture(autouse=True)
def _no_solver_warnings():
    "A non-converged root warns: treat that as a failure everywhere here."
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*did not meet the tolerance.*")
        warnings.filterwarnings("error", message=".*max_restarts.*")
        yield


def rel_err(a, b):
    "Max relative error of a vs reference b on b's nonzero entries; b's zeros must be reproduced exactly."
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    nz = b != 0
    assert np.all(a[~nz] == 0), f"structural zeros not exact: {a[~nz]}"
    return float(np.max(np.abs(a[nz] - b[nz]) / np.abs(b[nz]), initial=0.0))


# ---------------------------------------------------------------- oracles agree with each other
@pytest.mark.parametrize("fam", [f for f in FAMILIES if f not in ("dirichlet_0.05", "saturated")])
def test_mpmath_oracles_agree(fam):
    p = make_family(fam, 2, 9, seed=11)
    sec, dense = mpmath_secular_eigvalsh(p), mpmath_eigvalsh(p)
    nz = sec != 0
    assert np.all(np.abs(dense[~nz]) < 1e-15)            # the literal null root is O(|1 - sum p|)
    assert np.max(np.abs(dense[nz] - sec[nz]) / sec[nz]) < 1e-14


def test_oracle_can_fail():
    "The comparison is not vacuous: a perturbed row is caught."
    p = make_family("dirichlet_1", 1, 8, seed=0)
    q = p.clone(); q[0, 0] *= 1 + 1e-9; q[0, 1] -= p[0, 0] * 1e-9
    assert rel_err(fim_eigvalsh(q, 8).numpy(), mpmath_secular_eigvalsh(p)) > 1e-11


# ---------------------------------------------------------------- float64 accuracy, every family
@pytest.mark.parametrize("T", [2, 3, 17, 64])
@pytest.mark.parametrize("fam", FAMILIES)
def test_float64_vs_mpmath(fam, T):
    p = make_family(fam, 2, T, seed=T)
    k = min(16, T)
    ours = fim_eigvalsh(p, k).numpy()
    assert rel_err(ours, mpmath_secular_eigvalsh(p, k)) <= 1e-10


@pytest.mark.parametrize("fam", FAMILIES)
def test_full_spectrum_vs_mpmath_and_scipy(fam):
    p = make_family(fam, 3, 40, seed=5)
    ours = fim_eigvalsh(p).numpy()                       # k=None: all T
    assert ours.shape == (3, 40)
    mp = mpmath_secular_eigvalsh(p)
    assert rel_err(ours, mp) <= 1e-10
    sp = scipy_eigvalsh(p)
    cert = mp >= 64 * EPS64 * mp[:, :1] / 1e-10           # where SciPy certifies relative 1e-10
    assert np.max(np.abs(ours - sp)[cert] / mp[cert]) <= 1e-10
    assert np.max(np.abs(ours - sp)) <= 64 * EPS64 * mp[:, 0].max()   # everywhere: SciPy's absolute accuracy


@pytest.mark.parametrize("method", ["secular", "dense"])
@pytest.mark.parametrize("fam", ["dirichlet_1", "peaked_0.9", "ties", "causal"])
def test_methods_agree_vs_scipy(fam, method):
    p = make_family(fam, 4, 50, seed=3)
    ours = fim_eigvalsh(p, 16, method=method).numpy()
    sp = scipy_eigvalsh(p)[:, :16]
    assert np.max(np.abs(ours - sp)) <= 64 * EPS64 * sp[:, 0].max()


@pytest.mark.slow
@pytest.mark.parametrize("fam", ["dirichlet_1", "peaked_1-1e-6"])
def test_large_T_top16_vs_mpmath(fam):
    "T = 2048, top 16, one row (the high-precision oracle costs ~10 s per row here)."
    p = make_family(fam, 1, 2048, seed=7)
    assert rel_err(fim_eigvalsh(p, 16).numpy(), mpmath_secular_eigvalsh(p, 16, dps=40)) <= 1e-10


def test_large_T_top16_vs_scipy():
    "T = 2048 against SciPy where it certifies (one row, ~1 s)."
    p = make_family("dirichlet_1", 1, 2048, seed=8)
    ours = fim_eigvalsh(p, 16).numpy()
    sp = scipy_eigvalsh(p)[:, :16]
    assert np.all(sp >= 64 * EPS64 * sp[:, :1] / 1e-10)
    assert np.max(np.abs(ours - sp) / sp) <= 1e-10


def _softmax_rows(n, T, dtype, seed, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(scale * torch.randn(n, T, generator=g, dtype=torch.float64), -1).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("k", [1, 16, 40])
def test_tail_power_sums_equal_plain_sums(dtype, k):
    "The far tail by power sums (O(J + K) per evaluation) gives the plain O(T) path's roots to a few ulps, rows of mixed J in one call."
    p = torch.cat([make_family(f, 6, 1024, dtype, seed=11) for f in
                   ("dirichlet_1", "dirichlet_0.05", "dirichlet_10", "peaked_0.999", "causal", "saturated")]
                  + [_softmax_rows(12, 1024, dtype, 3), _softmax_rows(6, 1024, dtype, 4, scale=0.3), _softmax_rows(4, 1024, dtype, 6, scale=0.05)])
    S = torch.sort(p, -1, descending=True).values
    from fim_attention.spectrum import _tail_split
    _, J = _tail_split(S, k)
    assert (J < 1024).sum() >= 20 and (J == 1024).any()                # both paths are exercised
    fast, its = _secular_topk(p, k, 2**28, return_iters=True, chunk_elems=2**14)
    plain = _secular_topk(p, k, 2**28, use_tail=False)
    m = plain > 0
    assert torch.equal(fast == 0, plain == 0)
    assert ((fast - plain).abs()[m] / plain[m]).max().item() <= 8 * torch.finfo(dtype).eps
    assert its.float()[its > 0].median() <= 5


def test_tail_power_sums_vs_mpmath():
    "Rows that use the tail, against the 90-digit oracle (T = 400)."
    p = torch.cat([_softmax_rows(1, 400, torch.float64, 5), make_family("dirichlet_0.05", 1, 400, seed=5)])
    from fim_attention.spectrum import _tail_split
    assert (_tail_split(torch.sort(p, -1, descending=True).values, 16)[1] < 400).all()
    assert rel_err(fim_eigvalsh(p, 16).numpy(), mpmath_secular_eigvalsh(p, 16, dps=40)) <= 1e-10


def test_full_spectrum_across_index_tiles():
    "k > 32: pairs are grouped into eigenvalue-index tiles with their own mask window; all T roots against mpmath, chunk-invariant."
    p = torch.cat([make_family("dirichlet_1", 1, 97, seed=13), make_family("near_ties", 1, 97, seed=13)])
    lam = fim_eigvalsh(p)
    assert rel_err(lam.numpy(), mpmath_secular_eigvalsh(p)) <= 1e-10
    assert torch.equal(lam, fim_eigvalsh(p, max_bytes=1))
    p32 = make_family("dirichlet_0.05", 3, 200, torch.float32, seed=13)
    assert torch.equal(fim_eigvalsh(p32, 150), fim_eigvalsh(p32, 150, max_bytes=1))


def _spy_aligned(monkeypatch):
    "Record what each call of the aligned path returned (None: it declined)."
    from fim_attention import spectrum
    calls, orig = [], spectrum._secular_aligned
    def spy(*a):
        r = orig(*a); calls.append(r); return r
    monkeypatch.setattr(spectrum, "_secular_aligned", spy)
    return calls


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T", [384, 1024])
def test_aligned_full_spectrum_equals_plain(dtype, T, monkeypatch):
    "Full spectra with the far poles above and below by power sums give the plain O(T) path's roots to a few ulps; chunk-invariant."
    p = torch.cat([make_family(f, 2, T, dtype, seed=17) for f in FAMILIES]
                  + [_softmax_rows(3, T, dtype, 7, scale=s) for s in (2, 4, 8)])
    calls = _spy_aligned(monkeypatch)
    fast, its = _secular_topk(p, T, 2**28, return_iters=True)
    assert any(c[0].any() for c in calls)                              # the aligned path ran (on the peaked rows)
    plain = _secular_topk(p, T, 2**28, use_tail=False)
    m = plain > 0
    assert torch.equal(fast == 0, plain == 0)
    assert ((fast - plain).abs()[m] / plain[m]).max().item() <= 8 * torch.finfo(dtype).eps
    assert its.float()[its > 0].median() <= 5
    assert torch.equal(fast, _secular_topk(p, T, 2**14 * T, max_iter=100))      # solve chunks of a few pairs: same bits
    small = _secular_topk(p, T, 2**28, chunk_elems=2**12)               # power sums in small batches of tiles: the prefix
    assert ((small - fast).abs()[m] / fast[m]).max().item() <= 2 * torch.finfo(dtype).eps   # lengths differ, within the bound


def test_aligned_full_spectrum_declines_flat_rows(monkeypatch):
    "Rows whose direct windows would cover most of T keep the tiled path (the power sums would not pay), also in a mixed batch."
    calls = _spy_aligned(monkeypatch)
    flat, peaked = _softmax_rows(4, 512, torch.float64, 2, scale=0.5), _softmax_rows(2, 512, torch.float64, 2, scale=6)
    p = torch.cat([flat, peaked])
    lam = fim_eigvalsh(p)
    taken = calls[0][0]
    rows = torch.sort(p, -1, descending=True).values
    need = (rows[:, 1:] < rows[:, :-1]) & (rows[:, 1:] > 0)
    row_of_pair = need.nonzero(as_tuple=True)[0]
    assert not taken[row_of_pair < 4].any() and taken[row_of_pair >= 4].all()
    plain = _secular_topk(p, 512, 2**28, use_tail=False)
    assert torch.equal(lam[:4], plain[:4])                                # the flat rows: the tiled path itself
    assert ((lam[4:] - plain[4:]).abs() / plain[4:].clamp_min(1e-300)).max() <= 8 * EPS64


def test_aligned_full_spectrum_vs_mpmath(monkeypatch):
    "The aligned path against the 40-digit oracle, all T = 256 roots of a peaked softmax row and a heavy-tailed Dirichlet row."
    p = torch.cat([_softmax_rows(1, 256, torch.float64, 9, scale=6), make_family("dirichlet_0.05", 1, 256, seed=9)])
    calls = _spy_aligned(monkeypatch)
    lam = fim_eigvalsh(p)
    assert all(c[0].all() for c in calls)
    assert rel_err(lam.numpy(), mpmath_secular_eigvalsh(p, dps=40)) <= 1e-10


# ---------------------------------------------------------------- float32 / half input
@pytest.mark.parametrize("T", [16, 256])
@pytest.mark.parametrize("fam", FAMILIES)
def test_float32_vs_float64_truth(fam, T):
    p32 = make_family(fam, 16, T, torch.float32, seed=T + 1)
    ours = fim_eigvalsh(p32, 16 if T > 16 else None)
    assert ours.dtype == torch.float32
    truth = _secular_topk(p32.double(), ours.shape[-1], 2**28)   # float64 spectrum of the same float32 numbers
    m = truth > torch.finfo(torch.float32).tiny * 2**10            # float32 keeps no relative precision in subnormals
    err = ((ours.double() - truth).abs() / truth)[m]
    assert err.numel() == 0 or err.max().item() <= 1e-6
    assert torch.all(ours[~m].double() <= torch.finfo(torch.float32).tiny * 2**11)


def test_float64_truth_of_float32_is_certified():
    "The float64 engine used as float32 truth above matches mpmath on float32-cast rows."
    p32 = make_family("peaked_1-1e-6", 2, 30, torch.float32, seed=9)
    assert rel_err(_secular_topk(p32.double(), 16, 2**28).numpy(), mpmath_secular_eigvalsh(p32.double(), 16)) <= 1e-10


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_input_computed_in_float32(dtype):
    p = make_family("dirichlet_1", 5, 24, seed=2).to(dtype)
    lam = fim_eigvalsh(p, 8)
    assert lam.dtype == torch.float32
    truth = _secular_topk(p.float().double(), 8, 2**28)
    assert ((lam.double() - truth).abs() / truth).max() <= 1e-6


# ---------------------------------------------------------------- structure: ties, zeros, tau, shapes, valid
def test_ties_and_zeros_exact():
    p = torch.tensor([[0.25, 0.25, 0.25, 0.25, 0.0], [0.5, 0.2, 0.2, 0.1, 0.0]], dtype=torch.float64)
    lam = fim_eigvalsh(p)
    assert lam[0, :3].eq(0.25).all() and lam[0, 3:].eq(0).all()
    assert lam[1, 1] == 0.2 and 0.1 < lam[1, 2] < 0.2 and lam[1, 3] == 0 and lam[1, 4] == 0
    lam32 = fim_eigvalsh(make_family("sink_uniform", 3, 100, torch.float32))
    tail = make_family("sink_uniform", 3, 100, torch.float32)[:, 1:2]
    assert torch.equal(lam32[:, 1:98], tail.expand(3, 97))      # multiplicity T-2 of the uniform tail, exactly


def test_near_ties_resolved():
    d = 0.3
    p = torch.tensor([[d * (1 + 1e-10), d, 1 - 2 * d - d * 1e-10]], dtype=torch.float64)
    lam = fim_eigvalsh(p)
    assert p[0, 1] < lam[0, 1] < p[0, 0]                        # strictly inside a gap of width 3e-11
    assert rel_err(lam.numpy(), mpmath_secular_eigvalsh(p)) <= 1e-12


def test_tau_scaling():
    p = make_family("dirichlet_1", 3, 20)
    assert torch.allclose(fim_eigvalsh(p, 5, tau=0.7), fim_eigvalsh(p, 5) / 0.49, rtol=1e-15, atol=0)


@pytest.mark.parametrize("shape", [(7,), (2, 7), (2, 3, 7), (1, 2, 2, 7)])
def test_batch_shapes(shape):
    p = torch.softmax(torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), -1)
    lam = fim_eigvalsh(p, 3)
    assert lam.shape == shape[:-1] + (3,)
    flat = fim_eigvalsh(p.reshape(-1, 7), 3)
    assert torch.equal(lam.reshape(-1, 3), flat)


def test_valid_rows_give_nan():
    p = make_family("causal", 6, 12, seed=4)
    p[2] = 0.0; p[4] = float("nan")                               # padding rows may hold anything
    valid = torch.tensor([True, True, False, True, False, True])
    lam = fim_eigvalsh(p, 4, valid=valid)
    assert lam[~valid].isnan().all() and not lam[valid].isnan().any()
    assert torch.equal(lam[valid], fim_eigvalsh(p[valid], 4))
    assert fim_eigvalsh(p, 4, valid=valid, method="dense")[~valid].isnan().all()


def test_chunking_does_not_change_results():
    p = make_family("dirichlet_0.05", 20, 64, seed=6)
    assert torch.equal(fim_eigvalsh(p, 10), fim_eigvalsh(p, 10, max_bytes=1))


def test_c0_compensated_sum():
    from fractions import Fraction
    p = make_family("dirichlet_1", 5, 333, seed=1)
    exact = np.array([float(1 - sum(Fraction(v) for v in r.tolist())) for r in p])
    assert np.allclose(one_minus_sum(p).numpy(), exact, rtol=1e-6, atol=1e-300)
    p32 = p.float()
    exact32 = np.array([float(1 - sum(Fraction(v) for v in r.tolist())) for r in p32.double()])
    assert np.allclose(one_minus_sum(p32).double().numpy(), exact32, rtol=1e-6, atol=0)


# ---------------------------------------------------------------- bad input
BAD = [
    (lambda: fim_eigvalsh(torch.tensor([0.5, float("nan"), 0.5])), "NaN"),
    (lambda: fim_eigvalsh(torch.tensor([0.5, float("inf"), 0.5])), "Inf"),
    (lambda: fim_eigvalsh(torch.tensor([1.5, -0.5])), "negative"),
    (lambda: fim_eigvalsh(torch.tensor([0.5, 0.4])), "sum to 1"),
    (lambda: fim_eigvalsh(torch.tensor(1.0)), "at least 1 dim"),
    (lambda: fim_eigvalsh(torch.zeros(3, 0)), "T = 0"),
    (lambda: fim_eigvalsh(torch.tensor([1, 0])), "floating"),
    (lambda: fim_eigvalsh(torch.tensor([1 + 0j, 0j])), "complex"),
    (lambda: fim_eigvalsh(torch.tensor([0.5, 0.5]), k=0), "k must satisfy"),
    (lambda: fim_eigvalsh(torch.tensor([0.5, 0.5]), k=3), "k must satisfy"),
    (lambda: fim_eigvalsh(torch.tensor([0.5, 0.5]), k=1.5), "k must be an int"),
    (lambda: fim_eigvalsh(torch.tensor([0.5, 0.5]), tau=0.0), "tau"),
    (lambda: fim_eigvalsh(torch.tensor([0.5, 0.5]), tau=-1.0), "tau"),
    (lambda: fim_eigvalsh(torch.tensor([0.5, 0.5]), tau=float("nan")), "tau"),
    (lambda: fim_eigvalsh(torch.tensor([0.5, 0.5]), method="qr"), "method"),
    (lambda: fim_eigvalsh(torch.zeros(2, 3)), "all-zero"),
    (lambda: fim_eigvalsh(torch.zeros(2, 3), normalize=True), "all-zero"),
    (lambda: fim_eigvalsh(torch.full((2, 3), 0.5), valid=torch.tensor([1, 0])), "bool"),
    (lambda: fim_eigvalsh(torch.full((2, 3), 1 / 3), valid=torch.tensor([True, True, False])), "broadcast"),
    (lambda: mean_fim_eigvalsh(torch.tensor([0.5, 0.5])), "(..., N, T)"),
    (lambda: mean_fim_eigvalsh(torch.full((2, 2), 0.5), method="arpack"), "method"),
    (lambda: mean_fim_eigvalsh(torch.full((2, 2), 0.5), k=5), "k must satisfy"),
]


@pytest.mark.parametrize("bad", [True, False, 0, -2, math.inf, math.nan, "1", None, 1j])
def test_check_tau_one_rule(bad):
    "Regression (issue 12): spectrum and metrics had two tau checks that disagreed on True; a bool is no temperature."
    from fim_attention.spectrum import check_tau, lambda_plus_min
    from fim_attention.metrics import fim_metrics
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    for f in (lambda: check_tau(bad), lambda: fim_eigvalsh(p, tau=bad), lambda: mean_fim_eigvalsh(p[None], tau=bad),
              lambda: lambda_plus_min(p, tau=bad), lambda: fim_metrics(p, tau=bad)):
        with pytest.raises(ValueError, match=r"tau must be a finite number > 0, got"):
            f()
    assert check_tau(2) == 2.0 and isinstance(check_tau(2), float)


@pytest.mark.parametrize("call,match", BAD, ids=[m for _, m in BAD])
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=None) as e:
        call()
    assert match in str(e.value), str(e.value)


def test_normalize_and_tolerance():
    p = torch.tensor([[2.0, 1.0, 1.0]])
    assert torch.allclose(fim_eigvalsh(p, normalize=True), fim_eigvalsh(p / 4))
    ok = torch.tensor([0.5, 0.5 + 1e-7], dtype=torch.float32)      # float32 rounding-level error: accepted
    check_probs(ok)
    with pytest.raises(ValueError, match="sum to 1"):
        check_probs(torch.tensor([0.5, 0.5 + 1e-7], dtype=torch.float64))


# ---------------------------------------------------------------- hypothesis: random rows vs the oracle
@st.composite
def rows(draw):
    T = draw(st.integers(2, 12))
    logits = draw(st.lists(st.floats(-40, 40, allow_nan=False), min_size=T, max_size=T))
    zeros = draw(st.lists(st.booleans(), min_size=T, max_size=T))
    dup = draw(st.booleans())
    s = torch.tensor(logits, dtype=torch.float64)
    if dup: s[T // 2:] = s[: T - T // 2].clone()                  # exact ties
    s = s.masked_fill(torch.tensor(zeros) & (torch.arange(T) > 0), -math.inf)
    return torch.softmax(s, -1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows())
def test_property_vs_mpmath(p):
    lam = fim_eigvalsh(p)
    assert torch.all(lam[:-1] >= lam[1:])                          # descending
    assert rel_err(lam.numpy(), mpmath_secular_eigvalsh(p)) <= 1e-10
    s = torch.sort(p, descending=True).values                     # interlacing
    assert torch.all(lam <= s) and torch.all(lam[:-1] >= s[1:])


# ---------------------------------------------------------------- mean FIM
@pytest.fixture
def torch_lanczos(monkeypatch):
    "The torch Lanczos on CPU too: this file certifies the torch path (test_kernel.py holds the compiled per-head one)."
    real = spectrum._lanczos_topk
    monkeypatch.setattr(spectrum, "_lanczos_topk", lambda *a, **kw: real(*a, **{**kw, "compiled": False}))


@pytest.mark.parametrize("method", ["dense", "lanczos"])
@pytest.mark.parametrize("fam", FAMILIES)
def test_mean_fim_vs_scipy(fam, method, torch_lanczos):
    p = torch.stack([make_family(fam, 16, 120, seed=h) for h in range(2)])    # (2 heads, N=16, T=120)
    ref = scipy_mean_fim_eigvalsh(p)[:, :16]
    lam = mean_fim_eigvalsh(p, 16, method=method).numpy()
    assert np.max(np.abs(lam - ref) / ref) <= 1e-10


def test_mean_fim_is_mean_of_fims_and_auto():
    p = make_family("dirichlet_1", 12, 20, seed=2).reshape(3, 4, 20)
    Ms = torch.stack([torch.stack([torch.diag(r) - torch.outer(r, r) for r in h]).mean(0) for h in p])
    ref = torch.linalg.eigvalsh(Ms).flip(-1)
    assert torch.allclose(mean_fim_eigvalsh(p), ref, rtol=1e-13, atol=1e-16)   # auto -> dense at T=20, k=None
    assert torch.allclose(mean_fim_eigvalsh(p, tau=2.0), ref / 4, rtol=1e-13, atol=1e-16)


def test_mean_fim_valid_and_dtypes():
    p = make_family("dirichlet_1", 12, 30, seed=3).reshape(2, 2, 3, 30)
    valid = torch.ones(2, 2, 3, dtype=torch.bool); valid[0, 1, 2] = False; valid[1, 0] = False
    lam = mean_fim_eigvalsh(p, 5, valid=valid)
    assert lam.shape == (2, 2, 5) and lam[1, 0].isnan().all() and not lam[0].isnan().any()
    assert torch.allclose(lam[0, 1], mean_fim_eigvalsh(p[0, 1, :2], 5))
    p32 = p.float()
    l32 = mean_fim_eigvalsh(p32, 5, valid=valid)                 # computed in float64, returned in float32
    assert l32.dtype == torch.float32
    ref = scipy_mean_fim_eigvalsh(p32[0, 0])[:5]                  # float64 truth of the same float32 numbers
    assert np.max(np.abs(l32[0, 0].double().numpy() - ref) / ref) <= 1e-7


def test_mean_fim_lanczos_larger(torch_lanczos):
    "One larger case per path: 3 heads, N=64, T=600, top 16, Lanczos vs dense float64 (SciPy)."
    p = torch.stack([make_family(f, 64, 600, seed=1) for f in ("dirichlet_10", "peaked_0.999", "causal")])
    ref = scipy_mean_fim_eigvalsh(p)[:, :16]
    assert np.max(np.abs(mean_fim_eigvalsh(p, 16).numpy() - ref) / ref) <= 1e-10       # auto -> Lanczos here


def test_mean_fim_lanczos_float32_input(torch_lanczos):
    "float32 rows miss sum 1 by ~1e-8, so 1 is not an exact null vector: Lanczos must still converge (no warning)."
    p = torch.stack([make_family(f, 16, 300, torch.float32, seed=2) for f in ("dirichlet_1", "causal")])
    lam = mean_fim_eigvalsh(p, 16, method="lanczos")
    assert lam.dtype == torch.float32
    ref = scipy_mean_fim_eigvalsh(p.double())[:, :16]
    assert np.max(np.abs(lam.double().numpy() - ref) / ref) <= 2 * np.finfo(np.float32).eps


def test_lanczos_handles_repeated_eigenvalues(torch_lanczos):
    """Identical columns (a uniform tail shared by every row) give an eigenvalue of multiplicity ~100 in the top 16,
    which a single-vector Krylov method alone would see once; the column deflation must supply the copies."""
    g = np.random.default_rng(0)
    heads = []
    for h in range(2):
        head = g.dirichlet(np.ones(100), size=20) * 0.2                       # (N=20, 100) distinct columns
        tail = np.full((20, 100), 0.8 / 100)                                  # 100 identical columns
        heads.append(np.concatenate([head, tail], -1))
    p = torch.from_numpy(np.stack(heads))                                     # (2, 20, 200)
    ref = scipy_mean_fim_eigvalsh(p)[:, :16]
    assert np.sum(np.isclose(ref[0], 0.008, rtol=1e-12)) >= 10               # the repeated eigenvalue is in the top 16
    lam = mean_fim_eigvalsh(p, 16, method="lanczos").numpy()
    assert np.max(np.abs(lam - ref) / ref) <= 1e-10


# ---------------------------------------------------------------- normalize=True: rows read as exact distributions
def _two_ulp(p, seed=0):
    "Every entry moved by up to 2 ulp (relative), as another softmax kernel would round it."
    g = torch.Generator().manual_seed(seed)
    return p * (1 + torch.finfo(p.dtype).eps * 4 * (torch.rand(p.shape, generator=g, dtype=p.dtype) - 0.5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fam", ["dirichlet_0.05", "peaked_1-1e-6", "saturated", "causal"])
def test_normalize_is_the_exact_distribution(fam, dtype):
    p = make_family(fam, 2, 40, dtype, seed=11) * 1.7  # any positive sum
    truth = torch.as_tensor(mpmath_secular_eigvalsh(p.double(), normalize=True))
    keep = truth > torch.finfo(dtype).tiny * 2**10  # relative accuracy is not defined in subnormals
    ours = fim_eigvalsh(p, normalize=True).double()
    tol = 2e-6 if dtype == torch.float32 else 1e-13
    assert (((ours - truth).abs() / truth)[keep] <= tol).all()
    assert (ours[~keep].abs() <= torch.finfo(dtype).tiny * 2**11).all()


@pytest.mark.parametrize("k", [4, None])
def test_normalize_is_stable_under_rounding_and_literal_is_not(k):
    g = torch.Generator().manual_seed(3)
    p = torch.softmax(torch.randn(64, 48, generator=g, dtype=torch.float64) * 12, -1).float()  # entries down to ~1e-30
    q = _two_ulp(p)
    a, b = fim_eigvalsh(p, k, normalize=True).double(), fim_eigvalsh(q, k, normalize=True).double()
    keep = a > torch.finfo(torch.float32).tiny * 2**10
    assert ((b - a).abs() / a)[keep].max() < 2e-6
    la, lb = fim_eigvalsh(p, k).double(), fim_eigvalsh(q, k).double()  # the literal floats: the bottom follows c0
    keep = la > torch.finfo(torch.float32).tiny * 2**10
    assert ((lb - la).abs() / la)[keep].max() > 1e-2


def test_normalize_scale_invariance_and_mean_fim():
    p = make_family("dirichlet_1", 6, 64, torch.float64, seed=2)
    torch.testing.assert_close(fim_eigvalsh(p * 3.7, normalize=True), fim_eigvalsh(p), rtol=1e-13, atol=0)
    P = make_family("causal", 24, 32, torch.float64, seed=5).reshape(3, 8, 32)
    torch.testing.assert_close(mean_fim_eigvalsh(P * 0.3, normalize=True), mean_fim_eigvalsh(P), rtol=1e-12, atol=1e-15)
    P32 = P.float()  # float32 rows: normalised in float64 before averaging
    want = torch.as_tensor(scipy_mean_fim_eigvalsh(P32.double() / P32.double().sum(-1, keepdim=True)))
    got = mean_fim_eigvalsh(P32, normalize=True).double()
    top = want > 1e-6 * want[..., :1]
    assert (((got - want).abs() / want)[top] < 1e-6).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [6, 128])
def test_small_dense_eigvalsh_independent_of_threads(dtype, n):
    "Regression: MKL's threaded solve made the mean FIM's and the reference's eigenvalues depend on the thread count (9e-14)."
    from fim_attention.spectrum import eigvalsh_f64_fallback
    A = torch.randn(5, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n)); A = (A + A.mT).to(dtype)
    nt = torch.get_num_threads()
    try:
        got = {}
        for t in (1, 2):
            torch.set_num_threads(t)
            got[t] = (eigvalsh_f64_fallback(A), eigvalsh_f64_fallback(A[0]))
            assert torch.get_num_threads() == t                                   # the caller's setting put back
    finally: torch.set_num_threads(nt)
    assert all(torch.equal(a, b) for a, b in zip(got[1], got[2]))
    assert torch.equal(got[1][1], got[1][0][0])                                  # a single matrix as in a batch
    tol = 64 * torch.finfo(dtype).eps * float(got[1][0].abs().max())
    torch.testing.assert_close(got[1][0], torch.linalg.eigvalsh(A), rtol=0, atol=tol)


def test_small_dense_eigvalsh_restores_threads_on_error():
    "A float64 LAPACK failure propagates, and torch's thread count is put back."
    from fim_attention.spectrum import eigvalsh_f64_fallback
    A = torch.full((2, 8, 8), math.nan, dtype=torch.float64)
    nt = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with pytest.raises(torch.linalg.LinAlgError):
            eigvalsh_f64_fallback(A)
        assert torch.get_num_threads() == 2
    finally: torch.set_num_threads(nt)
