"""Learning-rate sweep: divergence definition, grid, resumability, records, the curvature callback."""
import json
import math

import pytest

from fim_attention.data import load_corpus
from fim_attention.lr_stability import (DivergenceCallback, SharpnessCallback, is_divergent, largest_stable_lr,
                                        lr_grid, lr_sweep, read_sweep)
from fim_attention.model import GPTConfig
from fim_attention.training import TrainConfig, read_log


@pytest.fixture(scope="module")
def corpus():
    return load_corpus(block_size=16)


def base(**kw):
    d = dict(model=GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16), max_steps=20, batch_size=8,
             warmup_steps=3, eval_interval=20, eval_windows=8, log_interval=2, ckpt_interval=10, fim_interval=0,
             tensorboard=False)
    return TrainConfig(**{**d, **kw})


def test_is_divergent():
    assert is_divergent(math.nan, 5.5) and is_divergent(math.inf, 5.5) and is_divergent(-math.inf, 5.5)
    assert is_divergent(6.500001, 5.5) and is_divergent(5.500001, 5.5, margin=0.0)
    assert not is_divergent(6.5, 5.5) and not is_divergent(0.1, 5.5)


def test_is_divergent_first_batch_noise():
    "Regression (CI): a healthy run whose first training batch was 0.01 nat above the initial validation loss was called divergent."
    assert not is_divergent(5.539, 5.529)


def test_lr_grid():
    g = lr_grid(1e-3, 3.2e-2, 6)
    assert len(g) == 6 and g[0] == 1e-3 and g[-1] == 3.2e-2
    ratios = [b / a for a, b in zip(g, g[1:])]
    assert max(ratios) / min(ratios) < 1.001  # geometric (to the 4-digit rounding)


def test_largest_stable_lr_needs_every_smaller_rate_stable():
    recs = [dict(variant="v", seed=0, lr=lr, diverged=d) for lr, d in [(1e-3, False), (1e-2, True), (1e-1, False)]]
    recs += [dict(variant="v", seed=1, lr=1e-3, diverged=True), dict(variant="w", seed=0, lr=1e-2, diverged=False)]
    assert largest_stable_lr(recs) == {("v", 0): 1e-3, ("v", 1): None, ("w", 0): 1e-2}


def test_sweep_records_resumes_and_refuses_other_recipes(tmp_path, corpus):
    kw = dict(sharpness_interval=10, sharpness_kw=dict(n_windows=2, max_iter=20), corpus=corpus, log=None)
    recs = lr_sweep(tmp_path, base(), ["standard"], [3e-3, 30.0], [0], **kw)
    assert [r["lr"] for r in recs] == [3e-3, 30.0]
    ok, bad = recs
    assert not ok["diverged"] and ok["steps"] == 20 and ok["val_loss"] < ok["initial_loss"]
    assert abs(ok["initial_loss"] - math.log(256)) < 0.05  # near-uniform bytes at initialisation
    assert bad["diverged"] and bad["diverged_at"] < 20 and bad["val_loss"] is None and "initial" in bad["reason"]
    assert [r["step"] for r in read_log(tmp_path / "runs" / ok["key"]) if r["event"] == "sharpness"] == [10, 20]
    assert set(ok["sharpness"]) >= {"lam_H", "lam_PinvH", "adam_threshold", "lam_G_att", "converged"}
    for line in (tmp_path / "results.jsonl").read_text().splitlines(): json.loads(line)  # strict JSON, no NaN
    # a torn last line (a kill while writing) is ignored and that run redone; finished runs are not
    with open(tmp_path / "results.jsonl", "a") as f: f.write('{"key": "standard_lr0.01_s0", "varia')
    assert read_sweep(tmp_path) == recs
    more = lr_sweep(tmp_path, base(), ["standard"], [3e-3, 1e-2, 30.0], [0], **kw)
    assert len(more) == 3 and more[:2] == recs and more[2]["lr"] == 1e-2
    with pytest.raises(ValueError, match="another recipe"):
        lr_sweep(tmp_path, base(max_steps=30), ["standard"], [3e-3], [0], **kw)


