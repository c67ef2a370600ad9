"""Parameter-space curvature: Lanczos, loss Hessian, attention Fisher (sum J^T F J), output GN, Adam preconditioning.

Every matrix-free operator is checked against a dense matrix assembled independently with autograd on a float64
micro model (about 550 parameters, seconds in all).
"""
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from fim_attention.attention import ATTENTION_VARIANTS
from fim_attention.derivation import fim
from fim_attention.model import GPT, GPTConfig
from fim_attention.sharpness import (FlatOperator, TopEigs, adam_preconditioner, adam_stability_threshold,
                                     attention_fisher_operator, attention_fisher_sharpness, curvature_mode, flatten,
                                     gauss_newton_operator, gauss_newton_sharpness, hessian_operator, lanczos,
                                     loss_sharpness, model_loss, model_params, preconditioned_operator,
                                     preconditioned_sharpness, split_batch, unflatten)
from torch.func import functional_call

EPS = torch.finfo(torch.float64).eps


def micro_model(attn="standard", seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    m = GPT(GPTConfig(vocab_size=7, block_size=5, n_layer=2, n_head=2, n_embd=4, attn=attn)).to(dtype)
    with torch.no_grad():  # off the small init, so attention rows are far from uniform
        for p in m.parameters(): p.add_(0.3 * torch.randn_like(p))
    return m


WINDOWS = torch.randint(0, 7, (3, 6), generator=torch.Generator().manual_seed(1))  # (B, T+1)


def dense_hessian(m, w=WINDOWS):
    params = model_params(m)
    with curvature_mode(m):
        return torch.autograd.functional.hessian(
            lambda f: model_loss(m, unflatten(f, params), w[:, :-1], w[:, 1:]), flatten(params), vectorize=True)


def rand_vec(n, seed=2):
    return torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def rel(a, b): return ((a - b).norm() / b.norm()).item()


def sym_with_spectrum(lam, seed=0):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(len(lam), len(lam), generator=g, dtype=torch.float64))
    return Q @ torch.diag(lam) @ Q.T


# ---- Lanczos -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(3))
def test_lanczos_matches_eigh(seed):
    rng = np.random.default_rng(seed)
    lam = torch.from_numpy(np.concatenate([[6.0, 5.5, 5.4, -9.0], rng.uniform(-1, 1, 96)]))
    A = sym_with_spectrum(lam, seed)
    r = lanczos(lambda v: A @ v, 100, k=3, tol=1e-11, seed=seed, return_vectors=True)
    assert r.converged and isinstance(r, TopEigs)
    np.testing.assert_allclose(r.values.numpy(), [6.0, 5.5, 5.4], rtol=1e-10)
    assert torch.allclose(A @ r.vectors, r.vectors * r.values, atol=1e-8)
    assert r.max_rel_residual <= 1e-11
    lm = lanczos(lambda v: A @ v, 100, k=1, which="LM", tol=1e-11, seed=seed)
    np.testing.assert_allclose(lm.values.numpy(), [-9.0], rtol=1e-10)


def test_lanczos_seeded_and_seed_matters():
    A = sym_with_spectrum(torch.linspace(-1, 3, 50, dtype=torch.float64))
    a = lanczos(lambda v: A @ v, 50, k=2, max_iter=5, seed=7)
    b = lanczos(lambda v: A @ v, 50, k=2, max_iter=5, seed=7)
    c = lanczos(lambda v: A @ v, 50, k=2, max_iter=5, seed=8)
    assert torch.equal(a.values, b.values)
    assert not torch.equal(a.values, c.values)  # 5 steps are not converged: the start vector shows
    assert not a.converged and a.n_matvec == 5


def test_lanczos_invariant_subspace_restarts():
    "Regression: a rank-2 operator makes beta = 0 after two steps; k = 3 must still return 3 correct values."
    g = torch.Generator().manual_seed(3)
    u, _ = torch.linalg.qr(torch.randn(30, 2, generator=g, dtype=torch.float64))
    A = u @ torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64)) @ u.T
    r = lanczos(lambda v: A @ v, 30, k=3, tol=1e-12)
    assert r.converged
    np.testing.assert_allclose(r.values.numpy(), [3.0, 1.0, 0.0], atol=1e-12)


