"""Tests of the ablation study: runner (smoke, resume, recipe guard), spectrum probe (oracle, RNG isolation),
summaries, seed statistics, verdict rules, reports and plots (the `ablate` / `report` verbs: tests/test_cli.py)."""
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from fim_attention.ablation import (LABELS, VARIANTS, AblationConfig, SpectrumProbe, StudyInterrupted, _direction,
                                    _equivalent, _log_axis, _rank_at, check_seeds, check_variants, compare, final_values,
                                    layer_spectra, plot_fim_curves, report, run_ablation, run_finished, seed_stats,
                                    study_recipe, summarize, train_config, verdicts, budget_fit, budget_fits,
                                    budget_gap_markdown, budget_table_markdown, by_budget)
from fim_attention.model import GPTConfig
from fim_attention.metrics import reference_metrics
from fim_attention.oracle import scipy_eigvalsh, scipy_mean_fim_eigvalsh
from fim_attention.training import read_log, train

TINY = AblationConfig(study_recipe(max_steps=4, warmup_steps=1, batch_size=4, eval_interval=2, eval_windows=4,
                                  model=GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=32), fim_interval=2,
                                  fim_batch_size=2, fim_rows=8, ckpt_interval=0), probe_rows=8)
OLD_RECIPE = {"steps": 2500, "batch_size": 16, "block_size": 128, "n_layer": 4, "n_head": 4, "n_embd": 128, "lr": 0.006,
              "min_lr": 0.0006, "warmup_steps": None, "eval_interval": 100, "eval_windows": 128, "fim_interval": 250,
              "fim_batch_size": 4, "fim_rows": 64, "probe_rows": 64, "ckpt_interval": 250, "data": None}  # study.json before


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    "Two variants x one seed of a toy model, trained once for the module."
    out = tmp_path_factory.mktemp("abl") / "study"
    res = run_ablation(["standard", "ra_mla_kvsplice"], [0], out_dir=out, config=TINY, progress=False)
    return out, res


def _causal_probs(B, H, T, seed, scale=2.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, H, T, T, generator=g, dtype=torch.float64) * scale
    return torch.softmax(s + torch.triu(torch.full((T, T), -math.inf, dtype=torch.float64), 1), -1).to(dtype)


# ---------------------------------------------------------------- runner
def test_smoke_study_trains_logs_and_summarizes(smoke):
    out, res = smoke
    assert [r["step"] for r in res] == [4, 4] and not any(r["stopped"] for r in res)
    for name in ("standard_s0", "ra_mla_kvsplice_s0"):
        assert run_finished(out / name, 4)
        ev = [r["event"] for r in read_log(out / name)]
        assert ev.count("spectra") == 3 and ev.count("fisher") == 3  # steps 0, 2, 4
    man = json.loads((out / "study.json").read_text())
    assert man["config"]["train"]["max_steps"] == 4 and man["sessions"][-1]["wall_s"] > 0 and man["sessions"][-1]["pending"] == []
    s = summarize(out)
    a, b = s["runs"]["standard_s0"], s["runs"]["ra_mla_kvsplice_s0"]
    assert a["finished"] and b["finished"] and b["reversed_layers"] == [1] and a["reversed_layers"] == []
    assert b["kv_bytes_per_token"] < a["kv_bytes_per_token"]
    assert len(a["fim"]["step"]) == len(a["fim"]["ref_step"]) == 3
    for d in ("query", "mean", "ref", "all"):
        v = np.array(a["fim"][d]["eigmax"], dtype=float)  # (steps, L)
        assert v.shape == (3, 2) and np.isfinite(v).all() and (v > 0).all() and (v <= 0.5 + 1e-6).all()  # eigmax <= 1/2
    cf = np.array(a["spectra"]["meanfim_cumfrac"], dtype=float)
    assert np.all(np.diff(cf, axis=-1) >= -1e-4) and np.allclose(cf[:, -1], 1, atol=1e-4)


