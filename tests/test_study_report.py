"""The report: tables and plots written; a partial study says so and writes no empty claims.md."""
from fim_attention.study.report import report


def test_report_writes_tables_and_plots(study_smoke, tmp_path):
    out, _ = study_smoke
    rep = report(out, tmp_path / "rep")
    for f in ("summary.json", "table.md", "seed_table.md", "verdicts.md", "verdicts.json", "losses.png", "fim_curves.png",
              "spectra.png", "kv_bytes.png"):
        assert (tmp_path / "rep" / f).stat().st_size > 0, f
    assert "| standard | 1 |" in rep["table"] and "RA+MLA+KVSplice" in rep["table"]

def test_report_says_when_runs_are_unfinished_and_writes_no_empty_claims(study_smoke, tmp_path):
    "Regression: a partial study's tables say so at the top; claims.md is not written when no claim can be judged."
    import shutil
    out, _ = study_smoke
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
