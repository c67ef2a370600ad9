"""`fim_attention.compress` and `fim-attention compress`: rank-r keys / logits exact at full rank and worse as r falls,
the compressed forward at full rank equal to the plain loss, the taps changing nothing by themselves (GPT and a
transformers model), Spearman against SciPy, wrong inputs, and a smoke run of the verb with its files and its resume."""
import contextlib
import csv
import io
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from fim_attention import compress as C
from fim_attention.cli import main
from fim_attention.model import GPT, GPTConfig
from fim_attention.training import CKPT_FORMAT, TrainConfig, save_checkpoint


@pytest.fixture(scope="module")
def gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32)).eval()


@pytest.fixture(scope="module")
def windows():
    g = torch.Generator().manual_seed(0)
    return C.Windows.causal(torch.randint(0, 256, (2, 32), generator=g))


# ---- the approximations ----

def test_rank_d_keys_are_exact_and_kl_grows_as_r_falls():
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(3, 4, 24, 16, generator=g), 2 * torch.randn(3, 4, 24, 16, generator=g)
    sv, V, _ = C.key_basis(k.transpose(0, 1).reshape(4, 72, 16))
    al = C.allowed_mask(None, 24, 24)
    lp = C.masked_log_softmax(q @ k.mT / 4, al)
    kl = {r: C.row_kl(lp, C.masked_log_softmax(q @ C.lowrank_keys(k, V, r).mT / 4, al)).mean().item() for r in (16, 8, 4, 2, 1)}
    assert kl[16] < 1e-6
    assert kl[1] > kl[2] > kl[4] > kl[8] > kl[16]
    torch.testing.assert_close(C.lowrank_keys(k, V, 16), k, atol=1e-5, rtol=1e-5)     # V_d V_d^T = I
    assert torch.allclose(C.key_energy(sv, 16), torch.ones(4, dtype=torch.float64))


def test_best_rank_r_is_eckart_young():
    g = torch.Generator().manual_seed(4)
    k = torch.randn(1, 50, 8, generator=g, dtype=torch.float64)
    sv, V, _ = C.key_basis(k)
    for r in (1, 3, 7):
        err = (k[0] - C.lowrank_keys(k[None], V, r)[0, 0]).norm() ** 2
        torch.testing.assert_close(err, (sv[0, r:] ** 2).sum())                       # the tail of the spectrum
    s = torch.randn(2, 10, 10, generator=g, dtype=torch.float64)
    assert torch.linalg.matrix_rank(C.lowrank_logits(s, 3)).tolist() == [3, 3]


def test_centred_basis_keeps_a_common_key_offset_free():
    g = torch.Generator().manual_seed(5)
    q, k = torch.randn(1, 1, 12, 6, generator=g), torch.randn(1, 1, 12, 6, generator=g)
    k_off = k + 50 * torch.randn(6, generator=g)                                       # the softmax ignores a common offset
    al = C.allowed_mask(None, 12, 12)
    lp = C.masked_log_softmax(q @ k_off.mT, al)
    kl = {}
    for center in (False, True):
        _, V, mu = C.key_basis(k_off[0], center)
        kr = C.lowrank_keys(k_off, V, 1, mu if center else None)
        kl[center] = C.row_kl(lp, C.masked_log_softmax(q @ kr.mT, al)).mean().item()
    assert kl[True] < kl[False]


def test_kl_and_entropy_of_rows():
    al = C.allowed_mask(None, 4, 4)
    lp = C.masked_log_softmax(torch.zeros(4, 4), al)                                   # uniform over the allowed keys
    torch.testing.assert_close(C.row_entropy(lp)[0, 0], torch.log(torch.arange(1, 5.0)))
    assert C.row_kl(lp, lp).abs().max() == 0
    pad = C.allowed_mask(torch.tensor([[True, True, False]])[:, None, None, :], 3, 3, True)  # a bool padding mask
    assert pad.shape == (1, 1, 1, 3) and not pad[..., 2].any()
    add = C.allowed_mask(torch.tensor([0.0, torch.finfo(torch.float32).min])[None, None, None], 1, 2)
    assert add.tolist() == [[[[True, False]]]]


