"""`fim-attention lr-sweep`: help with exit codes, a smoke sweep (one stable rate, one that diverges) with its JSONL, CSVs
and plot, resuming without retraining, refusing another recipe, one answer (exit 2) per bad input, SIGTERM -> 143."""
import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fim_attention.cli import _signum, main

# a model of width 16, 20 steps: seconds per run; 30 is an absurd rate that diverges within the first steps
TINY = ["--variants", "standard", "--seeds", "0", "--max-steps", "20", "--batch-size", "8", "--block-size", "16",
        "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--eval-interval", "20", "--eval-windows", "8",
        "--fim-interval", "0", "--ckpt-interval", "10", "--threads", "1"]
GRID = ["--lr-min", "3e-3", "--lr-max", "30", "--n-lr", "2"]
SHARP = ["--sharpness-interval", "10", "--sharpness-windows", "2", "--sharpness-max-iter", "20"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    "The smoke sweep, run once for the module: (its folder, its argv, stdout, stderr)."
    out = tmp_path_factory.mktemp("lr") / "sweep"
    argv = ["lr-sweep", *TINY, *GRID, *SHARP, "--out", str(out)]
    o, e = io.StringIO(), io.StringIO()  # capsys is function-scoped: capture by hand
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e): code = main(argv)
    assert code == 0, e.getvalue()
    return out, argv, o.getvalue(), e.getvalue()


