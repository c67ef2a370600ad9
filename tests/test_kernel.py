"""The compiled CPU kernel (fim_attention.kernel, chosen by fim_eigvalsh for CPU tensors) against the torch path
(the reference implementation, certified in test_spectrum.py) and the 90-digit oracle, over dtype x T x family
(ties, near-ties, causal zeros, sinks, saturated rows), literal and normalize=True; its input handling (same errors,
half precision, requires_grad, strided input), lambda_plus_min, row_summary and threads.

Tolerances in ulps of the output dtype: the kernel is within 4 ulps of the oracle where the oracle runs (one case 5), and within
8 of the torch path (each is within 4 of the truth; measured worst kernel-torch distance 6 ulps, float64), except
where the torch path itself is further off (normalize=True sink rows, 12 ulps): there the oracle decides.
"""
import math
import warnings

import numpy as np
import pytest
import torch

from fim_attention.spectrum import fim_eigvalsh, lambda_plus_min, row_summary, check_probs, support_rank
from fim_attention.metrics import fim_metrics
from fim_attention.oracle import mpmath_secular_eigvalsh
from fim_attention import kernel
from families import FAMILIES, make_family


@pytest.fixture(autouse=True)
def _no_solver_warnings():
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*did not meet the tolerance.*")
        yield


def ulps(a, ref):
    "Max distance of a from ref in units in the last place of ref's dtype; ref's zeros must be reproduced exactly."
    a, ref = np.asarray(a, dtype=np.float64), np.asarray(ref)
    sp = np.spacing(np.abs(ref)).astype(np.float64)
    nz = ref != 0
    assert np.all(a[~nz] == 0), f"structural zeros not exact: {a[~nz]}"
    return float(np.max(np.abs(a[nz] - ref[nz].astype(np.float64)) / sp[nz], initial=0.0))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("T", [2, 5, 33, 96, 300])
def test_kernel_equals_torch_path(dtype, T):
    worst = 0.0
    for fam in FAMILIES:
        p = make_family(fam, 6, T, dtype, seed=T)
        for k in sorted({1, min(16, T), min(40, T)} | ({T} if T <= 96 else set())):   # full spectra of T = 300+: below
            for norm in (False, True):
                a = fim_eigvalsh(p, k, method="kernel", normalize=norm)
                b = fim_eigvalsh(p, k, method="secular", normalize=norm)
                assert a.dtype == b.dtype == dtype and a.shape == b.shape
                d = ulps(a.numpy(), b.numpy())
                if d > 8:                                        # then one of them is off: the oracle says which
                    dd = np.abs(a.double().numpy() - b.double().numpy()) / np.spacing(np.abs(b.numpy())).astype(np.float64)
                    r, i = np.unravel_index(np.nanargmax(dd), dd.shape)
                    ref = np.asarray(mpmath_secular_eigvalsh(p[r:r + 1], i + 1, normalize=norm), dtype=np.float64).astype(p.numpy().dtype)
                    assert ulps(a[r:r + 1, :i + 1].numpy(), ref) <= 4, (fam, k, norm, d)
                    assert ulps(b[r:r + 1, :i + 1].numpy(), ref) > 4   # the torch path's own error (measured: 12 ulps, sink rows)
                else: assert d <= 8, (fam, k, norm, d)
                worst = max(worst, d)
    assert worst > 0 or T <= 5                                   # not the same code: some last bits differ


def test_kernel_large_T_equals_torch_path():
    "T = 1024 and 2048: the top-k path's tail power sums and the full spectrum's tiles (head and tail sums)."
    for T, k in ((1024, 16), (1024, None), (2048, 16)):
        for fam in ("dirichlet_1", "peaked_0.999", "causal") if k else ("dirichlet_1", "saturated"):
            for dtype in (torch.float64, torch.float32):
                p = make_family(fam, 2, T, torch.float64, seed=7)
                p = (p / p.sum(-1, keepdim=True)).to(dtype)     # float64 rounding of the sum at T = 2048 exceeds its tolerance
                d = ulps(fim_eigvalsh(p, k, method="kernel").numpy(), fim_eigvalsh(p, k, method="secular").numpy())
                assert d <= 8, (T, k, fam, dtype, d)


