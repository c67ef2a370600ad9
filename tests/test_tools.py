"""Unit tests for tools/build_docs.py, docs_check.py and lab_check.py: no browser, no nbdev run."""
import base64
import html
import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


bd = _load("build_docs")
dc = _load("docs_check")
try:  # Python-Markdown and pymdown-extensions come with the docs extra (mkdocs-material)
    import markdown
    import pymdownx  # noqa: F401
except ImportError:
    markdown = None
needs_markdown = pytest.mark.skipif(markdown is None, reason="docs extra not installed (pip install -e '.[docs]')")


def render(md):
    "Markdown -> HTML with the extensions tools/mkdocs.yml uses that matter for structure."
    return markdown.markdown(bd.fix_markdown(md), extensions=["sane_lists", "tables", "attr_list", "md_in_html",
                                                                   "pymdownx.superfences"])


def math_of(h):
    "The TeX MathJax will see, span by span."
    return [html.unescape(m) for m in re.findall(r'<span class="arithmatex">(.*?)</span>', h, re.S)]


@needs_markdown
@pytest.mark.parametrize("src,tex", [
    (r"inline $a_1 * b_2$ here", r"\(a_1 * b_2\)"),
    (r"display $$F = \frac{1}{\tau^2}(D - pp^\top)$$ in a paragraph", r"\[F = \frac{1}{\tau^2}(D - pp^\top)\]"),
    ("multi-line\n$$\na_1 \\\\\n- b_2\n$$\nafter", "\\[\na_1 \\\\\n- b_2\n\\]"),
    (r"\begin{align} a &= b \\ c &= d \end{align}", r"\begin{align} a &= b \\ c &= d \end{align}"),
    (r"paren \(x^2\) and bracket \[y_1\]", r"\(x^2\)"),
    (r"Jupyter's double backslash \\(x\\)", r"\(x\)"),
    (r"| a | b |" "\n" r"|---|---|" "\n" r"| $x|y$ | 1 |", r"\(x|y\)"),
])
def test_math_survives_markdown(src, tex):
    h = render(src)
    assert tex in math_of(h), (h, math_of(h))
    assert "<em>" not in h and "<strong>" not in h  # `*` and `_` inside math are not emphasis


@needs_markdown
@pytest.mark.parametrize("src", ["costs $5 and $10 today", "a `$x$` code span", "```\n$x$ in a fence\n```"])
def test_not_math(src):
    assert math_of(render(src)) == []


@needs_markdown
def test_escaped_dollar():
    assert "$3" in html.unescape(render(r"price \$3")) and "\\$" not in html.unescape(render(r"price \$3"))


@needs_markdown
def test_blocks_like_jupyter():
    h = render("Some text\n- one\n- two\n  - nested\n\nA table:\n| a | b |\n|---|---|\n| 1 | 2 |\n\nCode:\n```python\nx = 1\n```\nafter")
    assert h.count("<ul>") == 2 and "<li>nested</li>" in h          # list after a paragraph, 2-space nesting
    assert "<table>" in h and "<td>2</td>" in h                       # table after a paragraph
    assert "<p>Code:</p>" in h and "</code></pre></div>\n<p>after</p>" in h     # fence right after a paragraph
    assert "<p>after</p>" in h


def test_directives():
    opts, code = bd.directives("#| echo: false\n#|output: asis\n\nshow_doc(f)\n")
    assert opts == {"echo": "false", "output": "asis"} and code == "show_doc(f)"
    assert bd.directives("x = 1\n#| not: a directive")[0] == {}


def _cfg():
    return {"doc_host": "https://org.github.io", "doc_baseurl": "/pkg", "git_url": "https://github.com/org/pkg"}


