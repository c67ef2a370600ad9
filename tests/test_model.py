"""The GPT: shapes, capture, KV-cache decoding, cache bytes, RA layers, bad configs, init, determinism."""
import dataclasses
import math

import pytest
import torch

from fim_attention.attention import ATTENTION_VARIANTS, CausalSelfAttention, MLAttention
from fim_attention.model import GPT, GPTConfig

VARIANTS = list(ATTENTION_VARIANTS)
SMALL = dict(n_layer=3, n_head=2, n_embd=32, block_size=24)


def build(attn="standard", seed=0, dtype=torch.float32, **kw):
    torch.manual_seed(seed)
    return GPT(GPTConfig(attn=attn, **{**SMALL, **kw})).to(dtype).eval()


def ids(B=2, T=24, seed=0):
    return torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("attn", VARIANTS)
def test_forward_shapes_loss_and_capture(attn):
    m, x = build(attn), ids()
    logits, loss = m(x)
    assert logits.shape == (2, 24, 256) and loss is None
    y = ids(seed=1)  # (targets = inputs would not do: tied weights favour the current token at init)
    logits, loss = m(x, y)
    # GPT-2 init: near-uniform predictions, loss close to ln 256
    assert abs(loss.item() - math.log(256)) < 0.05
    logits_c, loss_c, probs = m(x, y, capture=True)
    assert len(probs) == 3 and all(p.shape == (2, 2, 24, 24) for p in probs)
    torch.testing.assert_close(logits_c, logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss_c, loss)
    upper = torch.ones(24, 24, dtype=torch.bool).triu(1)
    for p in probs:
        assert (p[..., upper] == 0).all() and (p.sum(-1) - 1).abs().max() < 1e-5


@pytest.mark.parametrize("attn", VARIANTS)
def test_captured_probs_are_the_layers_probs(attn):
    """Feed each block's normalised input to its attention module: the model's capture is that module's P."""
    m, x = build(attn, dtype=torch.float64), ids()
    inputs = []
    hooks = [b.attn.register_forward_pre_hook(lambda mod, args, kw: inputs.append(args[0]), with_kwargs=True)
             for b in m.transformer.h]
    _, _, probs = m(x, capture=True)
    for h in hooks: h.remove()
    for b, inp, p in zip(m.transformer.h, inputs, probs):
        assert (b.attn(inp, capture=True)[1] - p).abs().max() == 0


@pytest.mark.parametrize("attn", VARIANTS)
def test_kv_cache_decoding_equals_full_forward(attn):
    m, x = build(attn, dtype=torch.float64), ids()
    full = m(x)[0]
    cache = m.new_cache(2)
    steps = [m(x[:, :7], cache=cache)[0]] + [m(x[:, t:t + 1], cache=cache)[0] for t in range(7, 24)]
    assert (torch.cat(steps, 1) - full).abs().max() < 1e-10
    assert cache.pos == 24
    # the bytes method reads the widths of the buffers the decoder really allocates
    assert cache.nbytes == m.kv_cache_bytes_per_token(torch.float64) * 2 * 24
    with pytest.raises(ValueError, match="block_size"):
        m(x[:, :1], cache=cache)


@pytest.mark.parametrize("attn", ["standard", "ra_mla_kvsplice"])
def test_generate_cache_equals_reference_past_block_size(attn):
    m = build(attn, block_size=16)
    prompt = ids(B=2, T=10)
    a = m.generate(prompt, 20, temperature=0)  # slides past the 16-token window
    b = m.generate(prompt, 20, temperature=0, use_cache=False)
    assert a.shape == (2, 30) and torch.equal(a, b) and torch.equal(a[:, :10], prompt)
    s1 = m.generate(prompt, 12, top_k=5, generator=torch.Generator().manual_seed(3))
    s2 = m.generate(prompt, 12, top_k=5, generator=torch.Generator().manual_seed(3), use_cache=False)
    assert torch.equal(s1, s2)


