"""The runner: a smoke study trains and logs, resume skips finished runs and guards the recipe (both stored
formats), the subprocess pool runs and reports failures (interrupted studies: tests/test_cli.py)."""
import dataclasses
import json

import pytest

from fim_attention.study.runner import run_ablation, run_finished
from fim_attention.training import read_log
from study_common import TINY


def test_smoke_study_trains_and_logs(study_smoke):
    out, res = study_smoke
    assert [r["step"] for r in res] == [4, 4] and not any(r["stopped"] for r in res)
    for name in ("standard_s0", "ra_mla_kvsplice_s0"):
        assert run_finished(out / name, 4)
        ev = [r["event"] for r in read_log(out / name)]
        assert ev.count("spectra") == 3 and ev.count("fisher") == 3  # steps 0, 2, 4
    man = json.loads((out / "study.json").read_text())
    assert man["config"]["train"]["max_steps"] == 4 and man["sessions"][-1]["wall_s"] > 0 and man["sessions"][-1]["pending"] == []

def test_resume_skips_finished_and_guards_the_recipe(study_smoke):
    out, _ = study_smoke
    before = (out / "standard_s0" / "log.jsonl").read_bytes()
    sessions = len(json.loads((out / "study.json").read_text())["sessions"])
    again = run_ablation(["standard", "ra_mla_kvsplice"], [0], out_dir=out, config=TINY, progress=False)
    assert all(r.get("skipped") for r in again)
    assert (out / "standard_s0" / "log.jsonl").read_bytes() == before
    assert len(json.loads((out / "study.json").read_text())["sessions"]) == sessions + 1
    with pytest.raises(ValueError, match="another recipe"):
        run_ablation(["standard"], [0], out_dir=out, config=TINY, steps=5, progress=False)

def test_resume_accepts_a_study_stored_in_the_flat_format(study_smoke, tmp_path):
    import shutil
    out, _ = study_smoke
    old = tmp_path / "old"
    shutil.copytree(out, old)
    man = json.loads((old / "study.json").read_text())
    man["config"] = {"steps": 4, "batch_size": 4, "block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32, "lr": 6e-3,
                     "min_lr": 6e-4, "warmup_steps": None, "eval_interval": 2, "eval_windows": 4, "fim_interval": 2,
                     "fim_batch_size": 2, "fim_rows": 8, "probe_rows": 8, "ckpt_interval": 0, "data": None}
    (old / "study.json").write_text(json.dumps(man))
    again = run_ablation(["standard", "ra_mla_kvsplice"], [0], out_dir=old, config=TINY, progress=False)
    assert all(r.get("skipped") for r in again)

def test_subprocess_pool_runs_and_reports_failures(tmp_path):
    res = run_ablation(["mla"], [0, 1], out_dir=tmp_path / "ok", config=TINY, jobs=2, progress=False)
    assert sorted((r["seed"], r["returncode"]) for r in res) == [(0, 0), (1, 0)]
    assert all(run_finished(tmp_path / "ok" / f"mla_s{s}", 4) for s in (0, 1))
    bad = dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, data=str(tmp_path / "missing.txt")))
    with pytest.raises(RuntimeError, match="runs failed"):
        run_ablation(["mla"], [0], out_dir=tmp_path / "bad", config=bad, jobs=2, progress=False)