def test_lanczos_whole_space_is_exact():
    A = sym_with_spectrum(torch.tensor([2.0, 1.0, -0.5, 0.25], dtype=torch.float64))
    r = lanczos(lambda v: A @ v, 4, k=4, max_iter=4, tol=1e-300)
    assert r.converged and r.n_matvec == 4
    np.testing.assert_allclose(r.values.numpy(), [2.0, 1.0, 0.25, -0.5], atol=1e-13)


# ---- the loss Hessian --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("attn", list(ATTENTION_VARIANTS))
def test_loss_hessian_against_dense(attn):
    m = micro_model(attn)
    H = dense_hessian(m)
    v = rand_vec(H.shape[0])
    assert rel(hessian_operator(m, WINDOWS)(v), H @ v) < 1e3 * EPS
    assert rel(hessian_operator(m, WINDOWS, method="reverse")(v), H @ v) < 1e3 * EPS
    ev = scipy.linalg.eigh(H.numpy(), eigvals_only=True)[::-1]
    r = loss_sharpness(m, WINDOWS, k=3, tol=1e-10)
    assert r.converged
    np.testing.assert_allclose(r.values.numpy(), ev[:3], rtol=1e-6, atol=0)  # the 1e-6 relative


def test_loss_matches_model_forward_in_float32():
    "model_loss is the model's own training loss (for a float32 model the model's float() cast is a no-op)."
    m = micro_model("ra_mla_kvsplice", dtype=torch.float32)
    x, y = split_batch(WINDOWS)
    m.eval()
    assert torch.equal(model_loss(m, dict(m.named_parameters()), x, y), m(x, y)[1])


def test_kvsplice_reconstruction_term_included():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=7, block_size=5, n_layer=2, n_head=2, n_embd=4, attn="mla_kvsplice", kvsplice_recon_weight=0.5)
    m = GPT(cfg).double().eval()
    x, y = split_batch(WINDOWS)
    torch.testing.assert_close(model_loss(m, dict(m.named_parameters()), x, y), m(x, y)[1], rtol=1e-6, atol=0)
    H = dense_hessian(m)
    v = rand_vec(H.shape[0])
    assert rel(hessian_operator(m, WINDOWS)(v), H @ v) < 1e3 * EPS


def test_float32_training_mode_model_through_fused_sdpa():
    "Regression: fused CPU SDPA has no double backward; the operator must switch kernels and restore train mode."
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=32, block_size=8, n_layer=1, n_head=2, n_embd=8, dropout=0.1))
    m.train()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    w = torch.randint(0, 32, (2, 9), generator=torch.Generator().manual_seed(0))
    r = loss_sharpness(m, w, k=1, tol=1e-4)
    assert r.converged and r.values.dtype == torch.float64 and math.isfinite(r.values.item())
    assert m.training  # mode restored
    assert all(torch.equal(before[n], p) for n, p in m.named_parameters())  # parameters untouched
    # deterministic despite dropout: eval mode inside
    assert torch.equal(loss_sharpness(m, w, k=1, tol=1e-4).values, r.values)


def test_subset_of_parameters_is_the_block_of_the_hessian():
    m = micro_model("standard")
    full, named = dense_hessian(m), list(model_params(m))
    names = [n for n in named if ".attn." in n]
    idx = torch.cat([torch.arange(o, o + model_params(m)[n].numel()) for n, o in
                     zip(named, np.cumsum([0] + [model_params(m)[k].numel() for k in named[:-1]])) if n in names])
    block = full[idx][:, idx]
    op = hessian_operator(m, WINDOWS, names=names)
    assert op.n == len(idx) and op.names == names
    assert torch.allclose(op.dense(), block, atol=1e3 * EPS * block.abs().max())


# ---- attention Fisher and output Gauss-Newton --------------------------------------------------------------------