def test_cache_bytes_per_token_default_config():
    b = {a: GPT(GPTConfig(attn=a)).kv_cache_bytes_per_token() for a in VARIANTS}
    L, C = 4, 128
    assert b["standard"] == b["ra"] == L * 2 * C * 4
    assert b["mla"] == L * 64 * 4 and b["mla"] < b["standard"]
    assert 2 * b["mla_kvsplice"] == b["mla"]  # KVSplice = 50% of MLA at the default
    # reversed latent layers cache Q (C numbers) beside the latent
    assert b["ra_mla"] == (2 * 64 + 2 * (64 + C)) * 4
    assert b["ra_mla_kvsplice"] == (2 * 32 + 2 * (32 + C)) * 4
    m = GPT(GPTConfig(attn="mla"))
    assert m.kv_cache_bytes_per_token(torch.bfloat16) * 2 == m.kv_cache_bytes_per_token(torch.float32)
    assert m.kv_cache_bytes_per_token(torch.float64) == 2 * m.kv_cache_bytes_per_token()


@pytest.mark.parametrize("pattern,expect", [("alternate", [1, 3]), ("early", [0, 1]), ("late", [2, 3]),
                                            ("all", [0, 1, 2, 3]), ("none", [])])
def test_reversed_layers(pattern, expect):
    for attn in ("ra", "ra_mla", "ra_mla_kvsplice"):
        m = GPT(GPTConfig(attn=attn, ra_pattern=pattern, n_layer=4, n_embd=32, n_head=2))
        assert m.reversed_layers == expect == m.config.reversed_layers
    for attn in ("standard", "mla", "mla_kvsplice"):
        assert GPT(GPTConfig(attn=attn, ra_pattern=pattern, n_embd=32, n_head=2)).reversed_layers == []


def test_module_families():
    kinds = {a: {type(b.attn) for b in GPT(GPTConfig(attn=a, n_embd=32, n_head=2)).transformer.h} for a in VARIANTS}
    assert kinds["standard"] == kinds["ra"] == {CausalSelfAttention}
    assert all(kinds[a] == {MLAttention} for a in VARIANTS if "mla" in a)
    spl = GPT(GPTConfig(attn="mla_kvsplice", n_embd=32, n_head=2)).transformer.h[0].attn
    assert spl.splice is not None and spl.cache_width == 8


@pytest.mark.parametrize("kw,match", [
    (dict(attn="flash"), "valid names: standard, ra, mla, mla_kvsplice, ra_mla, ra_mla_kvsplice"),
    (dict(n_embd=100, n_head=3), "not divisible by n_head"),
    (dict(attn="mla_kvsplice", d_latent=32, d_compressed=40), "d_compressed=40 > d_latent=32"),
    (dict(attn="ra", ra_pattern="odd"), "ra_pattern"),
    (dict(attn="standard", d_latent=16), "no latent"),
    (dict(attn="mla", d_compressed=16), "no KVSplice"),
    (dict(n_layer=0), "n_layer"),
    (dict(dropout=1.0), "dropout"),
    (dict(attn="mla", d_latent=-4), "d_latent"),
    (dict(kvsplice_recon_weight=-1.0), "recon"),
])
def test_bad_configs(kw, match):
    with pytest.raises(ValueError, match=match):
        GPTConfig(**kw)


def test_too_long_input_and_bad_config_type():
    m = build()
    with pytest.raises(ValueError, match="exceeds block_size 24"):
        m(ids(T=25))
    with pytest.raises(TypeError):
        GPT(dataclasses.asdict(GPTConfig()))


def test_config_roundtrip_and_defaults():
    cfg = GPTConfig(attn="ra_mla_kvsplice")
    assert GPTConfig(**dataclasses.asdict(cfg)) == cfg
    assert (cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_head, cfg.n_embd) == (256, 128, 4, 4, 128)
    assert (cfg.latent_dim, cfg.compressed_dim) == (64, 32)
    # unresolved defaults follow the width when it changes
    assert dataclasses.replace(cfg, n_embd=256).latent_dim == 128


def test_gpt2_124m_parameter_count():
    with torch.device("meta"):
        m = GPT(GPTConfig.gpt2())
    assert m.num_params() == 124_439_808
    assert m.num_params(non_embedding=True) == 124_439_808 - 1024 * 768
    assert m.kv_cache_bytes_per_token(torch.float16) == 12 * 2 * 768 * 2


