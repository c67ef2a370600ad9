"""Attention variants: probe = forward, fused = reference, cache = full forward, RA algebra, bad dims."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from fim_attention.attention import (ATTENTION_VARIANTS, RA_PATTERNS, CausalSelfAttention, KVSplice, LayerKVCache,
                                     MLAttention, MLAKVSpliceAttention, ReciprocalAttention, causal_attend,
                                     causal_mask, check_attention_dims, check_variant, reversed_layer_indices,
                                     score_forms, swap_qk_, values_of)

C, H = 32, 4
LATENT = {"d_latent": 16}


def make(name, reverse, dtype=torch.float64, seed=0, **kw):
    cls = ATTENTION_VARIANTS[name][0]
    torch.manual_seed(seed)
    extra = {} if not ATTENTION_VARIANTS[name][1] else {**LATENT, **kw}
    return cls(C, H, reverse=reverse, **extra).to(dtype).eval()


def x_of(B=2, T=13, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, C, generator=g, dtype=dtype)


VARIANTS = [(n, r) for n in ATTENTION_VARIANTS for r in (False, True)]


def reference_probs(att, x):
    """Independent oracle: P from the module's weights by einsum, with the RA role swap written out."""
    d = C // H
    if isinstance(att, CausalSelfAttention):
        q, k, _ = att.c_attn(x).split(C, dim=2)
    else:
        c = att.kv_down(x)
        q, k = att.q_proj(x), att.k_up(c if att.splice is None else att.splice(c))
    q = q.view(*x.shape[:2], H, d)
    k = k.view(*x.shape[:2], H, d)
    # standard: s_ij = <q_i, k_j>; reversed: s_ij = <k_i, q_j>
    s = torch.einsum("bihd,bjhd->bhij", (k, q) if att.reverse else (q, k)) / math.sqrt(d)
    T = x.size(1)
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), -math.inf)
    return torch.softmax(s, dim=-1)


@pytest.mark.parametrize("name,reverse", VARIANTS)
def test_shapes_and_capture_switch(name, reverse):
    att = make(name, reverse, dtype=torch.float32)
    x = x_of(dtype=torch.float32)
    y, p = att(x)
    assert y.shape == x.shape and p is None
    y2, p2 = att(x, capture=True)
    assert y2.shape == x.shape and p2.shape == (2, H, 13, 13) and p2.dtype == torch.float32
    torch.testing.assert_close(y, y2, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,reverse", VARIANTS)
def test_probe_is_forward_float64(name, reverse):
    att, x = make(name, reverse), x_of()
    y, p = att(x, capture=True)
    B, _, T, _ = p.shape
    # output recomputed from the captured probabilities and the values rebuilt from the weights
    y_re = att.c_proj((p @ values_of(att, x)).transpose(1, 2).reshape(B, T, C))
    assert (y_re - y).abs().max() < 1e-10
    # the fused SDPA path gives the same output
    assert (att(x)[0] - y).abs().max() < 1e-10
    # the captured matrix is the softmax over the right axis with the right roles (the reference bug)
    assert (p - reference_probs(att, x)).abs().max() < 1e-12
    # causal rows: exact zeros above the diagonal, non-negative, summing to one
    assert p[..., torch.ones(T, T, dtype=torch.bool).triu(1)].abs().max() == 0
    assert p.min() >= 0 and (p.sum(-1) - 1).abs().max() < 1e-12


@pytest.mark.parametrize("name,reverse", VARIANTS)
def test_reversed_differs_from_standard_with_same_weights(name, reverse):
    x = x_of()
    a, b = make(name, False), make(name, True)
    b.load_state_dict(a.state_dict())
    assert (a(x, capture=True)[1] - b(x, capture=True)[1]).abs().max() > 1e-3


@pytest.mark.parametrize("name,reverse", VARIANTS)
@pytest.mark.parametrize("chunks", [[13], [1] * 13, [5, 1, 1, 6], [2, 11]])
def test_cache_matches_full_forward(name, reverse, chunks):
    att, x = make(name, reverse), x_of()
    y = att(x)[0]
    cache = LayerKVCache(2, 13, att.cache_width, torch.float64)
    outs, t = [], 0
    for n in chunks:
        outs.append(att(x[:, t:t + n], cache=cache)[0]); t += n
    assert (torch.cat(outs, 1) - y).abs().max() < 1e-10
    # with capture through the cache: the rows of the last chunk equal the full map's rows
    cache2 = LayerKVCache(2, 13, att.cache_width, torch.float64)
    att(x[:, :9], cache=cache2)
    _, p_tail = att(x[:, 9:], capture=True, cache=cache2)
    assert (p_tail - att(x, capture=True)[1][:, :, 9:]).abs().max() < 1e-12


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=8), st.sampled_from(VARIANTS))
def test_cache_any_chunking(chunks, variant):
    T = sum(chunks)
    att, x = make(*variant), x_of(B=1, T=T, seed=T)
    cache = LayerKVCache(1, T, att.cache_width, torch.float64)
    outs, t = [], 0
    for n in chunks:
        outs.append(att(x[:, t:t + n], cache=cache)[0]); t += n
    assert (torch.cat(outs, 1) - att(x)[0]).abs().max() < 1e-10


