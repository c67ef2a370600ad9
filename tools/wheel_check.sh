#!/usr/bin/env bash
# Build the wheel, install it into a fresh venv outside the repo (with its declared dependencies),
# import fim_attention from there, check __version__ against settings.ini and call public functions.
# Usage: bash tools/wheel_check.sh     (PY=python of the dev venv, TORCH_PIN=torch pin for the test venv)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PY:-$REPO/.venv/bin/python}
TORCH_PIN=${TORCH_PIN:-torch==2.13.0}   # first, so the wheel's torch range does not pull a CUDA build
say() { echo "[wheel_check] $*"; }
t0=$SECONDS

[ -x "$PY" ] || { echo "no $PY: run 'make install' (or create .venv) first" >&2; exit 1; }
version=$(sed -n 's/^version[[:space:]]*=[[:space:]]*//p' settings.ini | tr -d '[:space:]')
lib=$(sed -n 's/^lib_path[[:space:]]*=[[:space:]]*//p' settings.ini | tr -d '[:space:]')
[ -n "$version" ] && [ -n "$lib" ] || { echo "settings.ini: no version or lib_path" >&2; exit 1; }

# The test venv (torch included, ~1.5 GB of small files) lives in RAM when /dev/shm has room:
# installing and removing it there takes seconds even when the disk is busy.
scratch=${WHEEL_CHECK_TMP:-/tmp}
if [ -z "${WHEEL_CHECK_TMP:-}" ] && [ "$(df -Pk /dev/shm 2>/dev/null | awk 'NR==2 {print $4}')" -gt 4000000 ] 2>/dev/null; then
  scratch=/dev/shm
fi
tmp=$(mktemp -d "$scratch/fim_wheel_check.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

"$PY" -m build --version >/dev/null 2>&1 || "$PY" -m pip install -q --disable-pip-version-check "build>=1.0"
say "building the wheel (version $version)"
# the build backend writes its egg-info into the source tree; keep a clean tree clean
had=$(ls -d ./*.egg-info ./build 2>/dev/null || true)
"$PY" -m build --wheel --outdir "$tmp/dist" . >"$tmp/build.log" 2>&1 || { cat "$tmp/build.log"; exit 1; }
[ -n "$had" ] || rm -rf ./*.egg-info ./build
wheel=$(ls "$tmp"/dist/*.whl)
say "built $(basename "$wheel") in $((SECONDS - t0))s"
case "$(basename "$wheel")" in
  *-"$version"-*) ;;
  *) echo "wheel name does not carry settings.ini version $version: $wheel" >&2; exit 1 ;;
esac

# every module nbdev exported is in the wheel, and nothing from nbs/ or tests/
"$PY" - "$wheel" "$lib" <<'EOF'
import sys, zipfile, pathlib
whl, lib = sys.argv[1], sys.argv[2]
names = set(zipfile.ZipFile(whl).namelist())
want = {p.as_posix() for p in pathlib.Path(lib).rglob("*.py") if "__pycache__" not in p.parts}
missing = sorted(want - names)
stray = sorted(n for n in names if n.startswith(("nbs/", "tests/", "tools/")))
if missing or stray:
    sys.exit(f"wheel contents wrong: missing {missing}, stray {stray}")
print(f"[wheel_check] wheel holds all {len(want)} modules of {lib}/")
EOF

# a fresh venv on the same base interpreter as the dev venv, outside the repo
base=$("$PY" -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')
"$base" -m venv "$tmp/venv"
vpip() { "$tmp/venv/bin/python" -m pip --disable-pip-version-check -q "$@" >"$tmp/pip.log" 2>&1 \
         || { grep -v "is ignored: it is neither" "$tmp/pip.log" >&2; exit 1; }; }
vpip install "$TORCH_PIN"
vpip install "$wheel" "$TORCH_PIN"
say "installed into a fresh venv in $((SECONDS - t0))s"

cd "$tmp"   # not the repo: the import must come from the installed wheel
"$tmp/venv/bin/python" - "$version" "$lib" <<'EOF'
import importlib, pathlib, sys
version, lib = sys.argv[1], sys.argv[2]
import torch
m = importlib.import_module(lib)
where = pathlib.Path(m.__file__).resolve()
assert "site-packages" in where.parts, f"imported from {where}, not from the installed wheel"
assert m.__version__ == version, f"__version__ {m.__version__!r} != settings.ini {version!r}"
print(f"[wheel_check] import {lib} {m.__version__} from {where.parent}")

def public(name, *mods):
    "`name` from the top-level package, else from the first submodule that has it."
    if hasattr(m, name):
        return getattr(m, name), lib
    for mod in mods:
        try:
            sub = importlib.import_module(f"{lib}.{mod}")
        except ModuleNotFoundError:
            continue
        if hasattr(sub, name):
            return getattr(sub, name), f"{lib}.{mod}"
    return None, None

fim, src = public("fim", "derivation")
assert fim is not None, "no public fim() in the installed package"
p = torch.tensor([0.5, 0.5], dtype=torch.float64)
F = fim(p)
want = torch.tensor([[0.25, -0.25], [-0.25, 0.25]], dtype=torch.float64)
assert torch.allclose(F, want, atol=1e-12), F
print(f"[wheel_check] {src}.fim([.5, .5]) = {F.tolist()}")

eig, src = public("fim_eigvalsh", "spectrum")
if eig is not None:
    g = torch.Generator().manual_seed(0)
    q = torch.softmax(torch.randn(3, 4, 16, generator=g, dtype=torch.float64), -1)
    lam = eig(q)
    ref = torch.linalg.eigvalsh(fim(q))
    lam = lam.sort(-1).values if lam.shape == ref.shape else lam
    assert lam.shape == ref.shape, (lam.shape, ref.shape)
    err = (lam - ref).abs().max().item()
    assert err < 1e-10, f"fim_eigvalsh differs from dense eigvalsh by {err}"
    print(f"[wheel_check] {src}.fim_eigvalsh on (3, 4, 16): max |diff| vs dense eigvalsh = {err:.1e}")
else:
    print("[wheel_check] fim_eigvalsh not in the package yet: skipped")
EOF

# the console script, if the package declares one that exists
if [ -x "$tmp/venv/bin/fim-attention" ] && [ -f "$REPO/$lib/cli.py" ]; then
  "$tmp/venv/bin/fim-attention" --help >/dev/null
  say "fim-attention --help runs"
fi
say "passed in $((SECONDS - t0))s (then removing the test venv)"