def test_weight_tying_and_init():
    m = GPT(GPTConfig())
    assert m.transformer.wte.weight is m.lm_head.weight
    L = m.config.n_layer
    for name, p in m.named_parameters():
        if name.endswith("c_proj.weight"):
            assert abs(p.std().item() - 0.02 / math.sqrt(2 * L)) < 0.1 * 0.02 / math.sqrt(2 * L), name
        elif name.endswith("c_attn.weight") or name.endswith("c_fc.weight"):
            assert abs(p.std().item() - 0.02) < 0.002, name
        elif name.endswith(".bias") and "ln_" not in name:
            assert (p == 0).all(), name


@pytest.mark.parametrize("attn", ["mla_kvsplice", "ra_mla_kvsplice"])
def test_gradient_flows_through_kvsplice(attn):
    m = build(attn)
    m.train()
    _, loss = m(ids(), ids(seed=1))
    loss.backward()
    for b in m.transformer.h:
        for lin in (b.attn.splice.compress, b.attn.splice.expand, b.attn.kv_down, b.attn.k_up, b.attn.v_up):
            assert lin.weight.grad is not None and lin.weight.grad.abs().max() > 0


def test_kvsplice_reconstruction_loss_is_added_when_asked():
    x, y = ids(), ids(seed=1)
    off, on = build("mla_kvsplice"), build("mla_kvsplice", kvsplice_recon_weight=0.5)
    l_off, l_on = off(x, y)[1], on(x, y)[1]
    recon = torch.stack([b.attn.aux_loss for b in on.transformer.h]).mean()
    assert recon > 0 and abs(l_on.item() - (l_off.item() + 0.5 * recon.item())) < 1e-5


def test_determinism_with_seed():
    a, b, c = build("ra_mla", seed=7), build("ra_mla", seed=7), build("ra_mla", seed=8)
    x = ids()
    assert torch.equal(a(x)[0], b(x)[0])
    assert not torch.equal(a(x)[0], c(x)[0])
    for (k, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), k


def test_ignore_index_and_dropout_modes():
    m = build()
    x, y = ids(), ids(seed=1)
    y2 = y.clone(); y2[:, :12] = -1
    logits, loss = m(x, y2)
    ref = torch.nn.functional.cross_entropy(logits[:, 12:].reshape(-1, 256), y[:, 12:].reshape(-1))
    torch.testing.assert_close(loss, ref)
    d = build(dropout=0.3)
    d.train()
    assert not torch.equal(d(x)[0], d(x)[0])
    d.eval()
    assert torch.equal(d(x)[0], d(x)[0])


def test_tiny_overfit_learns():
    """A few steps on one repeated batch reduce the loss a lot: the model (any variant) can learn."""
    for attn in ("ra", "ra_mla_kvsplice"):
        m = build(attn)
        m.train()
        opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
        x = ids(B=4, T=24, seed=5)
        x = x % 16  # a 16-symbol alphabet
        losses = []
        for _ in range(40):
            _, loss = m(x[:, :-1], x[:, 1:])
            opt.zero_grad(); loss.backward(); opt.step(); losses.append(loss.item())
        assert losses[-1] < 0.6 * losses[0], (attn, losses[0], losses[-1])


def test_ra_model_is_standard_model_at_swapped_init():
    """Same losses step for step (float64) and the same captured maps; no such twin under MLA."""
    from fim_attention.model import ra_as_standard
    torch.manual_seed(0)
    ra = GPT(GPTConfig(attn="ra", ra_pattern="early", **SMALL)).double()
    twin = ra_as_standard(ra)
    assert twin.config.attn == "standard" and twin.reversed_layers == []
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1) for m in (ra, twin)]
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        xb = torch.randint(0, 256, (2, 25), generator=g)
        losses = []
        for m, opt in zip((ra, twin), opts):
            _, loss = m(xb[:, :-1], xb[:, 1:])
            opt.zero_grad(); loss.backward(); opt.step(); losses.append(loss.item())
        assert abs(losses[0] - losses[1]) < 1e-12
    x = ids()
    for a, b in zip(ra(x, capture=True)[2], twin(x, capture=True)[2]):
        assert (a - b).abs().max() < 1e-12
    # without the swap the standard model is a different function
    plain = GPT(GPTConfig(attn="standard", **SMALL)).double()
    plain.load_state_dict(ra.state_dict())
    assert (plain(x)[0] - ra(x)[0]).abs().max() > 1e-6
    with pytest.raises(ValueError, match="MLA"):
        ra_as_standard(GPT(GPTConfig(attn="ra_mla", **SMALL)))