def test_resume_skips_finished_and_guards_the_recipe(smoke):
    out, _ = smoke
    before = (out / "standard_s0" / "log.jsonl").read_bytes()
    again = run_ablation(["standard", "ra_mla_kvsplice"], [0], out_dir=out, config=TINY, progress=False)
    assert all(r.get("skipped") for r in again)
    assert (out / "standard_s0" / "log.jsonl").read_bytes() == before
    assert len(json.loads((out / "study.json").read_text())["sessions"]) == 2
    with pytest.raises(ValueError, match="another recipe"):
        run_ablation(["standard"], [0], out_dir=out, config=TINY, steps=5, progress=False)


def test_subprocess_pool_runs_and_reports_failures(tmp_path):
    res = run_ablation(["mla"], [0, 1], out_dir=tmp_path / "ok", config=TINY, jobs=2, progress=False)
    assert sorted((r["seed"], r["returncode"]) for r in res) == [(0, 0), (1, 0)]
    assert all(run_finished(tmp_path / "ok" / f"mla_s{s}", 4) for s in (0, 1))
    bad = dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, data=str(tmp_path / "missing.txt")))
    with pytest.raises(RuntimeError, match="runs failed"):
        run_ablation(["mla"], [0], out_dir=tmp_path / "bad", config=bad, jobs=2, progress=False)


def test_probe_does_not_change_training(tmp_path):
    "The SpectrumProbe has its own generator: training with and without it gives the same losses."
    cfgs = [train_config("ra_mla", 0, TINY, tmp_path / k) for k in ("with", "without")]
    train(cfgs[0], callbacks=[SpectrumProbe(1, 2, 8)])
    train(cfgs[1])
    la = [r["train/loss"] for r in read_log(tmp_path / "with" / "ra_mla_s0", "train")]
    lb = [r["train/loss"] for r in read_log(tmp_path / "without" / "ra_mla_s0", "train")]
    assert la == lb and len(la) >= 1
    assert len(read_log(tmp_path / "with" / "ra_mla_s0", "spectra")) == 5


@pytest.mark.parametrize("bad", ["rra", "", "mla,foo"])
def test_check_variants_rejects(bad):
    with pytest.raises(ValueError):
        check_variants(bad)


def test_check_variants_and_seeds_normalise():
    assert check_variants("RA+MLA, standard,ra_mla") == ["ra_mla", "standard"]
    assert check_seeds(3) == [0, 1, 2] and check_seeds("2,0,2") == [2, 0]
    for bad in ("x", "-1", []):
        with pytest.raises(ValueError):
            check_seeds(bad)


@pytest.mark.parametrize("kw", [dict(variants=("rra",)), dict(seeds=(-1,)), dict(seeds=()), dict(probe_rows=0),
                                dict(probe_rows=True)])
def test_config_rejects(kw):
    with pytest.raises(ValueError):
        AblationConfig(**kw)


def test_config_rejects_bad_recipe():
    "The recipe's checks are TrainConfig's own (no second copy): steps < 1, a negative interval."
    for kw in (dict(max_steps=0), dict(fim_interval=-1)):
        with pytest.raises(ValueError):
            AblationConfig(study_recipe(**kw))
    with pytest.raises(ValueError):
        AblationConfig().with_steps(0)


def test_train_config_matches_recipe():
    cfg = train_config("mla_kvsplice", 7, AblationConfig(), "/tmp/x")
    assert (cfg.max_steps, cfg.warmup_steps, cfg.batch_size, cfg.seed, cfg.lr, cfg.min_lr) == (2500, 250, 16, 7, 6e-3, 6e-4)
    assert cfg.model.attn == "mla_kvsplice" and cfg.out_dir.endswith("mla_kvsplice_s7")
    assert (cfg.log_interval, cfg.tensorboard, cfg.eval_interval, cfg.fim_interval, cfg.ckpt_interval) == (10, False, 100, 250, 250)


