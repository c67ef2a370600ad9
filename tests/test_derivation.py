"""The closed forms of 00_derivation against autograd and each other, over dtypes and sizes."""
import pytest
import torch

from fim_attention.derivation import eigmax_bound, fim, fim_matvec, fim_trace, lse_potential, score_grad


def _scores(T, seed, dtype, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(3, T, generator=g, dtype=torch.float64) * scale).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("T", [2, 5, 33])
@pytest.mark.parametrize("tau", [0.3, 1.0, 2.5])
def test_fim_is_hessian_of_lse(dtype, T, tau):
    s = _scores(T, T, dtype)
    p = torch.softmax(s / tau, -1)
    H = torch.stack([torch.autograd.functional.hessian(lambda x: torch.logsumexp(x / tau, -1), row) for row in s])
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(fim(p, tau), H, rtol=0, atol=50 * eps / tau**2)
    Hphi = torch.autograd.functional.hessian(lambda x: lse_potential(x, tau), s[0])
    torch.testing.assert_close(tau * fim(p[0], tau), Hphi, rtol=0, atol=50 * eps / tau)


@pytest.mark.parametrize("T", [2, 7, 64])
def test_structure(T):
    p = torch.softmax(_scores(T, 1, torch.float64, 4.0), -1)
    p[0, : T // 2] = 0
    p[0] /= p[0].sum()
    F = fim(p, 0.7)
    lam = torch.linalg.eigvalsh(F)
    assert lam.min() > -1e-15
    torch.testing.assert_close(lam.sum(-1), fim_trace(p, 0.7), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(F @ torch.ones(T, dtype=p.dtype), torch.zeros(3, T, dtype=p.dtype), rtol=0, atol=1e-15)
    assert (lam[:, -1] <= eigmax_bound(p, 0.7) + 1e-14).all()
    assert (eigmax_bound(p, 0.7) <= 0.5 / 0.7**2 + 1e-15).all()
    v = torch.randn(3, T, dtype=p.dtype)
    torch.testing.assert_close(fim_matvec(p, v, 0.7), (F @ v.unsqueeze(-1)).squeeze(-1))
    V = torch.randn(3, T, 4, dtype=p.dtype)
    torch.testing.assert_close(fim_matvec(p, V, 0.7), F @ V)


def test_eigmax_bound_is_attained_by_two_halves():
    p = torch.tensor([0.5, 0.5], dtype=torch.float64)
    assert torch.linalg.eigvalsh(fim(p))[-1].item() == pytest.approx(0.5)
    assert eigmax_bound(p).item() == pytest.approx(0.5)


@pytest.mark.parametrize("tau", [0.5, 1.0, 3.0])
def test_score_grad_matches_autograd(tau):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(4, 9, generator=g, dtype=torch.float64, requires_grad=True)
    V = torch.randn(4, 9, 6, generator=g, dtype=torch.float64)
    p = torch.softmax(s / tau, -1)
    o = (p.unsqueeze(-2) @ V).squeeze(-2)
    loss = (o.sin() * torch.arange(6)).sum()
    (ds,) = torch.autograd.grad(loss, s, retain_graph=True)
    (do,) = torch.autograd.grad(loss, o)
    u = (V @ do.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(ds, score_grad(p.detach(), u, tau), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("tau", [0.0, -1.0, float("nan")])
def test_fim_rejects_bad_tau(tau):
    with pytest.raises(ValueError, match="tau"):
        fim(torch.tensor([0.5, 0.5]), tau)