# ---- the taps and the compressed forward ----

def test_tap_changes_nothing_and_full_rank_loss_is_the_plain_loss(gpt, windows):
    with torch.no_grad():
        ref = gpt(windows.input_ids)[0]
        with C.attention_tap(gpt, lambda *a: None): out = gpt(windows.input_ids)[0]
    assert torch.equal(out, ref)
    cap = C.capture(gpt, windows)
    assert cap.shape == (2, 2, 2, 32, 16)
    bases = [C.head_damage(cap, l, (16,))["basis"] for l in range(2)]
    for fn in (C.compressor("none", 16), C.compressor("keys", 16, bases), C.compressor("logits", 16)):
        torch.testing.assert_close(C.compressed_losses(gpt, windows, fn), cap.loss, atol=1e-5, rtol=0)
    low = C.compressed_losses(gpt, windows, C.compressor("keys", 1, bases))
    assert (low - cap.loss).abs().max() > 1e-6


def test_head_damage_at_full_rank_is_zero_and_grows(gpt, windows):
    cap = C.capture(gpt, windows)
    hd = C.head_damage(cap, 0, (2, 8, 16))
    for m in C.METHODS:
        assert hd[f"kl_{m}_r16"].abs().max() < 1e-6
        assert (hd[f"kl_{m}_r2"] >= hd[f"kl_{m}_r8"] - 1e-9).all()
    assert (hd["entropy"] > 0).all() and (hd["key_energy_r2"] < hd["key_energy_r8"]).all()


def test_hf_tap_on_minilm_changes_nothing_and_is_exact_at_full_rank():
    from fim_attention import hf
    try: model, tok = hf.load_pretrained("minilm")
    except hf.ModelNotInstalled: pytest.skip("all-MiniLM-L6-v2 not installed")
    win = hf.text_windows("To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer", tok, max_len=32)
    w = C.Windows(win["input_ids"], win["attention_mask"])
    with torch.no_grad():
        ref = model(**win).last_hidden_state
        with C.attention_tap(model, lambda *a: None): out = model(**win).last_hidden_state
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert model.config._attn_implementation != C.TAP_NAME                             # restored
    cap = C.capture(model, w)
    assert cap.loss is None and len(cap.q) == 6 and cap.q[0].shape[1] == 12
    hd = C.head_damage(cap, 2, (4, 32))
    assert hd["kl_keys_r32"].abs().max() < 1e-6 and (hd["kl_keys_r4"] > 1e-4).all()


# ---- statistics ----

def test_spearman_against_scipy():
    rng = np.random.default_rng(0)
    for n, ties in ((30, False), (40, True), (7, False)):
        x, y = rng.normal(size=n), rng.normal(size=n)
        if ties: x, y = np.round(x), np.round(y * 2)
        assert math.isclose(C.spearman(x, y), stats.spearmanr(x, y).statistic, rel_tol=1e-12, abs_tol=1e-12)
    x, y = rng.normal(size=20), rng.normal(size=20)
    x[3] = np.nan
    ok = ~np.isnan(x)
    assert math.isclose(C.spearman(x, y), stats.spearmanr(x[ok], y[ok]).statistic, rel_tol=1e-12)
    assert math.isnan(C.spearman(np.ones(10), y[:10])) and math.isnan(C.spearman([1.0, 2.0], [2.0, 1.0]))


def test_bootstrap_intervals_are_seeded_and_cover():
    rng = np.random.default_rng(1)
    a = rng.normal(size=80); b = a + rng.normal(size=80); c = rng.normal(size=80)
    r1, r2 = C.spearman_ci(a, b, seed=3), C.spearman_ci(a, b, seed=3)
    assert r1 == r2 and r1[1] < r1[0] < r1[2] and r1[1] > 0
    assert C.spearman_ci(a, b, seed=4) != r1
    p, lo, hi = C.partial_spearman_ci(a, b, c)
    assert math.isclose(p, C.partial_spearman(a, b, c), rel_tol=1e-12) and lo < p < hi
    d, lo, hi = C.abs_rho_diff_ci(b, c, a)
    assert lo > 0                                                                     # b ranks a far better than noise does
    # partial Spearman = the textbook formula for one control
    rxy, rxz, ryz = C.spearman(a, b), C.spearman(a, c), C.spearman(b, c)
    assert math.isclose(C.partial_spearman(a, b, c), (rxy - rxz * ryz) / math.sqrt((1 - rxz**2) * (1 - ryz**2)), rel_tol=1e-10)