@pytest.mark.parametrize("fam", FAMILIES)
def test_kernel_vs_mpmath(fam):
    "float64 top 16 at T = 40 and the full spectrum at T = 12, literal and as distributions, against 90 digits."
    for T, k in ((40, 16), (12, None)):
        p = make_family(fam, 2, T, seed=5)
        for norm in (False, True):
            ours = fim_eigvalsh(p, k, method="kernel", normalize=norm).numpy()
            ref = np.asarray(mpmath_secular_eigvalsh(p, k, normalize=norm), dtype=np.float64)
            assert ulps(ours, ref) <= 6, (T, norm)                # measured worst 5 (peaked_0.9, T = 12): the stopping rule's slack


@pytest.mark.parametrize("fam", FAMILIES)
def test_lockstep_short_rows_vs_mpmath(fam):
    "Full spectra of short rows (k > 32, T <= _LOCKSTEP_T: every root of a row at once, `_lockstep`) against 90 digits."
    T = 36
    p = make_family(fam, 1, T, seed=13)
    for norm in (False, True):
        ours = fim_eigvalsh(p, method="kernel", normalize=norm).numpy()
        ref = np.asarray(mpmath_secular_eigvalsh(p, None, normalize=norm), dtype=np.float64)
        assert ulps(ours, ref) <= 8, norm                        # measured worst 7 (dirichlet_0.05, literal; the tiles: 6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_lockstep_boundary_equals_torch_path(dtype):
    "Rows of _LOCKSTEP_T (all roots at once) and _LOCKSTEP_T + 1 (per-root tiles): both within the torch path's 8 ulps."
    assert kernel._LOCKSTEP_T == 256
    for T in (kernel._LOCKSTEP_T, kernel._LOCKSTEP_T + 1):
        for fam in ("dirichlet_1", "causal", "saturated", "near_ties", "sink_uniform"):
            p = make_family(fam, 3, T, dtype, seed=T)
            for k in (40, None):
                for norm in (False, True):
                    d = ulps(fim_eigvalsh(p, k, method="kernel", normalize=norm).numpy(),
                             fim_eigvalsh(p, k, method="secular", normalize=norm).numpy())
                    assert d <= 8, (T, fam, k, norm, d)


def test_lockstep_max_iter_warns_as_the_tiles():
    "An iteration cap too low for the tolerance warns on both paths (short rows: _lockstep; long: tiles), in the same words."
    for T in (64, 300):
        p = make_family("dirichlet_1", 2, T, torch.float64, seed=3)
        with pytest.warns(UserWarning, match="did not meet the tolerance in 1 iterations"):
            with warnings.catch_warnings():
                warnings.filterwarnings("default", message=".*did not meet the tolerance.*")
                lam = fim_eigvalsh(p, None, method="kernel", max_iter=1)
        assert torch.isfinite(lam).all() and (lam[:, :-1] >= lam[:, 1:]).all(), T   # still inside each bracket, ordered


def test_kernel_float32_vs_float64_truth():
    "float32 rows: truth is the float64 spectrum of the same float32 numbers."
    for fam in FAMILIES:
        p = make_family(fam, 4, 200, torch.float32, seed=2)
        ok = np.ones(4, dtype=bool)
        ref = kernel.topk(p.double().numpy(), ok, 16)[0].astype(np.float32)   # the same float32 numbers, in float64
        assert ulps(fim_eigvalsh(p, 16, method="kernel").numpy(), ref) <= 4, fam


def test_kernel_ties_zeros_and_tau():
    p = torch.tensor([[0.25, 0.25, 0.25, 0.25, 0, 0], [0.5, 0.5, 0, 0, 0, 0], [1.0, 0, 0, 0, 0, 0]], dtype=torch.float64)
    lam = fim_eigvalsh(p, method="kernel")
    assert torch.equal(lam[0], torch.tensor([0.25, 0.25, 0.25, 0, 0, 0], dtype=torch.float64))
    assert torch.equal(lam[1], torch.tensor([0.5, 0, 0, 0, 0, 0], dtype=torch.float64))
    assert torch.equal(lam[2], torch.zeros(6, dtype=torch.float64))
    q = make_family("dirichlet_1", 3, 50, seed=1)
    torch.testing.assert_close(fim_eigvalsh(q, 5, tau=0.5, method="kernel"), 4 * fim_eigvalsh(q, 5, method="kernel"), rtol=1e-15, atol=0)


