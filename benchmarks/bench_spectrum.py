#!/usr/bin/env python
"""Benchmarks of the FIM spectrum engine against dense eigensolvers (issue 3, "Benchmarks").

What is timed, per T in {128, 256, 512, 1024, 2048} and per thread count (1 and 2):
  scipy_eigvalsh    form diag(p) - p p^T and call scipy.linalg.eigvalsh, one matrix at a time
  torch_eigvalsh    form the (rows, T, T) batch and call torch.linalg.eigvalsh once
  secular_top16     fim_eigvalsh(p, k=16, method="secular")   (the torch path, no T x T matrix)
  secular_full      fim_eigvalsh(p, k=None, method="secular") (all T eigenvalues)
  kernel_top16      fim_eigvalsh(p, k=16, method="kernel")    (the compiled CPU kernel, the default on CPU)
  kernel_top16_f32  the same on the float32 rounding of the rows
  kernel_full       fim_eigvalsh(p, k=None, method="kernel")
and a full layer (12 heads x 1024 queries, T = 1024, top 16, kernel) per thread count: the threads' throughput; the
N-thread child also times the layer on 1 and N threads alternately in its own process, and that paired ratio is the
reported speed-up (two children run minutes apart on a shared machine disagreed by up to 30%).
and the mean FIM of 12 heads x N=64 rows x T=1024: mean_fim_eigvalsh(P, k=16) against a Python loop
over heads that forms each head's T x T mean FIM and calls torch.linalg.eigvalsh (the reference way).
All inputs are float64 rows p = softmax(2 z), z ~ N(0, I), seeded.

Method: each thread count runs in its own child process (OMP/OpenBLAS/MKL thread variables must be
set before numpy/torch load). Inside a child, every repetition runs all methods of one T in turn,
rotating their order (interleaved, so machine noise hits all methods alike); a sample repeats a fast
call until it takes >= 20 ms. The dense solvers and the full secular spectrum get a batch of `rows` rows per T;
top-16 gets 1024 rows (the same rows first), since at O(kT) per matrix a tiny batch would time call overhead.
Reported: medians over repetitions, median time per matrix, ratios of those (dense / engine),
slopes of log(time) against log(T) (least squares), and the accuracy of the engine against SciPy.

    python benchmarks/bench_spectrum.py                 # full run, writes benchmarks/results/bench_spectrum.{json,png}
    python benchmarks/bench_spectrum.py --quick         # seconds-long smoke run (bench_spectrum_quick.*)
    python benchmarks/bench_spectrum.py --memory        # peak memory of fim_metrics on 1 and 4 x 12 x 2048 x 2048
                                                        # float32 layers (all metrics, eff_rank included): bench_memory.json
"""
import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("scipy_eigvalsh", "torch_eigvalsh", "secular_top16", "secular_full", "kernel_top16", "kernel_top16_f32", "kernel_full")
TOP = ("secular_top16", "kernel_top16", "kernel_top16_f32")                     # the methods timed on the larger top-16 batch
LIMIT_US = (4, 9)  # issue 10's estimate of the per-row limit, top 16 at T = 1024: read + select (~2 us), tail sums (1-2), 16 roots (2-5)
# rows: batch for the dense solvers and the full secular spectrum (cost O(T^3) resp. O(T^2) per matrix: per-call
# overhead is negligible); rows_top16: the top-16 engine gets a larger batch of rows (its first `rows` rows are the
# dense batch), since at O(kT) per matrix a batch of 8 rows would time Python/launch overhead, not the method.
FULL = dict(Ts=[128, 256, 512, 1024, 2048], rows={128: 64, 256: 32, 512: 16, 1024: 8, 2048: 2}, rows_top16=1024,
            reps=7, mean=dict(H=12, N=64, T=1024, k=16), mean_reps=7, threads=[1, 2], layer=dict(H=12, Tq=1024, T=1024))