def test_config_reads_the_stored_flat_recipe():
    "Regression: studies stored before the TrainConfig layout (flat `steps`, `n_layer`, ...) are the same study."
    old = AblationConfig.from_dict(OLD_RECIPE)
    assert old.recipe() == AblationConfig().recipe() and old.train == AblationConfig().train
    assert AblationConfig.from_dict({**OLD_RECIPE, "steps": 1000}).train.warmup_steps == 100  # None meant 10% of steps
    assert AblationConfig.from_dict({**OLD_RECIPE, "warmup_steps": 7}).train.warmup_steps == 7
    assert AblationConfig.from_dict(json.loads(json.dumps(TINY.to_dict()))) == TINY
    with pytest.raises(ValueError, match="unknown recipe fields"):
        AblationConfig.from_dict({"stepz": 3})
    # what every run of the old recipe trained with, field by field (the 15 fields the old train_config mapped)
    t = train_config("ra", 1, old, "o")
    assert (t.max_steps, t.batch_size, t.lr, t.min_lr, t.warmup_steps, t.eval_interval, t.eval_windows, t.log_interval,
            t.ckpt_interval, t.tensorboard, t.fim_interval, t.fim_batch_size, t.fim_rows, t.data, t.model) == \
        (2500, 16, 6e-3, 6e-4, 250, 100, 128, 10, 250, False, 250, 4, 64, None,
         GPTConfig(block_size=128, n_layer=4, n_head=4, n_embd=128, attn="ra"))


def test_resume_accepts_a_study_stored_in_the_flat_format(smoke, tmp_path):
    import shutil
    out, _ = smoke
    old = tmp_path / "old"
    shutil.copytree(out, old)
    man = json.loads((old / "study.json").read_text())
    man["config"] = {"steps": 4, "batch_size": 4, "block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32, "lr": 6e-3,
                     "min_lr": 6e-4, "warmup_steps": None, "eval_interval": 2, "eval_windows": 4, "fim_interval": 2,
                     "fim_batch_size": 2, "fim_rows": 8, "probe_rows": 8, "ckpt_interval": 0, "data": None}
    (old / "study.json").write_text(json.dumps(man))
    again = run_ablation(["standard", "ra_mla_kvsplice"], [0], out_dir=old, config=TINY, progress=False)
    assert all(r.get("skipped") for r in again)


# ---------------------------------------------------------------- probe against the oracle
@pytest.mark.parametrize("B,H,T,seed", [(2, 3, 24, 0), (1, 2, 40, 1), (3, 1, 9, 2)])
def test_layer_spectra_matches_oracle(B, H, T, seed):
    p = _causal_probs(B, H, T, seed)
    p64 = p.double() / p.double().sum(-1, keepdim=True)
    out = layer_spectra(p, n_rows=B * T, generator=torch.Generator().manual_seed(0))  # every row taken
    oracle = scipy_mean_fim_eigvalsh(p64.transpose(0, 1).reshape(H, B * T, T))
    assert np.allclose(out["meanfim_eig"].numpy(), oracle, rtol=0, atol=1e-12)
    assert np.allclose(out["ref_eig"].numpy(), oracle, rtol=0, atol=2e-6)  # float32 dense path, same rows
    q = np.nanmean(scipy_eigvalsh(p64).transpose(1, 0, 2, 3).reshape(H, B * T, T), 1)
    assert np.allclose(out["query_eig"].numpy(), q, rtol=0, atol=1e-12)
    cf = out["query_cumfrac"].numpy()
    assert np.all(np.diff(cf, axis=-1) >= -1e-12) and np.allclose(cf[:, -1], 1)


def test_layer_spectra_reproduces_reference_sample():
    p = _causal_probs(2, 2, 32, 5)
    out = layer_spectra(p, n_rows=16, generator=torch.Generator().manual_seed(9))
    ref = reference_metrics(p, n_samples=16, generator=torch.Generator().manual_seed(9), return_eigvals=True)
    assert torch.equal(out["ref_eigmax"], ref["eigmax"]) and torch.equal(out["ref_energy_r16"], ref["energy_r16"])


def test_spectrum_metrics_match_fim_metrics():
    "The all-rows metrics computed from stored spectra agree with the engine's fim_metrics on the same mean FIM."
    from fim_attention.ablation import _spectrum_metrics
    from fim_attention.metrics import fim_metrics
    p = _causal_probs(2, 3, 20, 4).double()
    p = p / p.sum(-1, keepdim=True)
    rows = p.transpose(0, 1).reshape(3, 40, 20)  # (H, N, T)
    lam = layer_spectra(p.float(), 8, torch.Generator().manual_seed(0))["meanfim_eig"].numpy()[None]  # (1, H, T)
    mine = _spectrum_metrics(lam)
    ref = fim_metrics(rows, mode="mean")
    for k in ("eigmax", "trace", "energy_r8", "energy_r16", "eff_rank"):
        assert np.isclose(mine[k][0], ref[k].double().mean().item(), rtol=1e-6), k