def test_linker_rewrites_to_site_pages():
    ln = bd.Linker(_cfg(), {"spectrum.html": "spectrum.md", "01_spectrum.ipynb": "spectrum.md"},
                   {"pkg/spectrum.py": "src/pkg.spectrum.md"})
    md = ('[source](https://github.com/org/pkg/blob/main/pkg/spectrum.py#L42){target="_blank" style="float:right"}\n'
          "see [`fim_eigvalsh`](https://org.github.io/pkg/spectrum.html#fim_eigvalsh) and [the book](01_spectrum.ipynb#roots)")
    out = ln(md, "derivation.md")
    assert "[source](src/pkg.spectrum.md#L-42){ .nb-source }" in out
    assert "](spectrum.md#fim_eigvalsh)" in out and "](spectrum.md#roots)" in out
    assert "github" not in out and not ln.missing
    ln(md.replace("spectrum.py", "nope.py"), "x.md")
    assert ln.missing and "nope.py" in ln.missing[0]


def test_linker_sends_names_without_show_doc_to_their_source():
    ln = bd.Linker(_cfg(), {"spectrum.html": "spectrum.md"}, {"pkg/spectrum.py": "src/pkg.spectrum.md"},
                   anchors={"spectrum.md": {"fim_eigvalsh"}},
                   symbols={"spectrum.html#_pairs": ("pkg/spectrum.py", 105),
                            "spectrum.html#fim_eigvalsh": ("pkg/spectrum.py", 200)})
    out = ln("[`_pairs`](https://org.github.io/pkg/spectrum.html#_pairs) and "
             "[`fim_eigvalsh`](https://org.github.io/pkg/spectrum.html#fim_eigvalsh)", "metrics.md")
    assert "](src/pkg.spectrum.md#L-105)" in out and "](spectrum.md#fim_eigvalsh)" in out
    assert ln.to_source == ["_pairs"]