def test_help_names_exit_codes_and_the_shared_spellings(capsys):
    assert main(["lr-sweep", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: fim-attention lr-sweep" in out and "exit codes: 0 ok; 1 runtime failure; 2 usage error" in out
    assert "128+N interrupted" in out and "rerun with --resume" in out
    for flag in ("--out", "--resume", "--variants", "--seeds", "--lr-min", "--lr-max", "--n-lr", "--min-lr-ratio",
                 "--max-steps", "--warmup-steps", "--batch-size", "--n-layer", "--n-embd", "--sharpness-interval",
                 "--sharpness-windows", "--sharpness-tol", "--threads"):
        assert flag in out, flag
    assert "--lr " not in out and "--seed " not in out and "--attn" not in out  # set per run by the sweep


def test_smoke_sweep_writes_jsonl_csv_plot_and_reports_the_largest_stable_rate(sweep):
    out, _, stdout, stderr = sweep
    recs = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["lr"], r["diverged"]) for r in recs] == [(3e-3, False), (30.0, True)]
    assert recs[0]["steps"] == 20 and recs[0]["val_loss"] < recs[0]["initial_loss"] and recs[1]["diverged_at"] < 20
    assert json.loads((out / "sweep.json").read_text())["base"]["warmup_steps"] == 2  # 10% of --max-steps
    runs = list(csv.DictReader(open(out / "runs.csv")))
    # regression: the sharpness event's own "lr" (the decayed rate at the measurement) overwrote the run's peak rate
    assert [float(r["lr"]) for r in runs] == [3e-3, 30.0] and float(runs[0]["lam_H"]) > 0
    stable = list(csv.DictReader(open(out / "stable.csv")))
    assert [(r["variant"], r["seed"], float(r["largest_stable_lr"]), float(r["first_divergent_lr"])) for r in stable] == \
        [("standard", "0", 3e-3, 30.0)]
    png = (out / "loss_vs_lr.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert "largest stable peak learning rate" in stdout and "| standard | 0.003 |" in stdout
    assert "2 runs of 20 steps" in stderr and "DIVERGED" in stderr
    meas = [json.loads(l) for l in (out / "measurements.jsonl").read_text().splitlines()]  # curvatures measured: the analysis too
    assert [(m["lr"], m["step"]) for m in meas] == [(3e-3, 10), (3e-3, 20)] and meas[0]["lam_H"] > 0
    assert meas[0]["eigmax_query"] is None                                   # --fim-interval 0: no attention eigmax logged
    assert "| question | predictor |" in (out / "verdicts.md").read_text() and "does attention eigmax predict" in stdout
    assert (out / "curvature.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_with_resume_trains_nothing(sweep, capsys):
    out, argv, _, _ = sweep
    before = (out / "results.jsonl").read_text()
    ckpt = out / "runs" / "standard_lr0.003_s0" / "ckpt.pt"
    mtime = ckpt.stat().st_mtime_ns
    assert main(argv + ["--resume"]) == 0
    o, e = capsys.readouterr()
    assert (out / "results.jsonl").read_text() == before and ckpt.stat().st_mtime_ns == mtime
    assert "| standard | 0.003 |" in o and "stable," not in e and "DIVERGED" not in e  # no run line: no run trained


def test_folder_with_a_sweep_needs_resume_and_the_same_recipe(sweep, capsys):
    out, argv, _, _ = sweep
    before = (out / "results.jsonl").read_text()
    assert main(argv) == 2
    assert "already holds a sweep; pass --resume" in capsys.readouterr().err
    assert main(argv + ["--resume", "--max-steps", "30"]) == 2
    err = capsys.readouterr().err
    assert "another recipe" in err and "Traceback" not in err and (out / "results.jsonl").read_text() == before


BAD = {
    "one rate": (["--n-lr", "1"], "n_lr must be >= 2"),
    "lr-min = lr-max": (["--lr-min", "0.1", "--lr-max", "0.1"], "need 0 < lr_min < lr_max"),
    "lr-min > lr-max": (["--lr-min", "1", "--lr-max", "0.1"], "need 0 < lr_min < lr_max"),
    "lr-min 0": (["--lr-min", "0"], "need 0 < lr_min < lr_max"),
    "unknown variant": (["--variants", "gpt5"], "unknown variant"),
    "bad seed": (["--seeds", "x"], "not an integer"),
    "min-lr-ratio > 1": (["--min-lr-ratio", "2"], "min_lr_ratio"),
    "bad model size": (["--n-embd", "30", "--n-head", "4"], "n_embd"),
    "zero steps": (["--max-steps", "0"], "max_steps must be >= 1"),
    "one spelling: --steps": (["--steps", "10"], "unrecognized arguments"),
    "one spelling: --warmup": (["--warmup", "10"], "unrecognized arguments"),
    "missing data": (["--data", "{d}/nope.txt"], "no such file"),
}
if not torch.cuda.is_available(): BAD["no cuda"] = (["--device", "cuda"], "cuda")


@pytest.mark.parametrize("what", list(BAD))
def test_wrong_inputs(what, tmp_path, capsys):
    extra, msg = BAD[what]
    out = tmp_path / "s"
    assert main(["lr-sweep", *[a.replace("{d}", str(tmp_path)) for a in extra], "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert msg.lower() in err.lower() and "Traceback" not in err
    assert not (out / "sweep.json").exists()  # checked before anything is written or loaded


def test_unwritable_or_missing_out_exits_2(capsys):
    assert main(["lr-sweep", "--out", "/proc/x"]) == 2
    assert "cannot write to output directory '/proc/x'" in capsys.readouterr().err
    assert main(["lr-sweep"]) == 2  # --out is required
    assert "--out" in capsys.readouterr().err


def test_signal_of_an_interrupt():
    "lr_sweep names the signal in its message only; main's Interrupted carries it; else Ctrl-C."
    assert _signum(KeyboardInterrupt("run standard_lr0.003_s0 interrupted by SIGTERM; rerun to resume")) == signal.SIGTERM
    assert _signum(KeyboardInterrupt()) == signal.SIGINT


def test_sigterm_exits_143_with_the_resume_command_and_no_summary(tmp_path):
    out = tmp_path / "sweep"
    argv = ["lr-sweep", *TINY, "--max-steps", "100000", "--warmup-steps", "2", "--lr-min", "1e-3", "--lr-max", "2e-3", "--n-lr", "2",
            "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FIM_ATTENTION_TRACEBACK": ""}
    p = subprocess.Popen([sys.executable, "-c", "import sys; from fim_attention.cli import main; sys.exit(main())", *argv],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    log = out / "runs" / "standard_lr0.001_s0" / "log.jsonl"
    t0 = time.time()
    while not (log.is_file() and '"event": "train"' in log.read_text()):  # the loop runs: its handler is installed
        assert p.poll() is None, p.communicate()
        assert time.time() - t0 < 120, "the run did not start"
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    stdout, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM, err
    assert "interrupted by SIGTERM" in err and "0 of 2 runs finished, no summary written" in err
    assert "resume with: fim-attention lr-sweep" in err and err.rstrip().endswith("--resume")
    assert stdout == "" and not (out / "stable.csv").exists() and not (out / "results.jsonl").exists()
    assert (log.parent / "ckpt.pt").is_file()