def test_rank_at():
    assert _rank_at(np.array([0.5, 0.89, 0.9, 1.0])) == 3 and _rank_at(np.array([0.95, 1.0])) == 1
    assert np.isnan(_rank_at(np.array([np.nan, np.nan])))


# ---------------------------------------------------------------- statistics and verdicts
@pytest.mark.parametrize("seed", range(4))
def test_compare_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    n = 3 + seed
    a, b = rng.normal(1, 0.1, n), rng.normal(1.1, 0.1, n)
    c = compare(dict(enumerate(a)), dict(enumerate(b)))
    d = a - b
    hw = stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n)
    assert math.isclose(c["diff"], d.mean(), rel_tol=1e-12) and math.isclose(c["ci_hi"] - c["diff"], hw, rel_tol=1e-12)
    assert math.isclose(c["p"], stats.ttest_rel(a, b).pvalue, rel_tol=1e-9)
    assert math.isclose(c["rel"], d.mean() / b.mean(), rel_tol=1e-12)


def test_compare_pairs_only_common_finite_seeds():
    c = compare({0: 1.0, 1: 2.0, 2: math.nan, 5: 1.0}, {0: 0.5, 1: 1.0, 2: 1.0})
    assert c["seeds"] == [0, 1] and c["n"] == 2 and math.isclose(c["diff"], 0.75)


def test_seed_stats():
    s = seed_stats([1.0, 2.0, 3.0, None, math.nan])
    assert (s["mean"], s["std"], s["n"]) == (2.0, 1.0, 3)
    assert math.isclose(s["ci95"], stats.t.ppf(0.975, 2) / math.sqrt(3))
    assert seed_stats([])["n"] == 0 and math.isnan(seed_stats([1.0])["std"])


def _mk(lo, hi, base=1.0):
    return {"ci_lo": lo, "ci_hi": hi, "rel_lo": lo / base, "rel_hi": hi / base}


@pytest.mark.parametrize("lo,hi,want,expected", [(-0.3, -0.1, "<", "holds"), (0.1, 0.3, "<", "does not hold"),
                                                 (-0.1, 0.1, "<", "inconclusive"), (0.1, 0.3, ">", "holds"),
                                                 (math.nan, 0.1, "<", "inconclusive")])
def test_direction_rule(lo, hi, want, expected):
    assert _direction(_mk(lo, hi), want) == expected


@pytest.mark.parametrize("lo,hi,expected", [(-0.05, 0.05, "holds"), (0.12, 0.3, "does not hold"),
                                            (-0.3, -0.11, "does not hold"), (-0.05, 0.15, "inconclusive")])
def test_equivalence_rule(lo, hi, expected):
    assert _equivalent(_mk(lo, hi), 0.1) == expected


def _synthetic_summary(values: dict, key="val_loss", L=2):
    "A summary whose runs carry `values[variant][seed]` as `key` and as every FIM metric."
    runs = {}
    for v, by_seed in values.items():
        for s, x in by_seed.items():
            fim = {d: {m: [[x] * L] for m in ("eigmax", "energy_r16", "energy_r8", "trace")} for d in ("query", "mean", "ref", "all")}
            runs[f"{v}_s{s}"] = {"variant": v, "seed": s, "finished": True, key: x, "reversed_layers": [1] if "ra" in v else [],
                                 "fim": fim}
    return {"runs": runs, "study": None}