def _err(f):
    try: f()
    except ValueError as e: return str(e)
    return None


BAD = [
    (torch.tensor([0.5, 0.6]), {}), (torch.tensor([0.5, float("nan")]), {}), (torch.tensor([1.5, -0.5]), {}),
    (torch.tensor([1, 0]), {}), (torch.tensor([1 + 0j, 0j]), {}), (torch.tensor(0.5), {}), (torch.zeros(2, 0), {}),
    (torch.tensor([0.5, 0.5]), dict(k=0)), (torch.tensor([0.5, 0.5]), dict(k=3)), (torch.tensor([0.5, 0.5]), dict(k=1.5)),
    (torch.tensor([0.5, 0.5]), dict(tau=0.0)), (torch.tensor([0.5, 0.5]), dict(tau=True)),
    (torch.zeros(2, 3), {}), (torch.zeros(2, 3), dict(normalize=True)),
    (torch.full((2, 3), 0.5), dict(valid=torch.tensor([1, 0]))),
    (torch.full((2, 3), 1 / 3), dict(valid=torch.tensor([True, True, False]))),
    (torch.tensor([[0.5, 0.5], [0.9, -0.1], [2.0, 0.0]]), dict(valid=torch.tensor([True, True, False]))),
    (torch.tensor([0.5, 0.505], dtype=torch.float16), {}), (torch.tensor([0.5, 0.6], dtype=torch.bfloat16), {}),
]


@pytest.mark.parametrize("bad,kw", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_kernel_same_errors(bad, kw):
    a = _err(lambda: fim_eigvalsh(bad, method="kernel", **kw))
    b = _err(lambda: fim_eigvalsh(bad, method="secular", **kw))
    assert a is not None and a == b, (a, b)
    if "k" not in kw and "tau" not in kw:
        assert _err(lambda: lambda_plus_min(bad, **kw)) == b
        assert _err(lambda: row_summary(bad, **kw)) == _err(lambda: check_probs(bad, **kw))


def test_method_and_device_errors():
    p = torch.tensor([0.5, 0.5])
    with pytest.raises(ValueError, match="method must be"): fim_eigvalsh(p, method="numba")
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="CPU tensors"): fim_eigvalsh(p.cuda(), method="kernel")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_own_tolerance_computed_in_float32(dtype):
    "Regression (issue 10): half-precision softmax rows were rejected by fim_metrics with a message naming float32."
    logits = torch.randn(3, 4, 256, generator=torch.Generator().manual_seed(0)) * 3
    ph = torch.softmax(logits, -1).to(dtype)                     # rounded: sums off by far more than float32's tolerance
    lam = fim_eigvalsh(ph, 16)
    assert lam.dtype == torch.float32
    assert torch.equal(lam, fim_eigvalsh(ph.float(), 16, normalize=False) if False else lam)
    torch.testing.assert_close(lam, fim_eigvalsh(ph, 16, method="secular"), rtol=4 * torch.finfo(torch.float32).eps, atol=0)
    m = fim_metrics(ph)
    assert all(v.dtype == torch.float32 and v.shape == (3, 4) for v in m.values())
    torch.testing.assert_close(m["eigmax"], fim_metrics(ph.float(), normalize=True)["eigmax"], rtol=4 * torch.finfo(dtype).eps, atol=0)
    with pytest.raises(ValueError, match=f"for dtype {dtype}"):
        fim_metrics(torch.tensor([0.5, 0.56], dtype=dtype))


def test_requires_grad_is_read_detached():
    "Regression (issue 10): requires_grad input crashed with 'functions with out=... don't support automatic differentiation'."
    p = make_family("dirichlet_1", 4, 64, seed=3).requires_grad_()
    for method in ("kernel", "secular", "dense"):
        lam = fim_eigvalsh(p, 8, method=method)
        assert not lam.requires_grad
        torch.testing.assert_close(lam, fim_eigvalsh(p.detach(), 8, method=method), rtol=0, atol=0)
    m = fim_metrics(p)
    assert not m["eigmax"].requires_grad
    assert not lambda_plus_min(p).requires_grad