QUICK = dict(Ts=[64, 128], rows={64: 8, 128: 4}, rows_top16=64, reps=2,
             mean=dict(H=2, N=8, T=128, k=16), mean_reps=2, threads=[1, 2], layer=dict(H=2, Tq=16, T=64))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, seconds-long smoke run")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="output directory")
    ap.add_argument("--threads", type=int, nargs="+", help="thread counts (default 1 2)")
    ap.add_argument("--Ts", type=int, nargs="+", help="override the list of T")
    ap.add_argument("--reps", type=int, help="override the number of repetitions")
    ap.add_argument("--no-plot", action="store_true", help="skip the PNG")
    ap.add_argument("--memory", action="store_true", help="peak memory of fim_metrics on 1 and 4 x 12 x 2048 x 2048 float32 (long)")
    ap.add_argument("--memory-batches", type=int, nargs="+", default=[1, 4], help=argparse.SUPPRESS)
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # internal: child writes its results here
    ap.add_argument("--config", type=str, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


# ------------------------------------------------------------------------------------ child process

def _timeit(fn, min_s=0.02):
    "Seconds per call of fn: one call, or as many as needed for a sample of >= min_s."
    t0 = time.perf_counter(); fn(); dt = time.perf_counter() - t0
    if dt >= min_s: return dt
    n = max(2, math.ceil(min_s / max(dt, 1e-7)))
    t0 = time.perf_counter()
    for _ in range(n): fn()
    return (time.perf_counter() - t0) / n


def _rows(torch, n, T, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(2.0 * torch.randn(n, T, generator=g, dtype=torch.float64), -1)  # (n, T)


def worker(cfg, out_path):
    import numpy as np
    import scipy
    import scipy.linalg
    import torch
    torch.set_num_threads(cfg["threads"])
    from fim_attention.spectrum import fim_eigvalsh, mean_fim_eigvalsh

    def scipy_all(P):
        return np.stack([scipy.linalg.eigvalsh(np.diag(p) - np.outer(p, p))[::-1] for p in P])

    def torch_all(p):
        return torch.linalg.eigvalsh(torch.diag_embed(p) - p[:, :, None] * p[:, None, :]).flip(-1)

    res = dict(threads=cfg["threads"], torch_threads=torch.get_num_threads(), per_T=[], mean_fim=None)
    for T in cfg["Ts"]:
        n = cfg["rows"][str(T)] if str(T) in cfg["rows"] else cfg["rows"][T]
        nt = max(n, cfg["rows_top16"])
        pt = _rows(torch, nt, T, seed=T)                      # (nt, T) the top-16 batch
        p = pt[:n]                                            # (n, T) the dense / full batch: its first rows
        P = p.numpy()
        pt32 = pt.float()
        fns = {"scipy_eigvalsh": lambda: scipy_all(P), "torch_eigvalsh": lambda: torch_all(p),
               "secular_top16": lambda: fim_eigvalsh(pt, k=min(16, T), method="secular"),
               "secular_full": lambda: fim_eigvalsh(p, method="secular"),
               "kernel_top16": lambda: fim_eigvalsh(pt, k=min(16, T), method="kernel"),
               "kernel_top16_f32": lambda: fim_eigvalsh(pt32, k=min(16, T), method="kernel"),
               "kernel_full": lambda: fim_eigvalsh(p, method="kernel")}
        nrows = {m: (nt if m in TOP else n) for m in METHODS}
        outs = {m: fns[m]() for m in METHODS}  # warm-up, and the values checked below
        times = {m: [] for m in METHODS}
        for r in range(cfg["reps"]):
            order = METHODS[r % len(METHODS):] + METHODS[:r % len(METHODS)]  # rotate: interleaved
            for m in order: times[m].append(_timeit(fns[m]))
        ref = torch.from_numpy(np.ascontiguousarray(outs["scipy_eigvalsh"]))  # (n, T) float64, descending
        k = min(16, T)
        top = outs["kernel_top16"][:n]
        full = outs["kernel_full"]
        lam1 = ref[:, :1]
        cert = ref >= 1e-5 * lam1  # dense float64 (abs. error ~1e-16 lam1) certifies these to ~1e-10 relative
        rel_top = ((top - ref[:, :k]) / ref[:, :k]).abs().max().item()
        rel_full = torch.where(cert, (full - ref).abs() / ref.abs(), 0).max().item()
        abs_full = ((full - ref).abs() / lam1).max().item()
        res["per_T"].append(dict(
            T=T, rows=nrows,
            median_s={m: statistics.median(v) for m, v in times.items()},
            per_matrix_s={m: statistics.median(v) / nrows[m] for m, v in times.items()},
            per_matrix_min_s={m: min(v) / nrows[m] for m, v in times.items()},  # best case: least disturbed
            samples_s=times,
            accuracy=dict(top16_max_rel_err_vs_scipy=rel_top, full_max_rel_err_vs_scipy_certified=rel_full,
                          full_max_abs_err_over_lam1=abs_full,
                          torch_vs_scipy_max_abs_err_over_lam1=((outs["torch_eigvalsh"] - ref).abs() / lam1).max().item(),
                          kernel_vs_secular_top16_max_rel=((outs["kernel_top16"] - outs["secular_top16"]).abs() / outs["secular_top16"].abs().clamp_min(1e-300)).max().item())))
        print(f"  threads={cfg['threads']} T={T:5d}: " + "  ".join(
            f"{m} {statistics.median(times[m]) / nrows[m] * 1e3:9.4f} ms" for m in METHODS) + " per matrix", flush=True)

    lc = cfg.get("layer")
    if lc:                                                    # a full layer: (H, Tq, T) rows, top 16, the kernel
        L = _rows(torch, lc["H"] * lc["Tq"], lc["T"], seed=777).reshape(lc["H"], lc["Tq"], lc["T"])
        fim_eigvalsh(L[:1, :8], k=16, method="kernel")
        ts = [_timeit(lambda: fim_eigvalsh(L, k=16, method="kernel")) for _ in range(cfg["reps"])]
        res["layer"] = dict(lc, median_s=statistics.median(ts), samples_s=ts,
                            rows_per_s=lc["H"] * lc["Tq"] / statistics.median(ts))
        if cfg["threads"] > 1:                                # the same layer on 1 and on N threads in this process, interleaved
            pair = {1: [], cfg["threads"]: []}                # (order alternating): the threads' speed-up from paired samples,
            for r in range(cfg["reps"]):                      # not from two processes run minutes apart on a shared machine
                for nt in (list(pair) if r % 2 else list(pair)[::-1]):
                    torch.set_num_threads(nt); pair[nt].append(_timeit(lambda: fim_eigvalsh(L, k=16, method="kernel")))
            torch.set_num_threads(cfg["threads"])
            res["layer"]["interleaved_s"] = {str(k): v for k, v in pair.items()}
            res["layer"]["interleaved_speedup"] = statistics.median(pair[1]) / statistics.median(pair[cfg["threads"]])
        print(f"  threads={cfg['threads']} layer {lc['H']}x{lc['Tq']}x{lc['T']} top-16 kernel: "
              f"{res['layer']['median_s'] * 1e3:.1f} ms ({res['layer']['rows_per_s']:.0f} rows/s)", flush=True)

    mc = cfg["mean"]
    if mc:
        H, N, T, k = mc["H"], mc["N"], mc["T"], mc["k"]
        Pm = _rows(torch, H * N, T, seed=12345).reshape(H, N, T)  # (H, N, T)

        def loop():
            out = []
            for h in range(H):  # the reference's per-head loop: one dense T x T eigvalsh per head
                ph = Pm[h]
                F = torch.diag(ph.mean(0)) - ph.T @ ph / N
                out.append(torch.linalg.eigvalsh(F).flip(-1)[:k])
            return torch.stack(out)

        fns = {"mean_fim_eigvalsh": lambda: mean_fim_eigvalsh(Pm, k=k), "per_head_loop": loop}
        outs = {m: f() for m, f in fns.items()}
        times = {m: [] for m in fns}
        for r in range(cfg["mean_reps"]):
            for m in (list(fns) if r % 2 == 0 else list(fns)[::-1]): times[m].append(_timeit(fns[m]))
        rel = ((outs["mean_fim_eigvalsh"] - outs["per_head_loop"]) / outs["per_head_loop"]).abs().max().item()
        res["mean_fim"] = dict(H=H, N=N, T=T, k=k, median_s={m: statistics.median(v) for m, v in times.items()},
                               samples_s=times, top_k_max_rel_diff=rel,
                               ratio_loop_over_engine=statistics.median(times["per_head_loop"]) /
                               statistics.median(times["mean_fim_eigvalsh"]))
        print(f"  threads={cfg['threads']} mean FIM {H}x{N}x{T}: engine "
              f"{res['mean_fim']['median_s']['mean_fim_eigvalsh'] * 1e3:.1f} ms, loop "
              f"{res['mean_fim']['median_s']['per_head_loop'] * 1e3:.1f} ms, top-{k} rel diff {rel:.1e}", flush=True)
    res["versions"] = dict(torch=torch.__version__, numpy=np.__version__, scipy=scipy.__version__)
    Path(out_path).write_text(json.dumps(res))


# ------------------------------------------------------------------------------------ parent process

def slope(Ts, ts):
    "Least-squares slope of log(t) against log(T)."
    x = [math.log(T) for T in Ts]; y = [math.log(t) for t in ts]
    mx, my = sum(x) / len(x), sum(y) / len(y)
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)


def summarise(runs):
    "Ratios of medians (dense / engine) and fitted slopes, per thread count."
    out = {}
    for run in runs:
        th = run["threads"]
        Ts = [r["T"] for r in run["per_T"]]
        pm = {m: [r["per_matrix_s"][m] for r in run["per_T"]] for m in METHODS}
        pairs = [("scipy", "scipy_eigvalsh", e) for e in ("kernel_top16", "kernel_top16_f32", "kernel_full", "secular_top16", "secular_full")]
        pairs += [("torch", "torch_eigvalsh", e) for e in ("kernel_full", "secular_full")]
        pairs += [("secular", "secular_top16", "kernel_top16"), ("secular", "secular_full", "kernel_full")]
        ratios = {str(r["T"]): {f"{d}/{e}": r["per_matrix_s"][dm] / r["per_matrix_s"][e] for d, dm, e in pairs}
                  for r in run["per_T"]}  # ratios of medians of time per matrix
        ratios_min = {str(r["T"]): {  # the same from the fastest sample of each method (noise only slows down)
            f"{d}/{e}": r["per_matrix_min_s"][dm] / r["per_matrix_min_s"][e] for d, dm, e in pairs}
            for r in run["per_T"]}
        out[str(th)] = dict(ratios=ratios, ratios_min=ratios_min, slopes={m: slope(Ts, pm[m]) for m in METHODS} if len(Ts) > 1 else {},
                            mean_fim_ratio=run["mean_fim"]["ratio_loop_over_engine"] if run["mean_fim"] else None,
                            layer_rows_per_s=run.get("layer", {}).get("rows_per_s"),
                            layer_interleaved_speedup=run.get("layer", {}).get("interleaved_speedup"))
    one = out.get("1", {}).get("layer_rows_per_s")
    for th, o in out.items():
        o["layer_throughput_across_processes"] = o["layer_rows_per_s"] / one if one and o["layer_rows_per_s"] else None
        # the reported figure: paired samples in one process where the child measured them, else across the children
        o["layer_throughput_vs_1_thread"] = o["layer_interleaved_speedup"] or o["layer_throughput_across_processes"]
    return out


def plot(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runs = result["runs"]
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4), squeeze=False)
    for ax, run in zip(axes[0], runs):
        Ts = [r["T"] for r in run["per_T"]]
        sl = result["summary"][str(run["threads"])]["slopes"]
        for m, st in zip(METHODS, ("o-", "s-", "^--", "v--", "^-", "<-", "v-")):
            ax.loglog(Ts, [r["per_matrix_s"][m] for r in run["per_T"]], st,
                      label=f"{m} (slope {sl.get(m, float('nan')):.2f})")
        ax.set_xlabel("T"); ax.set_ylabel("seconds per matrix (median)")
        ax.set_title(f"{run['threads']} thread(s)"); ax.legend(fontsize=8); ax.grid(True, which="both", alpha=0.3)
    fig.suptitle("FIM spectrum: time per matrix vs T (float64 unless marked; dashed: the torch path)")
    fig.tight_layout(); fig.savefig(path, dpi=110); plt.close(fig)


