"""Execute a notebook in place so its outputs are stored, skipping `#| slow` cells (kept with their stored outputs).

    .venv/bin/python tools/run_notebook.py nbs/03_benchmarks.ipynb

(`jupyter nbconvert --execute` would also run the slow cells.) Run nbdev_clean afterwards.
"""
import sys, nbformat
from nbclient import NotebookClient
path = sys.argv[1]
nb = nbformat.read(path, as_version=4)
slow = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and any(l.strip().startswith("#| slow") for l in c.source.splitlines())]
kept = {i: nb.cells[i] for i in slow}
run = nbformat.v4.new_notebook(metadata=nb.metadata)
run.cells = [c for i, c in enumerate(nb.cells) if i not in kept]
NotebookClient(run, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(__import__("pathlib").Path(path).parent)}}).execute()
cells = list(run.cells)
for i in sorted(kept):
    c = kept[i]; c.execution_count = None                                     # its stored outputs are the long run's results
    cells.insert(i, c)
nb.cells = cells
nbformat.write(nb, path)
print("executed", path, "skipped slow cells:", slow)
