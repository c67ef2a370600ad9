#!/usr/bin/env python
"""Open a chapter in JupyterLab in headless Chromium, run a cell in the server's kernel, screenshot it. Exit 1 on failure.

Starts `jupyter lab` on 127.0.0.1 (a free port, a random token; as root with `--allow-root`) on a temporary
copy of the chapter, with temporary runtime, config, data, settings, workspace and IPython folders, so that
the user's Jupyter state and the notebooks in `nbs/` are never touched (nothing is saved back). Then, in
Debian's `chromium` driven by playwright (offline: every request that leaves 127.0.0.1 is refused):

- the notebook renders with its stored outputs: every stored `image/png` output is shown as a loaded
  image, the first line of every stored stream output appears in the page, and its Markdown math is typeset;
- a new cell, inserted below the first stored plot, runs in the server's kernel (the project's venv) and
  its output appears: `fim` of the row (1/2, 1/2) at tau = 1, which is [[1/4, -1/4], [-1/4, 1/4]];
- no JavaScript error and no request to the network;
- a screenshot of the chapter (the stored plot and the fresh output) goes to `--out`, and to `--publish`
  when given (the copy the README shows);
- the server, its kernel and the browser are shut down, and no process started here is left running.

Usage: python tools/lab_check.py [--notebook nbs/00_derivation.ipynb] [--out _docs_check/lab] [--publish PATH]
"""
import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docs_check import _external, find_chromium, launch_chromium  # noqa: E402  (one way to start the browser)

ROOT = Path(__file__).resolve().parent.parent
# The cell the check types and runs; its output must contain EXPECTED (fim of p = (1/2, 1/2), tau = 1).
RUN_CODE = ("import sys, torch\nfrom fim_attention.derivation import fim\n"
            "print('kernel of', sys.prefix)\nprint(fim(torch.tensor([0.5, 0.5]), tau=1.0).tolist())")
EXPECTED = "[[0.25, -0.25], [-0.25, 0.25]]"
# JupyterLab settings for the check: no news or update checks (network), no autosave, every cell in the DOM,
# and the default kernel started without asking (the chapters, cleaned by nbdev, name no kernelspec).
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none",
                                                                  "autoStartDefaultKernel": True},
}


def log(*a):
    print("[lab_check]", *a, flush=True)


def free_port():
    "A TCP port on 127.0.0.1 that nobody listens on now."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stored_outputs(nb: dict):
    "What the file says the page must show: (first lines of stream outputs, number of PNG outputs, has math)."
    lines, pngs = [], 0
    for c in nb["cells"]:
        for o in c.get("outputs", []) if c["cell_type"] == "code" else []:
            if o.get("output_type") == "stream":
                first = next((ln.strip() for ln in "".join(o.get("text", "")).splitlines() if ln.strip()), None)
                if first:
                    lines.append(first)
            if "image/png" in o.get("data", {}):
                pngs += 1
    math = any(c["cell_type"] == "markdown" and "$" in "".join(c["source"]) for c in nb["cells"])
    return list(dict.fromkeys(lines)), pngs, math


def first_plot_cell(nb: dict):
    "Index of the first cell with a stored PNG output (the new cell goes below it), else the last cell."
    for i, c in enumerate(nb["cells"]):
        if any("image/png" in o.get("data", {}) for o in c.get("outputs", [])):
            return i
    return len(nb["cells"]) - 1


def lab_command(port, token, root_dir, python=sys.executable, is_root=None):
    "The `jupyter lab` command line: loopback only, no browser, no network checks; `--allow-root` as root."
    is_root = os.geteuid() == 0 if is_root is None else is_root
    return [python, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
            "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root_dir}",
            "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly",
            "--ServerApp.shutdown_no_activity_timeout=600", "--MappingKernelManager.cull_idle_timeout=0"] + (
        ["--allow-root"] if is_root else [])


def lab_env(tmp: Path):
    "Environment of the server: every folder Jupyter, IPython and matplotlib write to lives under `tmp`."
    dirs = {"JUPYTER_RUNTIME_DIR": "runtime", "JUPYTER_CONFIG_DIR": "config", "JUPYTER_DATA_DIR": "data",
            "JUPYTERLAB_SETTINGS_DIR": "lab-settings", "JUPYTERLAB_WORKSPACES_DIR": "lab-workspaces",
            "IPYTHONDIR": "ipython", "MPLCONFIGDIR": "mpl"}
    env = dict(os.environ, JUPYTER_PLATFORM_DIRS="1", PYDEVD_DISABLE_FILE_VALIDATION="1")
    for k, d in dirs.items():
        (tmp / d).mkdir(parents=True, exist_ok=True)
        env[k] = str(tmp / d)
    for rel, value in LAB_SETTINGS.items():
        f = tmp / "lab-settings" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(value))
    return env