def dense_attention_fisher(m, w=WINDOWS, layers=None):
    params, x = model_params(m), w[:, :-1]
    T, L = x.size(1), len(m.transformer.h)
    layers = list(range(L)) if layers is None else layers
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    def logp(f):
        probs = functional_call(m, unflatten(f, params), (x,), {"capture": True})[2]
        return torch.stack([torch.where(mask, probs[l], 1).log() for l in layers])
    with curvature_mode(m):
        J = torch.autograd.functional.jacobian(logp, flatten(params), vectorize=True)
        P = torch.stack([functional_call(m, params, (x,), {"capture": True})[2][l] for l in layers])
    Fr = fim(P) * (mask[:, :, None] & mask[:, None, :])
    return torch.einsum("lbhijn,lbhijk,lbhikm->nm", J, Fr, J) / x.numel()


@pytest.mark.parametrize("attn", ["standard", "ra", "mla_kvsplice", "ra_mla"])
def test_attention_fisher_against_dense(attn):
    m = micro_model(attn)
    G = dense_attention_fisher(m)
    v = rand_vec(G.shape[0])
    assert rel(attention_fisher_operator(m, WINDOWS)(v), G @ v) < 1e3 * EPS
    ev = scipy.linalg.eigh(G.numpy(), eigvals_only=True)[::-1]
    assert ev[-1] > -1e-12 * ev[0]  # PSD
    r = attention_fisher_sharpness(m, WINDOWS, k=2, tol=1e-10)
    np.testing.assert_allclose(r.values.numpy(), ev[:2], rtol=1e-6, atol=0)


def test_attention_fisher_layers_add_up():
    m = micro_model("ra")
    v = rand_vec(sum(t.numel() for t in model_params(m).values()))
    per = [attention_fisher_operator(m, WINDOWS, layers=[l])(v) for l in range(2)]
    both = attention_fisher_operator(m, WINDOWS)(v)
    assert rel(per[0] + per[1], both) < 1e3 * EPS
    assert rel(per[1], dense_attention_fisher(m, layers=[1]) @ v) < 1e3 * EPS


def test_attention_fisher_is_hessian_of_mean_kl():
    m = micro_model("mla")
    params, x = model_params(m), WINDOWS[:, :-1]
    with curvature_mode(m):
        p0 = [p.detach() for p in functional_call(m, params, (x,), {"capture": True})[2]]
        def mean_kl(f):
            probs = functional_call(m, unflatten(f, params), (x,), {"capture": True})[2]
            return sum((torch.xlogy(a, a) - torch.xlogy(a, torch.where(a > 0, b, 1))).sum() for a, b in zip(p0, probs)) / x.numel()
        H_kl = torch.autograd.functional.hessian(mean_kl, flatten(params))
    G = attention_fisher_operator(m, WINDOWS).dense()
    assert torch.allclose(H_kl, G, rtol=0, atol=1e-10 * G.abs().max())


def test_attention_fisher_handles_underflowed_probabilities():
    "Rows with exact zeros on the causal support (huge scores) must give finite products (0/0 guarded)."
    m = micro_model("standard")
    with torch.no_grad(): m.transformer.h[0].attn.c_attn.weight.mul_(400.0)
    x = WINDOWS[:, :-1]
    m.eval()
    p = m(x, capture=True)[2][0]
    mask = torch.tril(torch.ones(5, 5, dtype=torch.bool))
    assert bool(((p == 0) & mask).any())  # the regime is reached
    out = attention_fisher_operator(m, WINDOWS)(rand_vec(sum(t.numel() for t in model_params(m).values())))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("attn", ["standard", "ra_mla_kvsplice"])
def test_gauss_newton_against_dense(attn):
    m = micro_model(attn)
    params, x = model_params(m), WINDOWS[:, :-1]
    with curvature_mode(m):
        Jz = torch.autograd.functional.jacobian(lambda f: functional_call(m, unflatten(f, params), (x,))[0],
                                                flatten(params), vectorize=True)
        q = torch.softmax(functional_call(m, params, (x,))[0], -1)
    Gd = torch.einsum("btvn,btvw,btwm->nm", Jz, fim(q), Jz) / x.numel()
    v = rand_vec(Gd.shape[0])
    assert rel(gauss_newton_operator(m, WINDOWS)(v), Gd @ v) < 1e3 * EPS
    ev = scipy.linalg.eigh(Gd.numpy(), eigvals_only=True)[::-1]
    np.testing.assert_allclose(gauss_newton_sharpness(m, WINDOWS, k=2, tol=1e-10).values.numpy(), ev[:2], rtol=1e-6)