def machine_info():
    cpu = "unknown"
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return dict(platform=platform.platform(), python=platform.python_version(), cpu=cpu, cpu_count=os.cpu_count(),
                loadavg_start=os.getloadavg() if hasattr(os, "getloadavg") else None)


MEMORY_CHILD = """
import json, resource, sys, time, torch
torch.set_num_threads(int(sys.argv[2]))
from fim_attention.metrics import fim_metrics
B = int(sys.argv[1])
g = torch.Generator().manual_seed(0)
x = torch.empty(B, 12, 2048, 2048)                            # (B, H, T, T) float32: filled head by head
for b in range(B):
    for h in range(12): x[b, h] = torch.softmax(torch.randn(2048, 2048, generator=g) * 2, -1)
fim_metrics(torch.softmax(torch.randn(2, 8), -1))             # load the compiled kernel
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096
open("/proc/self/clear_refs", "w").write("5")                  # VmHWM := now: the peak of the call alone, not of the
base = rss(); t = time.time()                                  # input's filling or a cold kernel compile before it
m = fim_metrics(x, normalize=True)                            # every metric, eff_rank included: the full spectrum per row
dt = time.time() - t
peak = int([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]) * 1024
life = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps(dict(shape=list(x.shape), input_GB=x.numel() * 4 / 1e9, base_GB=base / 1e9, peak_GB=peak / 1e9,
                      above_input_GB=(peak - base) / 1e9, lifetime_peak_GB=life / 1e9, seconds=dt, threads=torch.get_num_threads())))
"""


