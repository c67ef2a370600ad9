"""Fail if `nbdev_export`, `nbdev_clean` or the README render would change any file git tracks (or add one).

Works in a dirty tree: it compares file contents before and after, not against HEAD.
"""
import hashlib
import subprocess
import sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
bindir = Path(sys.executable).parent


def snapshot():
    "Map each tracked or untracked-but-not-ignored file to the hash of its bytes."
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root,
                         check=True, capture_output=True).stdout.decode()
    files = [f for f in out.split("\0") if f]
    return {f: hashlib.sha256((root / f).read_bytes()).hexdigest() for f in files if (root / f).is_file()}


before = snapshot()
for tool in ("nbdev_export", "nbdev_clean"):
    subprocess.run([str(bindir / tool)], cwd=root, check=True)
subprocess.run([sys.executable, str(root / "tools" / "make_readme.py")], cwd=root, check=True)
after = snapshot()
changed = sorted(f for f in before.keys() | after.keys() if before.get(f) != after.get(f))
if changed:
    print("nbdev_export/nbdev_clean/tools/make_readme.py changed these files; run them and commit:")
    print("\n".join("  " + f for f in changed))
    sys.exit(1)
print(f"sync check: notebooks and package agree ({len(after)} files unchanged)")