def test_verdicts_follow_the_rules():
    # KVSplice 20% worse than MLA with tiny noise: claim 3 (quality) does not hold; RA+MLA clearly lower eigmax: claim 1 holds
    vals = {"mla": {0: 1.0, 1: 1.01, 2: 0.99}, "mla_kvsplice": {0: 1.2, 1: 1.21, 2: 1.2},
            "ra_mla": {0: 0.5, 1: 0.52, 2: 0.49}, "ra_mla_kvsplice": {0: 0.5, 1: 0.5, 2: 0.51},
            "standard": {0: 1.0, 1: 1.0, 2: 1.0}, "ra": {0: 1.0, 1: 1.001, 2: 0.999}}
    rows = verdicts(_synthetic_summary(vals))
    get = lambda claim, a, b, metric: next(r for r in rows if r["claim"] == claim and r["A"] == LABELS[a]
                                           and r["B"] == LABELS[b] and r["metric"] == metric)["verdict"]
    assert get(1, "ra_mla", "mla", "fim:ref:eigmax") == "holds" and get(1, "ra_mla", "mla", "fim:all:eigmax") == "holds"
    assert get(1, "ra", "standard", "fim:ref:eigmax") == "inconclusive"
    assert get(3, "mla_kvsplice", "mla", "val_loss") == "does not hold"
    assert get(3, "mla_kvsplice", "mla", "fim:ref:eigmax") == "does not hold"  # 20% apart: not "unchanged"
    assert get(2, "mla_kvsplice", "mla", "val_loss") == "holds"  # compressing costs 20%


def test_final_values_layer_selection():
    s = _synthetic_summary({"ra_mla": {0: 0.3}})
    s["runs"]["ra_mla_s0"]["fim"]["ref"]["eigmax"] = [[0.1, 0.3]]
    assert final_values(s, "fim:ref:eigmax", "reversed")["ra_mla"][0] == 0.3
    assert final_values(s, "fim:ref:eigmax", "standard")["ra_mla"][0] == 0.1
    assert math.isclose(final_values(s, "fim:ref:eigmax")["ra_mla"][0], 0.2)
    with pytest.raises(ValueError):
        final_values(s, "fim:ref:eigmax", "odd")


# ---------------------------------------------------------------- report and CLI
def test_report_writes_tables_and_plots(smoke, tmp_path):
    out, _ = smoke
    rep = report(out, tmp_path / "rep")
    for f in ("summary.json", "table.md", "seed_table.md", "verdicts.md", "verdicts.json", "losses.png", "fim_curves.png",
              "spectra.png", "kv_bytes.png"):
        assert (tmp_path / "rep" / f).stat().st_size > 0, f
    assert "| standard | 1 |" in rep["table"] and "RA+MLA+KVSplice" in rep["table"]


def test_report_says_when_runs_are_unfinished_and_writes_no_empty_claims(smoke, tmp_path):
    "Regression: a partial study's tables say so at the top; claims.md is not written when no claim can be judged."
    import shutil
    out, _ = smoke
    part = tmp_path / "part"
    shutil.copytree(out, part)
    log = part / "standard_s0" / "log.jsonl"
    log.write_text("".join(l for l in log.read_text().splitlines(True) if '"event": "end"' not in l and '"event":"end"' not in l))
    (part / "report").mkdir(exist_ok=True); (part / "report" / "claims.md").write_text("stale\n")
    rep = report(part, plots=False)
    assert "Partial study: 1 of 2 runs finished" in rep["partial"] and "standard_s0" in rep["partial"]
    for f in ("table.md", "seed_table.md", "verdicts.md"):
        assert (part / "report" / f).read_text().startswith("**Partial study: 1 of 2 runs finished**"), f
    assert not (part / "report" / "claims.md").exists() and "No verdict per claim" in rep["claims"]
    full = report(out, tmp_path / "full", plots=False)
    assert full["partial"] == "" and (tmp_path / "full" / "table.md").read_text().startswith("| variant")


def test_fim_curves_label_every_axis(smoke):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out, _ = smoke
    fig = plot_fim_curves(summarize(out))
    shown = [ax for ax in fig.axes if ax.axison]
    assert shown and all(ax.get_ylabel() for ax in shown)
    for j in range(4):  # each column's lowest shown panel names the step axis (the reference has no eff_rank row)
        col = [ax for ax in fig.axes[j::4] if ax.axison]
        assert col[-1].get_xlabel() == "step", j
    plt.close(fig)