def test_gauss_newton_ignores_masked_targets():
    "Tokens with target -1 are out of the loss, so out of its Gauss-Newton matrix (and N counts only the rest)."
    m = micro_model("standard")
    x, y = split_batch(WINDOWS)
    y2 = y.clone(); y2[0] = -1
    v = rand_vec(sum(t.numel() for t in model_params(m).values()))
    a = gauss_newton_operator(m, (x, y2))(v)
    b = gauss_newton_operator(m, (x[1:], y[1:]))(v)
    assert rel(a, b) < 1e3 * EPS


# ---- Adam --------------------------------------------------------------------------------------------------------

def adam_micro(steps=4, lr=1e-2, wd=0.0):
    m = micro_model("standard")
    opt = torch.optim.AdamW(m.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=wd)
    for _ in range(steps):
        opt.zero_grad(); model_loss(m, dict(m.named_parameters()), *split_batch(WINDOWS)).backward(); opt.step()
    return m, opt


def test_preconditioner_reproduces_adamw_steps():
    m, opt = adam_micro(3)
    named = dict(m.named_parameters())
    for t in range(4, 7):
        before = flatten(model_params(m)).clone()
        opt.zero_grad(); model_loss(m, named, *split_batch(WINDOWS)).backward(); opt.step()
        m_hat = torch.cat([opt.state[named[n]]["exp_avg"].reshape(-1) for n in model_params(m)]) / (1 - 0.9 ** t)
        step = flatten(model_params(m)) - before
        assert torch.allclose(step, -1e-2 * m_hat / adam_preconditioner(m, opt), rtol=0, atol=10 * EPS)


def test_preconditioned_sharpness_against_generalised_eigh():
    m, opt = adam_micro()
    H, P = dense_hessian(m), adam_preconditioner(m, opt)
    ev = scipy.linalg.eigh(H.numpy(), np.diag(P.numpy()), eigvals_only=True)[::-1]
    r = preconditioned_sharpness(m, WINDOWS, opt, k=2, tol=1e-10)
    assert r.converged
    np.testing.assert_allclose(r.values.numpy(), ev[:2], rtol=1e-6, atol=0)


@pytest.mark.parametrize("beta1", [0.0, 0.5, 0.9])
def test_threshold_separates_stable_from_unstable(beta1):
    "The frozen-P EMA-momentum iteration on a quadratic is stable just below (2+2b1)/((1-b1) lambda1) and not above."
    n = 20
    H = sym_with_spectrum(torch.linspace(0.01, 1.0, n, dtype=torch.float64), seed=4)
    P = torch.linspace(0.5, 2.0, n, dtype=torch.float64)
    lams, X = scipy.linalg.eigh(H.numpy(), np.diag(P.numpy()))
    th0 = torch.from_numpy(X[:, -1])
    opt = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=1.0, betas=(beta1, 0.999))
    lr_star = 1.0 * adam_stability_threshold(opt) / lams[-1]  # the lr at which lambda1(P^-1 H) = threshold
    def final(lr, steps=300):
        th, mom = th0.clone(), torch.zeros(n, dtype=torch.float64)
        for _ in range(steps):
            mom = beta1 * mom + (1 - beta1) * (H @ th); th = th - lr * mom / P
        return (th.norm() / th0.norm()).item()
    assert final(0.97 * lr_star) < 1.0 < 1e3 < final(1.03 * lr_star)


def test_preconditioned_operator_is_similar_to_p_inverse_h():
    A = sym_with_spectrum(torch.tensor([3.0, -1.0, 0.5, 2.0], dtype=torch.float64))
    P = torch.tensor([1.0, 2.0, 0.5, 4.0], dtype=torch.float64)
    op = preconditioned_operator(FlatOperator(lambda v: A @ v, 4, torch.float64, torch.device("cpu"), ["x"]), P)
    D = op.dense()
    assert torch.allclose(D, D.T, atol=1e-14)
    np.testing.assert_allclose(np.sort(np.linalg.eigvals((torch.diag(1 / P) @ A).numpy()).real),
                               np.sort(np.linalg.eigvalsh(D.numpy())), atol=1e-12)