def test_symbol_sources(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text("import x\n\nclass C:\n    @classmethod\n    def make(cls): pass\n\ndef f(): pass\n")
    (tmp_path / "pkg" / "_modidx.py").write_text(
        "d = {'settings': {}, 'syms': {'pkg.m': {'pkg.m.C': ('m.html#c', 'pkg/m.py'),"
        " 'pkg.m.C.make': ('m.html#c.make', 'pkg/m.py'), 'pkg.m.f': ('m.html#f', 'pkg/m.py')}}}\n")
    assert bd.symbol_sources(tmp_path, "pkg") == {"m.html#c": ("pkg/m.py", 3), "m.html#c.make": ("pkg/m.py", 5),
                                                  "m.html#f": ("pkg/m.py", 7)}


def test_render_notebook(tmp_path):
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
    nb = {"cells": [
        {"cell_type": "raw", "source": "---\ntitle: The spectrum\ndescription: roots of $G$\noutput-file: spectrum.html\n---"},
        {"cell_type": "markdown", "source": "## Roots\nThe roots of $G(x)=0$."},
        {"cell_type": "code", "source": "#| echo: false\n#| output: asis\nshow_doc(f)", "outputs": [
            {"output_type": "execute_result", "data": {
                "text/markdown": "---\n\n### fim_eigvalsh\n\n*Eigenvalues of $F$.*", "text/plain": "x"}}]},
        {"cell_type": "code", "source": "plot()", "outputs": [
            {"output_type": "stream", "name": "stdout", "text": "a <b>\n"},
            {"output_type": "stream", "name": "stdout", "text": "c\n"},
            {"output_type": "display_data", "data": {"image/png": png, "text/plain": "<Figure>"},
             "metadata": {"image/png": {"width": 300}}},
            {"output_type": "execute_result", "data": {"text/latex": r"$\displaystyle x^{2}$", "text/plain": "x**2"}}]},
        {"cell_type": "code", "source": "#| include: false\nsecret()", "outputs": []},
        {"cell_type": "code", "source": "#| output: false\nshown()",
         "outputs": [{"output_type": "stream", "name": "stdout", "text": "hidden"}]},
    ]}
    ln = bd.Linker(_cfg(), {}, {})
    warns = []
    title, md = bd.render_notebook(nb, "spectrum.md", tmp_path / "spectrum_files", ln,
                                   lambda m, fatal=False: warns.append((m, fatal)))
    assert title == "The spectrum" and md.startswith('---\ntitle: "The spectrum"')
    assert "show_doc" not in md                                   # echo: false
    assert "### fim_eigvalsh { #fim_eigvalsh" in md               # the anchor nbdev's links use
    assert "a &lt;b&gt;\nc</code></pre>" in md                    # streams merged, escaped
    assert (tmp_path / "spectrum_files" / "cell3_out2.png").read_bytes().startswith(b"\x89PNG")
    assert '](spectrum_files/cell3_out2.png){ width="300" }' in md
    assert r"\[\displaystyle x^{2}\]" in md                        # text/latex output typeset as display math
    assert "secret" not in md and "shown()" in md and "hidden" not in md
    assert not warns
    assert r'roots of <span class="arithmatex">\(G\)</span>' in html.unescape(md)                 # math in the subtitle too


def test_show_doc_that_rendered_nothing_is_an_error(tmp_path):
    nb = {"cells": [{"cell_type": "code", "source": "#| echo: false\n#| output: asis\nshow_doc(f)", "outputs": [
        {"output_type": "stream", "name": "stdout",
         "text": "Traceback (most recent call last):\n\x1b[31mFileNotFoundError\x1b[39m: no such file: 'pkg/cli.py'\n"}]}]}
    warns = []
    bd.render_notebook(nb, "a.md", tmp_path, bd.Linker(_cfg(), {}, {}), lambda m, fatal=False: warns.append((m, fatal)))
    assert len(warns) == 1 and warns[0][1] and "FileNotFoundError" in warns[0][0]


def test_nav_label():
    assert bd.nav_label("Roots of $G(x)$ cost $5") == r"Roots of \(G(x)\) cost $5"


def _site(tmp_path, page):
    (tmp_path / "index.html").write_text('<html><body><h1 id="top">x</h1><a href="#top">t</a>'
                                         '<a href="other.html#here">o</a></body></html>')
    (tmp_path / "other.html").write_text(page)
    return dc.static_checks(tmp_path)[0]


def test_static_checks_pass_a_local_site(tmp_path):
    assert _site(tmp_path, '<p id="here">ok</p><script src="assets/x.js"></script>'
                           '<a href="https://example.org/">a plain link is not a load</a>') == []


@pytest.mark.parametrize("bad,what", [
    ('<script src="https://cdn.example.org/mathjax.js"></script><p id="here"></p>', "loads from the network"),
    ('<link rel="stylesheet" href="//fonts.example.org/css"><p id="here"></p>', "loads from the network"),
    ('<img src="http://example.org/a.png"><p id="here"></p>', "loads from the network"),
    ('<p id="elsewhere"></p>', "no anchor #here"),
])
def test_static_checks_catch(tmp_path, bad, what):
    fails = _site(tmp_path, bad)
    assert any(what in f for f in fails), fails


def test_external():
    assert dc._external("https://cdn.jsdelivr.net/x.js") and dc._external("//fonts.googleapis.com/css")
    assert not dc._external("http://127.0.0.1:8000/a.js") and not dc._external("data:image/png;base64,AA")
    assert not dc._external("assets/x.js")


def test_mixed_import_cells(tmp_path):
    import json
    cells = [("import torch", False), ("#| export\nimport torch\nx = 1", False), ("import math\ndef f(): return 1", False),
             ("import matplotlib.pyplot as plt\nplt.plot([1])", True), ("from x import f\nshow_doc(f)", False),
             ("#| eval: false\nimport os\nos.getcwd()", False), ("y = 2", False)]
    nb = {"cells": [{"cell_type": "code", "source": s, "outputs": []} for s, _ in cells], "metadata": {}}
    (tmp_path / "nbs").mkdir()
    (tmp_path / "nbs" / "00_a.ipynb").write_text(json.dumps(nb))
    found = bd.mixed_import_cells(tmp_path / "nbs")
    assert found == {"nbs/00_a.ipynb": [(3, "import matplotlib.pyplot as plt")]}


# ---------------------------------------------------------------------------------------------- tools/lab_check.py
lc = _load("lab_check")


def test_chromium_flags_keep_the_browser_offline():
    for f in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        assert f in dc.CHROMIUM_FLAGS, f
    rules = next(f for f in dc.CHROMIUM_FLAGS if f.startswith("--host-resolver-rules="))
    assert "MAP * ~NOTFOUND" in rules and "EXCLUDE 127.0.0.1" in rules
    assert not any(f.startswith("--user-data-dir") for f in dc.CHROMIUM_FLAGS)  # playwright gives an empty one


def test_lab_command_is_loopback_and_root_safe(tmp_path):
    cmd = lc.lab_command(8123, "tok", tmp_path, python="py", is_root=True)
    assert cmd[:3] == ["py", "-m", "jupyterlab"] and "--allow-root" in cmd and "--no-browser" in cmd
    assert "--ip=127.0.0.1" in cmd and "--port=8123" in cmd and "--ServerApp.port_retries=0" in cmd
    assert "--IdentityProvider.token=tok" in cmd and f"--ServerApp.root_dir={tmp_path}" in cmd
    assert "--allow-root" not in lc.lab_command(8123, "tok", tmp_path, python="py", is_root=False)


def test_lab_env_keeps_jupyter_state_in_the_temp_dir(tmp_path):
    env = lc.lab_env(tmp_path)
    for k in ("JUPYTER_RUNTIME_DIR", "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTERLAB_SETTINGS_DIR",
              "JUPYTERLAB_WORKSPACES_DIR", "IPYTHONDIR", "MPLCONFIGDIR"):
        assert Path(env[k]).is_dir() and Path(env[k]).is_relative_to(tmp_path), k
    import json
    s = json.loads((tmp_path / "lab-settings" / "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings")
                   .read_text())
    assert s == {"autosave": False}  # the check never writes a notebook back


def test_stored_outputs_and_first_plot_cell():
    nb = {"cells": [
        {"cell_type": "markdown", "source": ["The FIM $F$"]},
        {"cell_type": "code", "source": "x", "outputs": [
            {"output_type": "stream", "name": "stdout", "text": ["\n", "checked: 3 rows\n", "more\n"]},
            {"output_type": "execute_result", "data": {"text/plain": "1"}}]},
        {"cell_type": "code", "source": "plot()", "outputs": [
            {"output_type": "display_data", "data": {"image/png": "AA", "text/plain": "<Figure>"}}]},
        {"cell_type": "code", "source": "y", "outputs": [{"output_type": "stream", "name": "stdout", "text": "  \n"}]},
    ]}
    assert lc.stored_outputs(nb) == (["checked: 3 rows"], 1, True)
    assert lc.first_plot_cell(nb) == 2
    assert lc.first_plot_cell({"cells": nb["cells"][:2]}) == 1
    assert lc.stored_outputs({"cells": nb["cells"][1:2]})[2] is False


def test_free_port_is_bindable():
    import socket
    port = lc.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_processes_mentioning_finds_a_stray(tmp_path):
    import subprocess
    marker = str(tmp_path / "lab_check_marker")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            env={"JUPYTER_RUNTIME_DIR": marker, "PATH": "/usr/bin:/bin"})
    try:
        assert lc.processes_mentioning(marker) == [proc.pid]
    finally:
        proc.kill()
        proc.wait()
    assert lc.processes_mentioning(marker) == []


def test_the_cell_lab_check_runs_prints_what_it_waits_for():
    import subprocess
    r = subprocess.run([sys.executable, "-c", lc.RUN_CODE], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert lc.EXPECTED in r.stdout and sys.prefix in r.stdout
