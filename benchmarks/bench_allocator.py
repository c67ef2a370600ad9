#!/usr/bin/env python
"""How much the full secular spectrum depends on glibc malloc's state (a caveat to bench_spectrum.py).

Each case runs in a fresh process: `fim_eigvalsh(p)` (all T eigenvalues) on 8 rows of T = 1024, float64, one thread,
with glibc's default mmap threshold, and with it raised (MALLOC_MMAP_THRESHOLD_) so that the solver's ~2 MiB temporaries
come from the heap instead of fresh mmap'd pages. bench_spectrum.py measures the second situation: SciPy runs first in
its process and frees 8 MiB matrices, which raises glibc's dynamic threshold. Top-16 (small temporaries) is shown too.

    python benchmarks/bench_allocator.py
"""
import json
import os
import subprocess
import sys

CHILD = r"""
import json, statistics, time, torch
from fim_attention.spectrum import fim_eigvalsh
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
p = torch.softmax(2.0 * torch.randn(8, 1024, generator=g, dtype=torch.float64), -1)   # 64 KiB: no large free before
out = {}
def case(name, fn, rows):
    fn(); ts = []
    for _ in range(3):
        t0 = time.perf_counter(); fn(); ts.append((time.perf_counter() - t0) / rows)
    out[name] = statistics.median(ts) * 1e3
case("full", lambda: fim_eigvalsh(p), 8)                       # first: the process has freed nothing large yet
big = torch.softmax(2.0 * torch.randn(1024, 1024, generator=g, dtype=torch.float64), -1)   # frees 8 MiB temporaries
case("full_after_big_free", lambda: fim_eigvalsh(p), 8)
case("top16", lambda: fim_eigvalsh(big, k=16), 1024)
print(json.dumps(out))
"""


def run(env_extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
    r = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    cases = {"glibc default": {}, "MALLOC_MMAP_THRESHOLD_=256 MiB": {"MALLOC_MMAP_THRESHOLD_": str(2**28),
                                                                    "MALLOC_TRIM_THRESHOLD_": str(2**29)}}
    res = {name: run(env) for name, env in cases.items()}
    for name, r in res.items():
        print(f"{name:32} full spectrum {r['full']:7.2f} ms/row (after a large free: {r['full_after_big_free']:6.2f})"
              f"   top-16 {r['top16']:.3f} ms/row")
    a, b = res["glibc default"], res["MALLOC_MMAP_THRESHOLD_=256 MiB"]
    print(f"fresh process, default / raised threshold: full spectrum {a['full'] / b['full']:.1f}x slower")
