#!/usr/bin/env python
"""Cold start of the compiled kernel: `import fim_attention` and the first calls, with an empty numba cache and with
the cache that first run wrote (issue 10, "Cold start").

Each measurement runs in a fresh Python process with NUMBA_CACHE_DIR pointing at one temporary folder: the first
process finds it empty (numba compiles every kernel signature it meets), the later ones load the machine code that
process cached. Timed inside each child, in order:

  import           `import fim_attention` (numba is not imported yet: the kernel loads on first use)
  first top-16     fim_eigvalsh(p, k=16) on 64 float64 rows of T = 1024 (kernel import, compile or cache load, the call)
  first metrics    fim_metrics(q, normalize=True) on float32 causal rows (every metric: full spectra, lambda_min,
                   row statistics in float32 -- the signatures the training callback uses)
  warm top-16      the same top-16 call again (the steady state, for scale)

    python benchmarks/bench_coldstart.py          # 1 cold + 3 cached runs -> benchmarks/results/bench_coldstart.json
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_coldstart.json"

CHILD = r"""
import json, time
t0 = time.perf_counter()
import fim_attention
from fim_attention.spectrum import fim_eigvalsh
from fim_attention.metrics import fim_metrics
import torch
t_import = time.perf_counter() - t0
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
p = torch.softmax(2.0 * torch.randn(64, 1024, generator=g, dtype=torch.float64), -1)
s = torch.randn(4, 128, 128, generator=g).masked_fill(~torch.ones(128, 128, dtype=torch.bool).tril(), -float("inf"))
q = torch.softmax(s, -1)
t = time.perf_counter(); fim_eigvalsh(p, 16); t_top = time.perf_counter() - t
t = time.perf_counter(); fim_metrics(q, normalize=True); t_met = time.perf_counter() - t
t = time.perf_counter(); fim_eigvalsh(p, 16); t_warm = time.perf_counter() - t
print(json.dumps(dict(import_s=t_import, first_top16_s=t_top, first_metrics_s=t_met, warm_top16_s=t_warm)))
"""


def child(cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cached", type=int, default=3, help="runs with the cache the cold run wrote (median reported)")
    ap.add_argument("--json", default=str(RESULTS), help="where the figures go ('' for none)")
    args = ap.parse_args(argv)
    load0 = list(os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="numba_cache_") as d:
        cold = child(d)
        cached = [child(d) for _ in range(args.cached)]
    med = {k: statistics.median(r[k] for r in cached) for k in cold}
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    rec = dict(command="python benchmarks/bench_coldstart.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               date_utc=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), cpu=cpu, cores=os.cpu_count(),
               loadavg_start=load0, loadavg_end=list(os.getloadavg()), cold=cold, cached_runs=cached, cached_median=med)
    for name, r in (("cold (empty numba cache)", cold), (f"cached (median of {args.cached})", med)):
        print(f"{name:28s} import {r['import_s']:6.2f} s   first top-16 {r['first_top16_s']:6.2f} s   "
              f"first metrics {r['first_metrics_s']:6.2f} s   warm top-16 {r['warm_top16_s'] * 1e3:6.1f} ms")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rec, indent=1))
        print("wrote", args.json)


if __name__ == "__main__":
    main()