def test_log_axis_clips_an_outlier_and_says_so():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    v = np.r_[np.geomspace(1.0, 10.0, 99), 1e12]  # one cond-like outlier
    ax.plot(np.arange(100), v)
    assert _log_axis(ax, [v]) and ax.get_ylim()[1] < 100
    assert "clipped to 1–99th percentile (1 of 100 values outside)" in ax.get_legend().get_texts()[0].get_text()
    fig2, ax2 = plt.subplots()
    assert not _log_axis(ax2, [np.geomspace(1.0, 10.0, 100)]) and ax2.get_legend() is None and ax2.get_yscale() == "log"
    plt.close(fig); plt.close(fig2)


# ---------------------------------------------------------------- budget scaling (how far from convergence)
def _power(n, l_inf=1.30, a=40.0, alpha=0.6):
    return l_inf + a * np.asarray(n, dtype=np.float64) ** -alpha


@pytest.mark.parametrize("k", [3, 4, 6])
@pytest.mark.parametrize("truth", [(1.30, 40.0, 0.6), (0.9, 3.0, 0.25), (2.2, 500.0, 1.5)])
def test_budget_fit_recovers_a_power_law(k, truth):
    n = 1250.0 * 2.0 ** np.arange(k)
    f = budget_fit(n[::-1], _power(n[::-1], *truth))  # any order
    assert f["ok"] and f["steps"] == sorted(n.tolist())
    assert f["l_inf"] == pytest.approx(truth[0], abs=1e-7) and f["alpha"] == pytest.approx(truth[2], rel=1e-5)
    assert f["a"] == pytest.approx(truth[1], rel=1e-4) and f["rms"] < 1e-9
    top = n[-1]
    assert f["next_doubling"] == pytest.approx((_power(2 * top, *truth) - _power(top, *truth)) / _power(top, *truth), abs=1e-9)
    g = f["converged_steps"]  # the first doubling budget whose next doubling gains < 1%
    gain = lambda m: (_power(m, *truth) - _power(2 * m, *truth)) / _power(m, *truth)
    assert gain(g) < 0.01 and (g == top or gain(g / 2) >= 0.01)
    assert f["gap_to_limit"] == pytest.approx(_power(top, *truth) / truth[0] - 1, rel=1e-6)
    if k >= 4:
        assert f["holdout"]["predicted"] == pytest.approx(_power(top, *truth), abs=1e-7)
        assert np.allclose(f["l_inf_loo"], truth[0], atol=1e-6)
    else: assert "holdout" not in f


def test_budget_fit_three_doublings_is_aitken():
    L = [2.10, 1.95, 1.86]
    d1, d2 = L[0] - L[1], L[1] - L[2]
    r = d2 / d1
    assert budget_fit([1000, 2000, 4000], L)["l_inf"] == pytest.approx(L[2] - d2 * r / (1 - r), abs=1e-9)


def test_budget_fit_flags_losses_without_a_limit():
    n = [1250, 2500, 5000, 10000]
    for L, why in (([2.0, 2.1, 2.2, 2.3], "rises"), ([2.0, 1.8, 1.7, 1.75], "rises"),
                   (3.0 - 0.1 * np.log2(np.array(n) / 1250), "no plateau"),
                   ([1.769, 1.678, 1.548, 1.467], "below 0")):  # gains that do not shrink: the limit fit goes negative
        f = budget_fit(n, L)
        assert not f["ok"] and why in f["reason"] and math.isnan(f["l_inf"]) and math.isnan(f["converged_steps"])


@pytest.mark.parametrize("steps, losses", [([1, 2], [1, 1]), ([1, 1, 2], [3, 2, 1]), ([0, 1, 2], [3, 2, 1]),
                                           ([1, 2, 4], [3, np.nan, 1]), ([1, 2, 4], [3, 2]), ([1, 2, np.inf], [3, 2, 1])])
def test_budget_fit_rejects_bad_input(steps, losses):
    with pytest.raises(ValueError): budget_fit(steps, losses)