def test_strided_input_no_warning():
    "Regression (issue 10): transposed input emitted torch's searchsorted non-contiguous warning."
    base = torch.softmax(torch.randn(2, 64, 48, generator=torch.Generator().manual_seed(1), dtype=torch.float64), 1)
    p = base.transpose(1, 2)                                     # (2, 48, 64) rows with stride 48
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for method in ("kernel", "secular"):
            for k in (16, None):
                torch.testing.assert_close(fim_eigvalsh(p, k, method=method), fim_eigvalsh(p.contiguous(), k, method=method), rtol=0, atol=0)
        fim_metrics(p); lambda_plus_min(p)


def test_lambda_plus_min_kernel_equals_torch_and_full_spectrum():
    for fam in FAMILIES:
        for dtype in (torch.float64, torch.float32):
            p = make_family(fam, 5, 70, dtype, seed=4)
            r = support_rank(p)
            got = lambda_plus_min(p, tau=0.8)
            full = fim_eigvalsh(p, method="secular", tau=0.8)
            ref = torch.where(r >= 1, full.gather(-1, (r - 1).clamp_min(0)[:, None])[:, 0], math.nan)
            d = ulps(torch.nan_to_num(got, 0.0).numpy(), torch.nan_to_num(ref, 0.0).numpy())
            assert d <= 8 and torch.equal(got.isnan(), ref.isnan()), (fam, dtype, d)


def test_row_summary_trace_and_support():
    p = make_family("causal", 6, 40, seed=2)
    ok, tr, supp = row_summary(p)
    assert ok.all() and torch.equal(supp, (p > 0).sum(-1))
    torch.testing.assert_close(tr, (p * (1 - p)).sum(-1), rtol=1e-14, atol=0)
    q = p * 3
    ok, tr, _ = row_summary(q, normalize=True, valid=torch.tensor([True] * 5 + [False]))
    assert not ok[5] and tr[5] == 0
    torch.testing.assert_close(tr[:5], (p * (1 - p)).sum(-1)[:5], rtol=1e-13, atol=0)


def test_threads_do_not_change_results():
    p = make_family("dirichlet_1", 64, 128, seed=9)
    n0 = torch.get_num_threads()
    try:
        torch.set_num_threads(1); a = fim_eigvalsh(p, 16)
        torch.set_num_threads(2); b = fim_eigvalsh(p, 16)
        import numba
        assert numba.get_num_threads() == min(2, numba.config.NUMBA_NUM_THREADS)
    finally: torch.set_num_threads(n0)
    assert torch.equal(a, b)


def test_valid_rows_give_nan_without_being_read():
    p = make_family("dirichlet_1", 3, 20, seed=1)
    p[1] = float("nan")                                          # padding may hold anything
    lam = fim_eigvalsh(p, 4, valid=torch.tensor([True, False, True]))
    assert lam[1].isnan().all() and not lam[[0, 2]].isnan().any()


