"""The study package's layout: every module of `fim_attention/study/` imports concrete modules, never the package root."""
import ast
from pathlib import Path

import fim_attention.study

STUDY = Path(fim_attention.study.__file__).parent


def _root_imports(path: Path) -> list[str]:
    "Import statements of `path` that load the package root's names (`import fim_attention`, `from fim_attention import x`, `from .. import x`)."
    bad = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            bad += [a.name for a in node.names if a.name == "fim_attention"]
        elif isinstance(node, ast.ImportFrom):
            if (node.level == 0 and node.module == "fim_attention") or (node.level == 2 and node.module is None):
                bad.append(f"from {'.' * node.level}{node.module or ''} import {', '.join(a.name for a in node.names)}")
    return bad


def test_no_study_module_imports_the_package_root():
    mods = sorted(p for p in STUDY.glob("*.py"))
    assert {p.stem for p in mods} >= {"recipe", "spectra", "runner", "summary", "stats", "verdicts", "budget", "tables",
                                       "plots", "report"}
    assert {p.name: _root_imports(p) for p in mods} == {p.name: [] for p in mods}


def test_the_check_sees_root_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import fim_attention\nfrom fim_attention import train\nfrom .. import model\nfrom ..model import GPT\n")
    assert _root_imports(f) == ["fim_attention", "from fim_attention import train", "from .. import model"]
