#!/usr/bin/env python
"""Eager `output_attentions` vs the attention-interface probe on SmolLM2-135M-Instruct (Q4_1 GGUF dequantised to float32).

Per context length T (one window of Shakespeare, batch 1) and per backend, in a fresh subprocess each (so the peak
resident memory of one run is not the high-water mark of another), the two backends interleaved:

- `eager`: the model with eager attention, `model(..., output_attentions=True)`, every layer's (1, 9, T, T) fed to
  `Probe.update` (the atlas path before issue 12);
- `probe`: the model with SDPA attention, `attach(model, ...)`, one plain forward: the selected rows are recomputed
  from query/key inside each layer, in chunks under the probe's memory budget.

Both measure the same rows (`--rows`, sampled per head with the same seed, so identical rows) with the top-k metrics
(`full_spectrum=False`: eigmax, trace, energy_r8/16, decay, cond; eff_rank needs every eigenvalue). Recorded: wall time
of forward + metrics, the peak resident memory above the resident memory just before the forward (sampled every 2 ms
by a thread reading /proc/self/statm), and the largest relative difference of the per-head results between backends.

    OMP_NUM_THREADS=1 python benchmarks/bench_probe.py                 # T in 256 512 1024 2048 -> results/bench_probe.{json,png}
    python benchmarks/bench_probe.py --Ts 256 --reps 1 --out /tmp/x    # quick
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path


def rss() -> int:
    "Current resident set size in bytes."
    with open("/proc/self/statm") as f: return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    "Highest resident memory seen while the block runs, sampled every `dt` seconds."
    def __init__(self, dt=0.002): self.dt, self.peak, self._stop = dt, 0, threading.Event()
    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss()); time.sleep(self.dt)
    def __enter__(self):
        self.base = self.peak = rss(); self._t = threading.Thread(target=self._run, daemon=True); self._t.start(); return self
    def __exit__(self, *exc):
        self._stop.set(); self._t.join(); self.peak = max(self.peak, rss())


def one(backend: str, T: int, rows: int, threads: int) -> dict:
    "One measurement in this process: load, warm up at T=32, then the timed forward + metrics at T."
    import torch
    torch.set_num_threads(threads)
    from fim_attention import hf
    from fim_attention.hf_probe import attach
    from fim_attention.probe import Probe
    model, tok = hf.load_pretrained("smollm2")
    win = hf.text_windows(hf.shakespeare_text(), tok, max_len=T, n_windows=1)
    warm = hf.text_windows(hf.shakespeare_text(), tok, max_len=32, n_windows=1)
    opts = dict(modes=("query",), rows=rows, full_spectrum=False, seed=0)
    if backend == "eager":
        def run(batch):
            probe = Probe(**opts)
            with torch.no_grad(): out = model(**batch, output_attentions=True, **hf.attention_only(model))
            for l, p in enumerate(out.attentions): probe.update(l, p)
            del out
            return probe
    else:
        model.set_attn_implementation("sdpa")
        def run(batch):
            with attach(model, **opts) as probe:
                with torch.no_grad(): model(**batch, **hf.attention_only(model))
            return probe
    run(warm)
    import gc; gc.collect()
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        probe = run(win)
        secs = time.perf_counter() - t0
    return dict(backend=backend, T=T, seconds=secs, peak_extra_bytes=mem.peak - mem.base,
                per_head={k: v.tolist() for k, v in probe.per_head().items()})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--Ts", type=int, nargs="+", default=[256, 512, 1024, 2048])
    ap.add_argument("--rows", type=int, default=256, help="query rows sampled per head (default 256)")
    ap.add_argument("--reps", type=int, default=2, help="runs per (backend, T), interleaved (default 2)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--one", nargs=2, metavar=("BACKEND", "T"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.one:
        print(json.dumps(one(a.one[0], int(a.one[1]), a.rows, a.threads)))
        return 0
    runs = []
    for T in a.Ts:
        for r in range(a.reps):
            for backend in (("eager", "probe") if r % 2 == 0 else ("probe", "eager")):
                cmd = [sys.executable, __file__, "--one", backend, str(T), "--rows", str(a.rows), "--threads", str(a.threads)]
                res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
                res["load"] = os.getloadavg()[0]
                print(f"T={T:5d} {backend:5s} {res['seconds']:8.2f} s  peak extra {res['peak_extra_bytes'] / 2**20:9.1f} MiB"
                      f"  (load {res['load']:.1f})", flush=True)
                runs.append(res)
    import statistics
    summary = []
    for T in a.Ts:
        row = {"T": T}
        for b in ("eager", "probe"):
            rs = [r for r in runs if r["T"] == T and r["backend"] == b]
            row[f"{b}_seconds"] = statistics.median(r["seconds"] for r in rs)
            row[f"{b}_peak_extra_MiB"] = statistics.median(r["peak_extra_bytes"] for r in rs) / 2**20
        e = next(r for r in runs if r["T"] == T and r["backend"] == "eager")["per_head"]
        p = next(r for r in runs if r["T"] == T and r["backend"] == "probe")["per_head"]
        import math
        rel = [abs(x - y) / abs(y) for k in e for xr, yr in zip(p[k], e[k]) for x, y in zip(xr, yr)
               if math.isfinite(x) and math.isfinite(y) and y != 0]
        row["max_rel_diff"] = max(rel) if rel else None
        row["memory_ratio"] = row["probe_peak_extra_MiB"] / row["eager_peak_extra_MiB"]
        row["time_ratio"] = row["probe_seconds"] / row["eager_seconds"]
        summary.append(row)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    doc = dict(model="SmolLM2-135M-Instruct (Q4_1 GGUF dequantised to float32)", text="shakespeare:hamlet, 1 window",
               rows_per_head=a.rows, metrics="top-k (full_spectrum=False)", threads=a.threads, cpu=cpu,
               cores=os.cpu_count(), torch=__import__("torch").__version__, summary=summary,
               runs=[{k: v for k, v in r.items() if k != "per_head"} for r in runs])
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    (out / "bench_probe.json").write_text(json.dumps(doc, indent=2))
    import matplotlib; matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    Ts = [r["T"] for r in summary]
    for b, st in (("eager", "o-"), ("probe", "s-")):
        ax[0].plot(Ts, [r[f"{b}_peak_extra_MiB"] for r in summary], st, label=b)
        ax[1].plot(Ts, [r[f"{b}_seconds"] for r in summary], st, label=b)
    for x, lab in zip(ax, ("peak extra resident memory (MiB)", "forward + metrics (s)")):
        x.set_xscale("log", base=2); x.set_yscale("log"); x.set_xlabel("context length T (tokens)"); x.set_ylabel(lab); x.legend()
    fig.suptitle(f"SmolLM2-135M-Instruct (Q4_1 dequantised), {a.rows} sampled rows per head, top-k metrics, {a.threads} thread(s)",
                 fontsize=9)
    fig.tight_layout(); fig.savefig(out / "bench_probe.png", dpi=110)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