def test_cache_widths():
    w = {(n, r): make(n, r).cache_width for n, r in VARIANTS}
    for r in (False, True):
        assert w[("standard", r)] == w[("ra", r)] == 2 * C   # K,V or Q,V
    assert w[("mla", False)] == 16 and w[("mla", True)] == 16 + C          # reversed MLA caches Q too
    assert w[("mla_kvsplice", False)] == 8 and w[("mla_kvsplice", True)] == 8 + C
    cache = LayerKVCache(1, 4, 8, torch.float32)
    cache.append(torch.zeros(1, 4, 8))
    with pytest.raises(ValueError, match="full"):
        cache.append(torch.zeros(1, 1, 8))
    with pytest.raises(ValueError, match="do not fit"):
        LayerKVCache(1, 4, 8).append(torch.zeros(1, 1, 7))


def test_causal_attend_offset_mask():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 3, 4, 8, generator=g, dtype=torch.float64)
    b = torch.randn(2, 3, 10, 8, generator=g, dtype=torch.float64)
    v = torch.randn(2, 3, 10, 5, generator=g, dtype=torch.float64)
    y_c, p = causal_attend(a, b, v, capture=True)
    y_f, _ = causal_attend(a, b, v)
    assert (y_c - y_f).abs().max() < 1e-12
    # row i of the 4 new queries sits at absolute position 6 + i
    m = causal_mask(4, 10)
    assert m.sum(1).tolist() == [7, 8, 9, 10] and (p[..., ~m] == 0).all()
    with pytest.raises(ValueError):
        causal_attend(b, a, v[..., :4, :])


def test_capture_half_precision_probabilities_are_float32_softmax():
    att, x = make("mla", False, dtype=torch.bfloat16), x_of(dtype=torch.bfloat16)
    y, p = att(x, capture=True)
    assert p.dtype == torch.bfloat16 and torch.isfinite(y).all()
    assert (p.float().sum(-1) - 1).abs().max() < 2e-2


def test_reversed_layer_is_reparameterised_standard_layer():
    std = CausalSelfAttention(C, H).double()
    rev = swap_qk_(copy.deepcopy(std))
    x = x_of()
    (y1, p1), (y2, p2) = std(x, capture=True), rev(x, capture=True)
    assert rev.reverse and (y1 - y2).abs().max() < 1e-13 and (p1 - p2).abs().max() < 1e-13
    # swapping twice is the identity
    back = swap_qk_(copy.deepcopy(rev))
    for (k, a), (_, b) in zip(std.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k


def test_mla_breaks_the_symmetry():
    """Key-side subspace over heads: <= d_latent for any standard MLA layer, C for a reversed one."""
    def rank(att): return torch.linalg.matrix_rank(score_forms(att.double()).reshape(-1, C)).item()
    torch.manual_seed(0)
    assert rank(CausalSelfAttention(C, H)) == rank(ReciprocalAttention(C, H)) == C
    assert rank(MLAttention(C, H, d_latent=8)) == 8
    assert rank(MLAttention(C, H, d_latent=8, reverse=True)) == C
    assert rank(MLAKVSpliceAttention(C, H, d_latent=8)) == 4  # KVSplice bounds it by d_compressed


def test_score_forms_reproduce_scores():
    for name, r in VARIANTS:
        att, x = make(name, r), x_of()
        for m in att.modules():  # biases would add terms outside the bilinear form
            if isinstance(m, torch.nn.Linear) and m.bias is not None: torch.nn.init.zeros_(m.bias)
        M = score_forms(att)  # (H, C, C)
        s = torch.einsum("bic,hcd,bjd->bhij", x, M, x) / math.sqrt(C // H)
        T = x.size(1)
        p = torch.softmax(s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), -math.inf), -1)
        assert (p - att(x, capture=True)[1]).abs().max() < 1e-12, (name, r)