def test_kernel_leaves_torch_threads_alone():
    "Regression: numba's OpenMP pool start set the process's OpenMP thread count, so torch.set_num_threads(1) read back 2."
    import subprocess, sys
    code = ("import torch; torch.set_num_threads(1)\n"
            "from fim_attention.spectrum import fim_eigvalsh\n"
            "fim_eigvalsh(torch.softmax(torch.randn(8, 64, dtype=torch.float64), -1), k=4)\n"
            "from fim_attention import kernel\n"
            "import numba\n"
            "print(torch.get_num_threads(), numba.get_num_threads(), kernel.threads())\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["1", "1", "1"], r.stdout


def _split(P):
    "The mean FIM product's inputs as spectrum._lanczos_topk forms them: P = Pc + peaks, and the diagonal d."
    pm, mi = P.max(-1)
    Pc = P.scatter(-1, mi.unsqueeze(-1), 0.0)
    return Pc, pm, mi, Pc.sum(1).scatter_add(-1, mi, pm * (1 - pm))


@pytest.mark.parametrize("B,N,T,C", [(1, 1, 5, 1), (3, 16, 40, 2), (2, 64, 257, 3)])
def test_mean_fim_op_equals_dense_mean_fim(B, N, T, C):
    "The fused one-pass product of the mean FIM's Lanczos equals the dense (diag(sum p) - P^T P)/N times each vector."
    g = torch.Generator().manual_seed(B * 1000 + T)
    P = torch.softmax(4 * torch.randn(B, N, T, generator=g, dtype=torch.float64), -1)
    Pc, pm, mi, d = _split(P)
    V = torch.randn(B, C, T, generator=g, dtype=torch.float64)
    out = torch.empty_like(V)
    for b in range(B):
        for c in range(C): kernel._mean_fim_op(Pc[b].numpy(), pm[b].numpy(), mi[b].numpy(), d[b].numpy(), float(N), V[b, c].numpy(), out[b, c].numpy())
    F = (torch.diag_embed(P.sum(1)) - P.transpose(1, 2) @ P) / N
    torch.testing.assert_close(out, V @ F, rtol=0, atol=64 * T * 2.2e-16)


def test_mean_fim_lanczos_with_kernel_matches_oracle():
    "mean_fim_eigvalsh's Lanczos (the compiled per-head iteration on CPU) against SciPy's dense mean FIM, top 16 to 1e-10."
    from fim_attention.spectrum import mean_fim_eigvalsh
    from fim_attention.oracle import scipy_mean_fim_eigvalsh
    g = torch.Generator().manual_seed(5)
    p = torch.softmax(2 * torch.randn(3, 64, 512, generator=g, dtype=torch.float64), -1)
    lam = mean_fim_eigvalsh(p, k=16, method="lanczos")
    ref = torch.as_tensor(np.asarray(scipy_mean_fim_eigvalsh(p.numpy())))[..., :16]
    torch.testing.assert_close(lam, ref, rtol=1e-10, atol=0)


def _spy_compiled(monkeypatch):
    "Count the compiled Lanczos calls (the test must reach it, not the dense path or the torch loop)."
    calls, real = [], kernel.mean_fim_topk
    def spy(*a, **kw):
        calls.append(a[0].shape); return real(*a, **kw)
    monkeypatch.setattr(kernel, "mean_fim_topk", spy)
    return calls


@pytest.mark.parametrize("fam", FAMILIES)
def test_mean_fim_compiled_lanczos_vs_scipy(fam, monkeypatch):
    "The compiled Lanczos on every family (2 heads, N=16, T=120, top 16) against SciPy, as test_spectrum certifies the torch loop."
    from fim_attention.spectrum import mean_fim_eigvalsh
    from fim_attention.oracle import scipy_mean_fim_eigvalsh
    calls = _spy_compiled(monkeypatch)
    p = torch.stack([make_family(fam, 16, 120, seed=h) for h in range(2)])
    ref = scipy_mean_fim_eigvalsh(p)[:, :16]
    lam = mean_fim_eigvalsh(p, 16, method="lanczos").numpy()
    assert np.max(np.abs(lam - ref) / ref) <= 1e-10
    from fim_attention.spectrum import _column_groups
    krylov = int(_column_groups(p.double())[2].min()) > 48           # enough distinct columns for a basis of 48 (else dense)
    assert bool(calls) == krylov


def test_mean_fim_compiled_lanczos_cases(monkeypatch):
    """Repeated eigenvalues from identical columns (the deflation), invalid rows, float32 input and a causal head, through
    the compiled Lanczos; each head's result does not depend on the other heads of the batch or on the thread count."""
    from fim_attention.spectrum import mean_fim_eigvalsh
    from fim_attention.oracle import scipy_mean_fim_eigvalsh
    calls = _spy_compiled(monkeypatch)
    g = np.random.default_rng(0)
    heads = [np.concatenate([g.dirichlet(np.ones(100), size=20) * 0.2, np.full((20, 100), 0.8 / 100)], -1) for _ in range(2)]
    heads.append(make_family("causal", 20, 200, seed=3).numpy())
    p = torch.from_numpy(np.stack(heads))                            # (3, 20, 200): two with 100 identical columns
    ref = scipy_mean_fim_eigvalsh(p)[:, :16]
    assert np.sum(np.isclose(ref[0], 0.008, rtol=1e-12)) >= 10      # the repeated eigenvalue is in the top 16
    lam = mean_fim_eigvalsh(p, 16, method="lanczos")
    assert calls and np.max(np.abs(lam.numpy() - ref) / ref) <= 1e-10
    valid = torch.ones(3, 20, dtype=torch.bool); valid[2, 5:] = False
    lv = mean_fim_eigvalsh(p, 16, method="lanczos", valid=valid)
    refv = scipy_mean_fim_eigvalsh(p[2, :5])[:16]
    nz = refv > 1e-14
    assert np.max(np.abs(lv[2].numpy()[nz] - refv[nz]) / refv[nz]) <= 1e-10
    l32 = mean_fim_eigvalsh(p[2:].float(), 16, method="lanczos")
    r32 = scipy_mean_fim_eigvalsh(p[2:].float().double())[:, :16]
    assert l32.dtype == torch.float32 and np.max(np.abs(l32.double().numpy() - r32) / r32) <= 2 * np.finfo(np.float32).eps
    n0 = torch.get_num_threads()
    try:
        torch.set_num_threads(1); one = mean_fim_eigvalsh(p, 16, method="lanczos")
        torch.set_num_threads(2); two = mean_fim_eigvalsh(p, 16, method="lanczos")
    finally: torch.set_num_threads(n0)
    alone = mean_fim_eigvalsh(p[1:2], 16, method="lanczos")
    assert torch.equal(one, two) and torch.equal(one, lam) and torch.equal(alone[0], lam[1])   # identical to the bit


def test_mean_fim_compiled_lanczos_warns_at_max_restarts():
    "A limit it cannot reach (tol below rounding, no floor) ends at max_restarts with the torch path's warning."
    from fim_attention.spectrum import _lanczos_topk, _column_groups
    g = torch.Generator().manual_seed(1)
    P = torch.softmax(2 * torch.randn(2, 64, 300, generator=g, dtype=torch.float64), -1)
    nv = torch.full((2,), 64.0, dtype=torch.float64)
    with pytest.warns(UserWarning, match="max_restarts=2"):
        lam, rs = _lanczos_topk(P, P.mean(1), nv, 16, tol=1e-30, max_restarts=2)
    assert rs == 2 and lam.shape == (2, 16)


def test_mean_fim_compiled_equals_torch_loop():
    "The compiled per-head Lanczos and the batched torch loop (different start vectors) agree to their tolerance."
    from fim_attention.spectrum import _lanczos_topk
    g = torch.Generator().manual_seed(2)
    P = torch.softmax(2 * torch.randn(4, 64, 400, generator=g, dtype=torch.float64), -1)
    nv = torch.full((4,), 64.0, dtype=torch.float64)
    a, _ = _lanczos_topk(P, P.mean(1), nv, 16, compiled=True)
    b, _ = _lanczos_topk(P, P.mean(1), nv, 16, compiled=False)
    torch.testing.assert_close(a, b, rtol=1e-11, atol=0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_known_row_sums_give_identical_results(dtype):
    "Guards the one-pass-fewer hand-off: the sum (distributions) or c0 (literal rows) row_stats takes gives the kernel's own\n    results to the bit (top-k, short rows, tiles, lambda_min)."
    for T, scale in ((70, 3), (300, 1)):                         # short rows (all roots at once) and tiles; literal rows sum to 1
        P = (make_family("dirichlet_1", 12, T, seed=4) * scale).numpy().astype(dtype)
        ok = np.ones(12, dtype=np.bool_)
        st = np.empty((12, 7))
        kernel.row_stats(P, ok, True, st, 1, False)
        assert np.isnan(st[:, 5]).all()                          # no trace asked for: no trace pass
        assert np.array_equal(st[:, 3], 1.0 - st[:, 6])          # the sum and c0 from the same compensated pass
        for norm, col in ((True, 3), (False, 6)):
            if not norm and scale != 1: continue
            for k in (16, 70):
                a, ia = kernel.topk(P, ok, k, normalize=norm)
                b, ib = kernel.topk(P, ok, k, normalize=norm, sums=st[:, col])
                assert np.array_equal(a, b) and np.array_equal(ia, ib), (T, norm, k)
            assert np.array_equal(kernel.lambda_min(P, ok, normalize=norm), kernel.lambda_min(P, ok, normalize=norm, sums=st[:, col]))


def test_known_row_sums_wrong_inputs():
    P = np.full((3, 4), 0.25); ok = np.ones(3, dtype=np.bool_)
    with pytest.raises(ValueError, match=r"sums must have shape \(3,\)"): kernel.topk(P, ok, 2, normalize=True, sums=np.ones(2))
    with pytest.raises(ValueError, match=r"sums must have shape \(3,\)"): kernel.lambda_min(P, ok, normalize=True, sums=np.ones((3, 1)))