# ---- wrong inputs ----

def test_wrong_inputs(gpt, windows):
    for bad in ((), (0, 4), (4, 4), (2.5,), (True,), "abc", None):
        with pytest.raises(ValueError): C.check_ranks(bad)
    with pytest.raises(ValueError, match="exceeds the head dimension"): C.check_ranks((4, 32), head_dim=16)
    with pytest.raises(ValueError, match="at least one window"): C.Windows(torch.zeros(0, 5).long(), torch.zeros(0, 5).long())
    with pytest.raises(ValueError, match="padding"): C.Windows(torch.zeros(1, 5).long(), torch.zeros(1, 5).long())
    with pytest.raises(ValueError, match="method"): C.compressor("values", 4)
    with pytest.raises(ValueError, match="bases"): C.compressor("keys", 4)
    with pytest.raises(TypeError, match="neither"):
        with C.attention_tap(torch.nn.Linear(2, 2), lambda *a: None): pass
    with pytest.raises(ValueError, match="x and y"): C.spearman([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="head dimension"): C.run_compress(gpt, windows, "/nonexistent/never", ranks=(32,))


# ---- the verb ----

def _run(argv):
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e): code = main(argv)
    return code, o.getvalue(), e.getvalue()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, gpt):
    p = tmp_path_factory.mktemp("ck") / "ckpt.pt"
    tc = TrainConfig(model=gpt.config, max_steps=1)
    save_checkpoint({"format": CKPT_FORMAT, "config": tc.to_dict(), "model": gpt.state_dict(), "step": 0}, p)
    return p


def test_verb_help_names_exit_codes():
    code, out, _ = _run(["compress", "--help"])
    assert code == 0 and "usage: fim-attention compress" in out and "exit codes: 0 ok; 1 runtime failure; 2 usage error" in out
    for flag in ("--model", "--windows", "--max-len", "--ranks", "--out", "--threads", "--text", "--center"): assert flag in out


def test_verb_smoke_writes_files_and_resumes(ckpt, tmp_path):
    out = tmp_path / "c"
    argv = ["compress", "--model", str(ckpt), "--windows", "2", "--max-len", "32", "--ranks", "2,16", "--out", str(out),
            "--threads", "1", "--boot", "100"]
    code, stdout, stderr = _run(argv)
    assert code == 0, stderr
    for f in ("records.jsonl", "bases.pt", "heads.csv", "loss.csv", "correlations.csv", "verdicts.md", "kl_vs_rank.png",
              "correlations.png", "scatter.png", "loss_vs_rank.png"):
        assert (out / f).is_file(), f
    heads = list(csv.DictReader(open(out / "heads.csv")))
    assert len(heads) == 4 and {"layer", "head", "entropy", "key_energy_r2", "q_eigmax", "ref_energy_r8", "kl_keys_r2",
                                "kl_logits_r16"} <= set(heads[0])
    assert all(abs(float(h["kl_keys_r16"])) < 1e-6 for h in heads)                 # 16 = the head dimension: exact
    loss = list(csv.DictReader(open(out / "loss.csv")))
    assert [(r["method"], int(r["rank"])) for r in loss] == [("keys", 2), ("keys", 16), ("logits", 2), ("logits", 16)]
    assert abs(float(loss[1]["delta"])) < 1e-5
    corr = list(csv.DictReader(open(out / "correlations.csv")))
    assert {r["stat"] for r in corr} >= {"spearman", "partial_given_baselines"}
    assert "compressibility of 4 heads" in stdout and "| keys | 2 |" in stdout
    n = len((out / "records.jsonl").read_text().splitlines())
    assert n == 1 + 2 + 2 + 2 * 5                                                    # config, layers, fim, loss (plain + 4) x 2 windows
    argv = [*argv, "--no-plots"]                                                      # reruns: tables are enough
    code, stdout2, stderr2 = _run(argv)                                              # a rerun: nothing to do
    assert code == 0 and len((out / "records.jsonl").read_text().splitlines()) == n
    assert "capture" not in stderr2 and "FIM metrics" not in stderr2
    # a lost unit is redone, and only it
    lines = (out / "records.jsonl").read_text().splitlines()
    (out / "records.jsonl").write_text("\n".join(l for l in lines if not ('"logits"' in l and '"window": 1' in l and '"rank": 2,' in l)) + "\n")
    code, _, stderr3 = _run(argv)
    assert code == 0 and "capture" not in stderr3 and "logits at rank 2: 1 window(s)" in stderr3
    assert len((out / "records.jsonl").read_text().splitlines()) == n
    # another configuration in the same folder: refused
    code, _, err = _run(["2,8" if a == "2,16" else a for a in argv])
    assert code == 2 and "another configuration" in err