def test_kvsplice_init_projector_and_gradients():
    sp = KVSplice(16, 8).double()
    sp.reset_projector()  # orthogonalise in float64
    P = sp.expand.weight @ sp.compress.weight
    assert (P @ P - P).abs().max() < 1e-12 and (P - P.T).abs().max() < 1e-12
    assert abs(torch.trace(P).item() - 8) < 1e-10
    att = MLAKVSpliceAttention(C, H, d_latent=16, recon_weight=1.0).double()
    x = x_of()
    y, _ = att(x)
    y.square().sum().backward()
    for lin in (att.splice.compress, att.splice.expand, att.kv_down):
        assert lin.weight.grad is not None and lin.weight.grad.abs().max() > 0
    # the reconstruction term trains E and D only (target detached: the latent cannot shrink to game it)
    att.zero_grad()
    att(x)
    att.aux_loss.backward()
    assert att.kv_down.weight.grad is None or att.kv_down.weight.grad.abs().max() == 0
    assert att.splice.compress.weight.grad.abs().max() > 0


def test_default_kvsplice_halves_latent():
    assert MLAKVSpliceAttention(C, H, d_latent=16).cache_width == 8
    assert MLAKVSpliceAttention(C, H, d_latent=16, d_compressed=16).cache_width == 16


@pytest.mark.parametrize("kw,match", [
    (dict(n_embd=30, n_head=4), "not divisible"),
    (dict(n_embd=32, n_head=0), "positive"),
    (dict(n_embd=32, n_head=4, d_latent=8, d_compressed=9), "d_compressed=9 > d_latent=8"),
    (dict(n_embd=32, n_head=4, d_compressed=4), "needs a latent"),
    (dict(n_embd=32, n_head=4, d_latent=0), "d_latent"),
    (dict(n_embd=32.0, n_head=4), "n_embd"),
])
def test_bad_dims(kw, match):
    with pytest.raises(ValueError, match=match):
        check_attention_dims(**kw)


def test_bad_dims_in_modules():
    with pytest.raises(ValueError, match="divisible"):
        CausalSelfAttention(30, 4)
    with pytest.raises(ValueError, match="d_compressed"):
        MLAttention(32, 4, d_latent=8, d_compressed=16)


def test_variant_names_and_patterns():
    assert set(ATTENTION_VARIANTS) == {"standard", "ra", "mla", "mla_kvsplice", "ra_mla", "ra_mla_kvsplice"}
    with pytest.raises(ValueError, match="valid names: standard, ra, mla"):
        check_variant("MLA")
    assert reversed_layer_indices(6) == [1, 3, 5]
    assert reversed_layer_indices(6, "early") == [0, 1, 2] and reversed_layer_indices(6, "late") == [3, 4, 5]
    assert reversed_layer_indices(6, "all") == list(range(6)) and reversed_layer_indices(6, "none") == []
    for L in range(1, 9):  # alternate, early and late reverse the same number of layers
        assert len({len(reversed_layer_indices(L, p)) for p in ("alternate", "early", "late")}) == 1
    with pytest.raises(ValueError, match="valid patterns"):
        reversed_layer_indices(4, "odd")
    assert set(RA_PATTERNS) == {"none", "alternate", "late", "early", "all"}


def test_dropout_only_in_training():
    att = CausalSelfAttention(C, H, dropout=0.5).double()
    x = x_of()
    att.eval()
    assert torch.equal(att(x)[0], att(x)[0])
    att.train()
    torch.manual_seed(0)
    assert (att(x)[0] - att.eval()(x)[0]).abs().max() > 1e-3


@settings(max_examples=25, deadline=None)
@given(n_head=st.integers(1, 4), d_head=st.integers(1, 6), lat=st.integers(1, 12), comp=st.integers(0, 12),
       reverse=st.booleans(), T=st.integers(1, 9), split=st.integers(0, 9), seed=st.integers(0, 2**16))
def test_any_dims_probe_and_cache(n_head, d_head, lat, comp, reverse, T, split, seed):
    """Arbitrary consistent dims (d_compressed <= d_latent or none): probe recompute, fused path and cache agree."""
    C_ = n_head * d_head
    torch.manual_seed(seed)
    kw = dict(d_latent=lat, d_compressed=min(comp, lat) or None)
    for att in (CausalSelfAttention(C_, n_head, reverse=reverse), MLAttention(C_, n_head, reverse=reverse, **kw)):
        att = att.double().eval()
        x = torch.randn(2, T, C_, dtype=torch.float64)
        y, p = att(x, capture=True)
        y_re = att.c_proj((p @ values_of(att, x)).transpose(1, 2).reshape(2, T, C_))
        assert (y_re - y).abs().max() < 1e-10 and (att(x)[0] - y).abs().max() < 1e-10
        cache, s = LayerKVCache(2, T, att.cache_width, torch.float64), min(split, T)
        parts = [att(x[:, :s], cache=cache)[0]] if s else []
        parts += [att(x[:, s:], cache=cache)[0]] if s < T else []
        assert (torch.cat(parts, 1) - y).abs().max() < 1e-10