def test_interrupted_run_continues_from_its_checkpoint(tmp_path, corpus):
    "A run stopped mid-way (checkpoint at step 10) continues from there: same final loss as uninterrupted."
    kw = dict(corpus=corpus, log=None)
    full = lr_sweep(tmp_path / "a", base(), ["standard"], [3e-3], [0], **kw)[0]
    from fim_attention.training import Callback, Trainer
    import dataclasses
    class StopAt(Callback):
        def on_step_end(self, trainer):
            if trainer.step == 10: trainer.should_stop = True
    cfg = dataclasses.replace(base(), lr=3e-3, min_lr=3e-3 * 0.1, seed=0, resume=True, progress=False,
                              out_dir=str(tmp_path / "b" / "runs" / "standard_lr0.003_s0"))
    Trainer(cfg, callbacks=[DivergenceCallback(), StopAt()], corpus=corpus).fit()
    resumed = lr_sweep(tmp_path / "b", base(), ["standard"], [3e-3], [0], **kw)[0]
    assert resumed["steps"] == 20 and resumed["val_loss"] == full["val_loss"] and resumed["initial_loss"] == full["initial_loss"]


def test_wrong_inputs():
    with pytest.raises(ValueError, match="lo < hi"): lr_grid(1e-2, 1e-3, 4)
    with pytest.raises(ValueError, match="n >= 2"): lr_grid(1e-3, 1e-2, 1)
    with pytest.raises(ValueError, match="interval"): SharpnessCallback(interval=0)


def test_stratified_spearman_within_rates():
    "A rate confound flips the pooled Spearman; the within-rate average keeps the true sign; one stratum is plain Spearman."
    import numpy as np
    from scipy.stats import spearmanr
    from fim_attention.lr_stability import stratified_spearman
    rng = np.random.default_rng(1)
    lr = np.repeat([1e-2, 3e-2, 1e-1], 18)
    x = rng.normal(size=54) - 3 * np.log10(lr)
    y = 0.8 * (x + 3 * np.log10(lr)) + 0.6 * rng.normal(size=54) + 10 * np.log10(lr)
    rho, lo, hi, n = stratified_spearman(x, y, lr, n_boot=500)
    assert spearmanr(x, y)[0] < 0 < lo <= rho <= hi and n == 54
    assert math.isclose(stratified_spearman(x[:18], y[:18], lr[:18])[0], spearmanr(x[:18], y[:18])[0], rel_tol=1e-12)
    assert math.isnan(stratified_spearman([1, None, 2], [3, 4, 5], [0, 0, 0])[0])
    with pytest.raises(ValueError, match="1-D of one length"): stratified_spearman([1, 2], [3], [0, 0])


def test_sweep_measurements_and_verdicts(tmp_path, corpus):
    "The analysis reads the runs' Fisher and curvature events; one run per rate leaves (a) and (b) untestable, (c) counted."
    from fim_attention.lr_stability import ATTENTION_EIGMAX, curvature_verdicts, sweep_measurements, verdicts_markdown
    recs = lr_sweep(tmp_path, base(fim_interval=10), ["standard"], [3e-3, 30.0], [0], sharpness_interval=10,
                    sharpness_kw=dict(n_windows=2, max_iter=20), corpus=corpus, log=None)
    rows = sweep_measurements(tmp_path, recs)
    assert [(r["lr"], r["step"]) for r in rows][:3] == [(3e-3, 0), (3e-3, 10), (3e-3, 20)]
    assert all(0 < r["eigmax_query"] <= 0.5 for r in rows) and rows[1]["lam_H"] > 0
    v = curvature_verdicts(rows, recs, n_boot=50)
    assert all(r["verdict"].startswith("untestable") for r in v if r["question"] in "ab")
    assert len([r for r in v if r["question"] == "c"]) == len(ATTENTION_EIGMAX)
    assert verdicts_markdown(v).count("\n") == len(v) + 1