# ---- wrong inputs ------------------------------------------------------------------------------------------------

def test_wrong_inputs():
    m = micro_model()
    f = lambda v: v
    with pytest.raises(ValueError, match="k must be"): lanczos(f, 5, k=6)
    with pytest.raises(ValueError, match="k must be"): lanczos(f, 5, k=0)
    with pytest.raises(ValueError, match="which must be"): lanczos(f, 5, which="SA")
    with pytest.raises(ValueError, match="max_iter"): lanczos(f, 5, max_iter=0)
    with pytest.raises(ValueError, match="tol"): lanczos(f, 5, tol=0.0)
    with pytest.raises(ValueError, match="n must be"): lanczos(f, 0)
    with pytest.raises(ValueError, match=r"\(B, T\+1\)"): loss_sharpness(m, WINDOWS[:, :1])
    with pytest.raises(ValueError, match=r"\(B, T\+1\)"): loss_sharpness(m, WINDOWS[0])
    with pytest.raises(TypeError, match="batch must be"): loss_sharpness(m, [WINDOWS])
    with pytest.raises(ValueError, match="both be"): loss_sharpness(m, (WINDOWS[:, :-1], WINDOWS[:, :-2]))
    with pytest.raises(ValueError, match="method must be"): hessian_operator(m, WINDOWS, method="exact")
    with pytest.raises(KeyError, match="not parameters"): hessian_operator(m, WINDOWS, names=["nope"])
    with pytest.raises(ValueError, match="no parameters"): hessian_operator(m, WINDOWS, names=[])
    with pytest.raises(ValueError, match="layers must be"): attention_fisher_operator(m, WINDOWS, layers=[2])
    with pytest.raises(ValueError, match="layers must be"): attention_fisher_operator(m, WINDOWS, layers=[])
    x, y = split_batch(WINDOWS)
    with pytest.raises(ValueError, match="ignore_index"): gauss_newton_operator(m, (x, torch.full_like(y, -1)))
    with pytest.raises(ValueError, match="take at least one optimizer step"):
        adam_preconditioner(m, torch.optim.AdamW(m.parameters()))
    with pytest.raises(TypeError, match="Adam or AdamW"): adam_preconditioner(m, torch.optim.SGD(m.parameters(), lr=0.1))
    ps = list(m.parameters())
    two = torch.optim.AdamW([{"params": ps[:3], "lr": 1e-3}, {"params": ps[3:], "lr": 2e-3}])
    with pytest.raises(ValueError, match="no single threshold"): adam_stability_threshold(two)
    part = torch.optim.AdamW(ps[1:])  # the tied embedding (first parameter) left out
    with pytest.raises(ValueError, match="not trained by this optimizer"): adam_preconditioner(m, part)
    op = hessian_operator(m, WINDOWS)
    with pytest.raises(ValueError, match="positive"): preconditioned_operator(op, torch.ones(op.n - 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="positive"): preconditioned_operator(op, torch.zeros(op.n, dtype=torch.float64))
    with pytest.raises(ValueError, match="entries"): unflatten(torch.zeros(3), {"a": torch.zeros(2)})


def test_forward_mode_products_raise_no_torch_deprecation_warning():
    "Regression: the first jvp of a process loads torch's forward-AD decompositions, whose import calls the deprecated\n    torch.jit.script; under -W error that DeprecationWarning stopped `lr-sweep` (18 of them in test_cli_lr_sweep)."
    import subprocess, sys
    code = ("import torch\n"
            "from fim_attention.model import GPT, GPTConfig\n"
            "from fim_attention.sharpness import gauss_newton_operator, hessian_operator\n"
            "torch.manual_seed(0)\n"
            "m = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)).double()\n"
            "b = torch.randint(0, 11, (2, 9))\n"
            "for op in (hessian_operator(m, b, method='forward'), gauss_newton_operator(m, b)):\n"
            "    v = torch.randn(op.n, dtype=torch.float64)\n"
            "    assert torch.isfinite(op(v)).all()\n")
    r = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