def test_verb_bad_input_exits_2(ckpt, tmp_path):
    base = ["compress", "--out", str(tmp_path / "x"), "--threads", "1"]
    for argv, msg in (([*base, "--model", "nonexistent-model"], "unknown model"),
                      ([*base, "--model", str(tmp_path / "missing.pt")], "no such checkpoint"),
                      ([*base, "--model", str(ckpt), "--ranks", "0,4"], "--ranks"),
                      ([*base, "--model", str(ckpt), "--max-len", "32", "--ranks", "4,64"], "exceeds the head dimension"),
                      ([*base, "--model", str(ckpt), "--max-len", "64"], "--max-len 64 exceeds the model's block_size 32"),
                      ([*base, "--model", str(ckpt), "--windows", "0"], "--windows"),
                      ([*base, "--model", "smollm2", "--text", str(tmp_path / "none.txt")], "no text file")):
        code, _, err = _run(argv)
        assert code == 2 and msg in err, (argv, err)


def test_a_folder_holds_one_model_and_text(gpt, windows, tmp_path):
    C.run_compress(gpt, windows, tmp_path, ranks=(2,), label="a", n_boot=50, plots=False)
    n = len(C.read_records(tmp_path))
    C.run_compress(gpt, windows, tmp_path, ranks=(2,), label="the same weights, named otherwise", n_boot=50, plots=False)
    assert len(C.read_records(tmp_path)) == n
    torch.manual_seed(1)
    other = GPT(gpt.config).eval()
    with pytest.raises(C.FolderConflict, match="weights"): C.run_compress(other, windows, tmp_path, ranks=(2,), plots=False)
    with pytest.raises(C.FolderConflict, match="fingerprint"): C.run_compress(gpt, windows[:1], tmp_path, ranks=(2,), plots=False)


def test_verb_interrupted_exits_128_plus_signal_and_resumes(ckpt, tmp_path, monkeypatch):
    out = tmp_path / "i"
    argv = ["compress", "--model", str(ckpt), "--windows", "2", "--max-len", "32", "--ranks", "2,4", "--out", str(out),
            "--threads", "1", "--boot", "50", "--no-plots"]
    real, calls = C.compressed_losses, []

    def stop_on_third(*a, **k):
        calls.append(1)
        if len(calls) == 3: raise KeyboardInterrupt                                   # Ctrl-C in the middle of the loss stage
        return real(*a, **k)
    monkeypatch.setattr(C, "compressed_losses", stop_on_third)
    code, _, err = _run(argv)
    assert code == 130 and "interrupted by SIGINT" in err and "rerun the same command to continue" in err
    n = len(C.read_records(out))
    monkeypatch.setattr(C, "compressed_losses", real)
    code, stdout, err = _run(argv)
    assert code == 0 and "capture" not in err                                        # the finished units were kept
    assert len(C.read_records(out)) == 1 + 2 + 2 + 2 * 5 and n == 1 + 2 + 2 + 2 + 2