def test_budget_fits_gathers_one_seed_across_studies():
    def study(steps):
        runs = {}
        for v in ("standard", "mla"):
            for seed in (0, 1):
                runs[f"{v}_s{seed}"] = {"variant": v, "seed": seed, "steps": steps, "finished": True,
                                        "val_loss": float(_power(steps, 1.3 + 0.1 * (v == "mla"))) + 0.01 * seed}
        return {"study": {}, "runs": runs}
    S = {n: study(n) for n in (1250, 2500, 5000, 10000)}
    S[5000]["runs"]["mla_s0"]["finished"] = False  # unfinished runs are left out
    fits = budget_fits(S, seed=0)
    assert fits["standard"]["steps"] == [1250, 2500, 5000, 10000] and fits["mla"]["steps"] == [1250, 2500, 10000]
    assert fits["standard"]["l_inf"] == pytest.approx(1.3, abs=1e-6) and fits["mla"]["l_inf"] == pytest.approx(1.4, abs=1e-6)
    assert budget_fits(S, seed=1)["standard"]["l_inf"] == pytest.approx(1.31, abs=1e-6)
    assert budget_fits(S, seed=2) == {}


def _budget_study(steps, l_inf, seeds=(0,), lr=6e-3, train_s=0.15):
    runs = {}
    for v, li in l_inf.items():
        for s in seeds:
            runs[f"{v}_s{s}"] = {"variant": v, "seed": s, "steps": steps, "finished": True, "train_s": train_s * steps,
                                 "val_loss": float(_power(steps, li)) + 0.002 * s}
    cfg = {"steps": steps, "lr": lr, "eval_interval": 100 if steps > 2000 else 50, "warmup_steps": None, "n_embd": 128}
    return {"study": {"config": cfg}, "runs": runs}


def test_by_budget_checks_the_recipe():
    a, b = _budget_study(2500, {"standard": 1.3}), _budget_study(5000, {"standard": 1.3})
    assert list(by_budget([b, a])) == [2500, 5000]  # sorted; eval_interval may differ
    with pytest.raises(ValueError, match="differ in more than their budget: lr"):
        by_budget([a, _budget_study(5000, {"standard": 1.3}, lr=1e-3)])
    with pytest.raises(ValueError, match="two studies with 2500"):
        by_budget([a, _budget_study(2500, {"standard": 1.3})])
    mixed = _budget_study(2500, {"standard": 1.3}); mixed["runs"]["standard_s0"]["steps"] = 100
    mixed["runs"]["x"] = dict(a["runs"]["standard_s0"])
    with pytest.raises(ValueError, match="mixes budgets"):
        by_budget([mixed])


def test_budget_tables():
    lim = {"standard": 1.30, "mla": 1.40}
    SB = by_budget([_budget_study(n, lim, seeds=(0, 1, 2) if n == 2500 else (0,)) for n in (1250, 2500, 5000, 10000)])
    t = budget_table_markdown(SB)
    row = next(l for l in t.splitlines() if l.startswith("| standard |"))
    assert f"{_power(10000, 1.3):.3f}" in row and "1.300 [1.300, 1.300]" in row
    f = budget_fits(SB)["standard"]
    assert f"{f['converged_steps']:,.0f}" in row and f"{f['converged_steps'] * 0.15 / 3600:.1f} h" in row
    assert "seed sd (2,500 steps)" in t and "| 0.0020 |" in row  # seeds differ by 0.002 each
    g = budget_gap_markdown(SB)
    row = next(l for l in g.splitlines() if l.startswith("| MLA − standard"))
    assert f"{100 * (1.4 / 1.3 - 1):+.1f}% [" in row
    assert "KVSplice" not in g  # pairs with a missing variant are left out
    two = by_budget([_budget_study(n, lim) for n in (2500, 5000)])
    assert "< 3 budgets" in budget_table_markdown(two)


def test_layer_spectra_draws_its_rows_as_before():
    "Regression (stored study): the per-query rows, now chosen by probe.Rows, are the draw the study's runs used."
    from fim_attention.spectrum import fim_eigvalsh
    p = _causal_probs(3, 2, 20, 5)
    B, H, T, _ = p.shape
    out = layer_spectra(p, 16, torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    reference_metrics(p.float(), n_samples=16, generator=g)  # the reference sample comes first from the same generator
    pick = torch.rand(H, B * T, generator=g).argsort(-1)[:, :16]  # the old code's draw
    rows = p.double().transpose(0, 1).reshape(H, B * T, T)
    lam = fim_eigvalsh(rows.gather(1, pick[..., None].expand(H, 16, T)), normalize=True)
    assert torch.equal(out["query_eig"], lam.nanmean(1))
