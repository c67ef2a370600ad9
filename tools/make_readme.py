"""Write README.md from nbs/index.ipynb (nbdev_readme needs Quarto, which cannot be installed offline).

Markdown cells are copied; code cells become Python fences with their stored text outputs; cells
with an nbdev `#| hide` directive are left out, other directive lines are stripped.
"""
import json
import re
from pathlib import Path

root = Path(__file__).resolve().parent.parent
HEADER = "<!-- Generated from nbs/index.ipynb by tools/make_readme.py (run by `make test`'s sync check): edit the notebook. -->\n\n"


def directives(src: str) -> tuple[set, str]:
    "Split nbdev `#| ...` directive lines from the rest of a code cell."
    keep, found = [], set()
    for line in src.splitlines():
        if line.strip().startswith("#|"):
            found.update(line.strip()[2:].split())
        else:
            keep.append(line)
    return found, "\n".join(keep).strip("\n")


def cell_text(cell) -> str:
    src = "".join(cell["source"])
    if cell["cell_type"] == "markdown":
        return src.strip("\n")
    found, code = directives(src)
    if "hide" in found or not code:
        return ""
    parts = [f"```python\n{code}\n```"]
    for out in cell.get("outputs", []):
        text = out.get("text") or out.get("data", {}).get("text/plain")
        if text:
            parts.append("```\n" + "".join(text).rstrip("\n") + "\n```")
    return "\n\n".join(parts)


def render(nb_path: Path) -> str:
    nb = json.loads(nb_path.read_text(encoding="utf-8"))
    blocks = [t for t in (cell_text(c) for c in nb["cells"]) if t]
    text = HEADER + "\n\n".join(blocks) + "\n"
    # links between notebooks are relative to nbs/ (the docs site resolves them); README.md sits one level up
    text = re.sub(r"\]\((?![\w+.-]+:|#|/)(images/[^)\s]+)", r"](nbs/\1", text)   # pictures stored beside the notebooks
    return re.sub(r"\]\((?![\w+.-]+:|#|/)([^)#\s]+\.ipynb)", r"](nbs/\1", text)


if __name__ == "__main__":
    (root / "README.md").write_text(render(root / "nbs" / "index.ipynb"), encoding="utf-8")
