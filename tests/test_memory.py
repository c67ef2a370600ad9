"""Peak memory of the engine (issue 10): a call's peak stays within its input + output + `max_bytes` + a small
constant. Measured in a fresh subprocess, after a warm-up call on a tiny input that loads (or compiles) the compiled kernel;
the peak (VmHWM) is reset after it through /proc/self/clear_refs and the input is allocated before the baseline is read."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20
SLACK = 48 * MiB                                                 # allocator, thread stacks, the valid mask and row stats

CHILD = textwrap.dedent("""
    import json, resource, sys, torch
    torch.set_num_threads(1)
    from fim_attention.spectrum import fim_eigvalsh
    from fim_attention.metrics import fim_metrics
    call, shape, dtype, k, max_bytes = json.loads(sys.argv[1])
    dt = getattr(torch, dtype)
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(*shape, generator=g, dtype=torch.float64) * 2, -1).to(dt)
    if call == "transposed": p = p.transpose(-1, -2).contiguous().transpose(-1, -2)   # strided rows, same values
    w = torch.softmax(torch.randn(2, 8, dtype=torch.float64), -1).to(dt)
    fim_eigvalsh(w, 2); fim_eigvalsh(w); fim_metrics(w)                              # load the compiled kernel
    rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096
    hwm = lambda: int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) * 1024
    open("/proc/self/clear_refs", "w").write("5")                                  # peak from here: not the warm-up's compile
    base = rss(); peak0 = base
    if call == "metrics_topk": out = fim_metrics(p, which=("eigmax", "energy_r8", "cond", "decay"), max_bytes=max_bytes)
    elif call == "metrics_all": out = fim_metrics(p, max_bytes=max_bytes)
    elif call == "metrics_all_norm": out = fim_metrics(p, normalize=True, max_bytes=max_bytes)
    else: out = fim_eigvalsh(p, k, max_bytes=max_bytes)
    peak = hwm()
    out_bytes = sum(v.numel() * v.element_size() for v in (out.values() if isinstance(out, dict) else [out]))
    print(json.dumps(dict(base=base, peak0=peak0, peak=peak, input=p.numel() * p.element_size(), output=out_bytes)))
""")


def measure(call, shape, dtype="float32", k=16, max_bytes=16 * MiB):
    r = subprocess.run([sys.executable, "-c", CHILD, json.dumps([call, shape, dtype, k, max_bytes])], capture_output=True,
                       text=True, cwd=ROOT, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("call,shape,dtype,k", [
    ("topk", (4, 12, 256, 512), "float32", 16),                  # 24 MiB of input, top 16
    ("topk", (2, 12, 128, 512), "float64", 16),
    ("topk", (2, 12, 128, 512), "bfloat16", 16),                 # half: converted to float32 in chunks of max_bytes
    ("transposed", (4, 12, 256, 512), "float32", 16),            # strided: copied in chunks of max_bytes
    ("full", (1, 4, 64, 256), "float32", None),                  # the whole spectrum: output = input size
    ("metrics_all", (1, 4, 64, 256), "float32", None),           # eff_rank: the whole spectrum per row
    ("metrics_topk", (4, 12, 256, 512), "float32", 16),
    # regression (bench --memory): every metric of a whole layer held all spectra at once, ~4x the input above it
    ("metrics_all_norm", (4, 12, 256, 512), "float32", None),
])
def test_peak_within_input_output_and_budget(call, shape, dtype, k):
    "Regression (issue 10): the torch path peaked at ~12x its input whatever max_bytes said."
    max_bytes = 16 * MiB
    m = measure(call, list(shape), dtype, k, max_bytes)
    extra = m["peak"] - max(m["base"], m["peak0"])
    assert extra <= m["output"] + max_bytes + SLACK, (m, extra / MiB)