def _get(url, token, timeout=5, method="GET"):
    req = urllib.request.Request(url, method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


def wait_ready(base, token, proc, timeout=90):
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {proc.returncode} before answering")
        try:
            if _get(base + "api/status", token)[0] == 200:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise TimeoutError(f"jupyter lab did not answer on {base} in {timeout}s")


def processes_mentioning(text):
    "Pids (not this one) whose command line or environment mentions `text`."
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            blob = (d / "cmdline").read_bytes() + b"\0" + (d / "environ").read_bytes()
        except OSError:
            continue
        if text.encode() in blob:
            out.append(int(d.name))
    return out


def stop_server(proc, base, token):
    "Ask the server to shut down (it stops its kernels first); terminate its process group if it does not."
    try:
        _get(base + "api/shutdown", token, method="POST")
    except Exception as e:  # noqa: BLE001  (a server that does not answer is terminated below)
        log(f"api/shutdown: {e}")
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        log("server did not stop in 30 s: SIGTERM")
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def check_in_browser(pw, exe, base, token, nb_name, nb, shot: Path):
    "Open the notebook, check stored outputs, run a new cell; returns (failures, facts)."
    lines, pngs, has_math = stored_outputs(nb)
    fails, facts = [], {}
    browser = launch_chromium(pw, exe)
    try:
        ctx = browser.new_context(viewport={"width": 1400, "height": 1000}, device_scale_factor=1)
        ctx.route("**/*", lambda route: route.abort("blockedbyclient") if _external(route.request.url)
                  else route.continue_())
        errors = []
        ctx.on("request", lambda r: _external(r.url) and errors.append(f"request to the network: {r.url[:160]}"))
        page = ctx.new_page()
        page.on("pageerror", lambda e: errors.append(f"JS exception: {str(e.message or e)[:300]}"))
        page.goto(f"{base}lab/tree/{nb_name}?token={token}", wait_until="load", timeout=90_000)
        cells = page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell")
        cells.first.wait_for(timeout=90_000)
        page.wait_for_function("n => document.querySelectorAll('.jp-NotebookPanel .jp-Cell').length >= n",
                               arg=len(nb["cells"]), timeout=60_000)
        # the kernel the server started for the notebook: idle once it is up
        page.locator(".jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status='idle'], "
                     ".jp-NotebookPanel [data-status='idle']").first.wait_for(timeout=120_000)
        facts["cells"] = cells.count()
        # stored outputs: images loaded, stream text present, math typeset
        page.wait_for_function("""n => [...document.querySelectorAll('.jp-NotebookPanel .jp-OutputArea-output img')]
                                  .filter(i => i.complete && i.naturalWidth > 0).length >= n""", arg=pngs,
                               timeout=60_000)
        imgs = page.evaluate("""() => [...document.querySelectorAll('.jp-NotebookPanel .jp-OutputArea-output img')]
                                .map(i => i.complete && i.naturalWidth > 0)""")
        facts["images"] = f"{sum(imgs)}/{pngs}"
        if sum(imgs) < pngs:
            fails.append(f"{pngs} stored PNG outputs, {sum(imgs)} shown")
        text = page.locator(".jp-NotebookPanel .jp-Notebook").inner_text()
        missing = [ln for ln in lines if ln not in text]
        facts["stream outputs"] = f"{len(lines) - len(missing)}/{len(lines)}"
        fails += [f"stored output not shown: {ln[:120]!r}" for ln in missing[:5]]
        if has_math:
            try:
                page.wait_for_selector(".jp-NotebookPanel .jp-MarkdownOutput mjx-container", timeout=60_000)
                facts["math"] = page.locator(".jp-NotebookPanel .jp-MarkdownOutput mjx-container").count()
            except Exception:  # noqa: BLE001
                fails.append("Markdown has math but nothing was typeset")
        if not lines and not pngs:
            fails.append(f"{nb_name} has no stored stream or PNG output to check")
        # a new cell below the first plot, typed and run like a reader would (Escape, B, Enter, Ctrl+Enter)
        k = first_plot_cell(nb)
        cells.nth(k).locator(".jp-InputPrompt").first.click()
        page.keyboard.press("Escape")
        page.keyboard.press("b")
        new = cells.nth(k + 1)
        new.locator(".cm-content").wait_for(timeout=10_000)
        page.keyboard.press("Enter")
        page.keyboard.insert_text(RUN_CODE)
        page.keyboard.press("Control+Enter")
        t = time.time()
        out = new.locator(".jp-OutputArea-output")
        try:
            out.filter(has_text=EXPECTED).first.wait_for(timeout=120_000)
            facts["run"] = f"{time.time() - t:.1f}s"
            got = out.first.inner_text()
            if sys.prefix not in got:
                fails.append(f"the kernel is not this environment's ({sys.prefix}): {got[:200]!r}")
        except Exception:  # noqa: BLE001
            got = out.all_inner_texts() if out.count() else []
            fails.append(f"the new cell's output never showed {EXPECTED!r}: {got!r}"[:400])
        page.evaluate("el => el.scrollIntoView({block: 'end'})", new.element_handle())
        page.mouse.move(1395, 500)  # off the cells: no hover highlight in the picture
        page.wait_for_timeout(500)
        page.screenshot(path=str(shot))
        fails += list(dict.fromkeys(errors))
        ctx.close()
    finally:
        browser.close()
    return fails, facts


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--notebook", default=str(ROOT / "nbs" / "00_derivation.ipynb"))
    ap.add_argument("--out", default=str(ROOT / "_docs_check" / "lab"), help="the screenshot goes here")
    ap.add_argument("--publish", default=None, help="also copy the screenshot to this path (the one the docs show)")
    args = ap.parse_args()
    t0 = time.time()
    src = Path(args.notebook).resolve()
    nb = json.loads(src.read_text(encoding="utf-8"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shot = out / "jupyterlab.png"
    shot.unlink(missing_ok=True)

    exe = find_chromium()
    tmp = Path(tempfile.mkdtemp(prefix="lab_check_"))
    work = tmp / "notebooks"
    work.mkdir()
    shutil.copy2(src, work / src.name)  # a copy: nothing the check does can reach nbs/
    if (src.parent / "data").is_dir():  # chapters read their stored data relative to themselves
        os.symlink(src.parent / "data", work / "data")
    port, token = free_port(), secrets.token_hex(16)
    base = f"http://127.0.0.1:{port}/"
    server_log = (tmp / "server.log").open("wb")
    proc = subprocess.Popen(lab_command(port, token, work), env=lab_env(tmp), cwd=work, stdin=subprocess.DEVNULL,
                            stdout=server_log, stderr=subprocess.STDOUT, start_new_session=True)
    fails, facts = [], {}
    try:
        wait_ready(base, token, proc)
        ver = json.loads(_get(base + "api", token)[1]).get("version")
        log(f"jupyter_server {ver} on {base} (token, temp dirs under {tmp}); chapter {src.name}")
        from playwright.sync_api import sync_playwright
        with sync_playwright() as pw:
            fails, facts = check_in_browser(pw, exe, base, token, src.name, nb, shot)
    except Exception as e:  # noqa: BLE001  (reported as a failure, after everything is shut down)
        fails.append(f"{type(e).__name__}: {str(e)[:500]}")
    finally:
        stop_server(proc, base, token)
        server_log.close()
        time.sleep(0.5)
        left = processes_mentioning(str(tmp))
        if left:
            fails.append(f"processes left running: {left}")
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        server_text = (tmp / "server.log").read_text(errors="replace")
        shutil.rmtree(tmp, ignore_errors=True)

    log("  ".join(f"{k} {v}" for k, v in facts.items()) + f"  server exit {proc.returncode}  {time.time() - t0:.1f}s")
    if shot.exists():
        log(f"screenshot {shot}")
        if args.publish and not fails:
            Path(args.publish).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(shot, args.publish)
            log(f"published {args.publish}")
    if fails:
        print("\nJUPYTERLAB CHECK FAILED:", file=sys.stderr)
        for f in fails:
            print(f"  - {f}", file=sys.stderr)
        print("server log (last lines):\n  " + "\n  ".join(server_text.splitlines()[-25:]), file=sys.stderr)
        sys.exit(1)
    print("jupyterlab check passed")


if __name__ == "__main__":
    main()