def memory(args):
    "Peak resident memory above the input of fim_metrics on whole float32 layers, each in a fresh process."
    out = dict(command=" ".join(["python", "benchmarks/bench_spectrum.py", "--memory", "--threads", str((args.threads or [1])[0])]), date_utc=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
               machine=machine_info(), runs=[])
    th = (args.threads or [1])[0]
    for B in args.memory_batches:
        env = dict(os.environ, OMP_NUM_THREADS=str(th), PYTHONPATH=str(ROOT))
        r = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(B), str(th)], env=env, capture_output=True, text=True)
        rec = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else dict(B=B, returncode=r.returncode, stderr=r.stderr[-500:])
        print(rec, flush=True); out["runs"].append(rec)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_memory.json").write_text(json.dumps(out, indent=1))
    return out


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(json.loads(args.config), args.worker)
    if args.memory: return memory(args)
    cfg = dict(QUICK if args.quick else FULL)
    if args.Ts: cfg["Ts"] = args.Ts; cfg["rows"] = {T: cfg["rows"].get(T, max(2, min(64, 8192 // T))) for T in args.Ts}
    if args.reps: cfg["reps"] = cfg["mean_reps"] = args.reps
    threads = args.threads or cfg["threads"]
    info = machine_info()
    t0 = time.time()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for th in threads:
            env = dict(os.environ, OMP_NUM_THREADS=str(th), OPENBLAS_NUM_THREADS=str(th), MKL_NUM_THREADS=str(th),
                       PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
            child = dict(cfg, threads=th, rows={str(k): v for k, v in cfg["rows"].items()})
            part = Path(tmp) / f"threads{th}.json"
            subprocess.run([sys.executable, __file__, "--worker", str(part), "--config", json.dumps(child)],
                           env=env, check=True)
            runs.append(json.loads(part.read_text()))
    info["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    result = dict(command=" ".join([Path(sys.executable).name, "benchmarks/bench_spectrum.py"] + (argv or sys.argv[1:])),
                  quick=args.quick, date_utc=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t0)),
                  wall_s=time.time() - t0, machine=info, config={k: v for k, v in cfg.items() if k != "threads"},
                  runs=runs)
    result["summary"] = summarise(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "bench_spectrum_quick" if args.quick else "bench_spectrum"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    if not args.no_plot: plot(result, args.out / f"{stem}.png")

    print(f"\nratios of medians (dense / engine), float64; machine: {info['cpu']}, load {info['loadavg_start']}")
    for th, s in result["summary"].items():
        print(f" {th} thread(s)")
        for T, r in s["ratios"].items():
            print(f"  T={int(T):5d}  " + "  ".join(f"{k} {v:8.1f}x" for k, v in r.items()))
        print("  slopes of log(time per matrix) vs log(T): " + ", ".join(f"{m} {v:.2f}" for m, v in s["slopes"].items()))
        r1k = next((r for r in next(x for x in runs if str(x["threads"]) == th)["per_T"] if r["T"] == 1024), None)
        if r1k:
            print(f"  top-16 T=1024 per row: kernel {r1k['per_matrix_s']['kernel_top16'] * 1e6:.1f} us (float32 "
                  f"{r1k['per_matrix_s']['kernel_top16_f32'] * 1e6:.1f} us), torch path {r1k['per_matrix_s']['secular_top16'] * 1e6:.1f} us; "
                  f"limit estimate {LIMIT_US[0]}-{LIMIT_US[1]} us")
        if s["layer_rows_per_s"]:
            lc = result["config"]["layer"]
            print(f"  layer {lc['H']}x{lc['Tq']}x{lc['T']} top-16: {s['layer_rows_per_s']:.0f} rows/s, {s['layer_throughput_vs_1_thread']:.2f}x the 1-thread throughput"
                  + (f" (interleaved in one process; {s['layer_throughput_across_processes']:.2f}x across the two children)" if s["layer_interleaved_speedup"] else ""))
        if s["mean_fim_ratio"]:
            mf = next(r["mean_fim"] for r in runs if str(r["threads"]) == th)
            print(f"  mean FIM {mf['H']}x{mf['N']}x{mf['T']}: per-head loop / engine {s['mean_fim_ratio']:.1f}x, "
                  f"top-{mf['k']} max rel diff {mf['top_k_max_rel_diff']:.1e}")
    acc = [r["accuracy"] for run in runs for r in run["per_T"]]
    print(f" accuracy vs SciPy: top-16 max rel err {max(a['top16_max_rel_err_vs_scipy'] for a in acc):.1e}; "
          f"full spectrum max rel err (certified eigenvalues) {max(a['full_max_rel_err_vs_scipy_certified'] for a in acc):.1e}, "
          f"max abs err / lam1 {max(a['full_max_abs_err_over_lam1'] for a in acc):.1e}")
    print(f" wrote {args.out / (stem + '.json')}" + ("" if args.no_plot else f" and {stem}.png"))
    return result


if __name__ == "__main__":
    main()
