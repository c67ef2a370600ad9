#!/usr/bin/env python
"""Test the built docs site (`_site/`) in headless Chromium, page by page. Exit 1 on any failure.

Serves `_site/` on 127.0.0.1 (a free port), opens every page in Debian's `chromium` driven over the
DevTools protocol, and checks on each page:

- math is typeset: every `.arithmatex` element holds a rendered `mjx-container`, MathJax reported no TeX
  error, and no raw `$$`, `\\(`, `\\[`, `\\begin{` or `$..\\..$` (TeX between dollars) is left in visible text outside code;
- every image loaded (`naturalWidth > 0`);
- no JavaScript error (uncaught exceptions, console errors, browser log errors);
- no request left 127.0.0.1 (all requests observed, pages and workers; others are refused by the
  browser, so an offline site is what is tested), and no local request failed or returned >= 400;

plus, before the browser: every resource the HTML loads (script, stylesheet, image, font) is local
and every internal link (page and #anchor) resolves; and after: the site's search finds a known
API name (`--search`, default `fim_eigvalsh`) and links to a page that has it as an anchor.
One full-page screenshot per page goes to `_docs_check/`.

Usage: python tools/docs_check.py [--site _site] [--out _docs_check] [--search NAME] [--pages GLOB]
Chromium: $CHROMIUM, else `chromium` on PATH; installed with apt-get if missing (as root).
"""
import argparse
import base64
import fnmatch
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
SHOT_MAX_HEIGHT = 12000  # px; longer pages are cut there in the screenshot (the checks cover all of it)


def log(*a):
    print("[docs_check]", *a, flush=True)


# ----------------------------------------------------------------------------------------------
# Static checks over the HTML files
# ----------------------------------------------------------------------------------------------
class _Scan(HTMLParser):
    LOADS = {("script", "src"), ("img", "src"), ("iframe", "src"), ("source", "src"), ("video", "src"),
             ("audio", "src"), ("embed", "src"), ("object", "data"), ("image", "href"), ("use", "href")}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids, self.links, self.loads = set(), [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for k in ("id", "name"):
            if a.get(k):
                self.ids.add(a[k])
        for t, k in self.LOADS:
            if tag == t and a.get(k):
                self.loads.append((tag, a[k]))
        if tag == "link" and a.get("href"):
            rel = (a.get("rel") or "").lower()
            if any(r in rel for r in ("stylesheet", "preload", "icon", "manifest", "modulepreload", "prefetch")):
                self.loads.append(("link", a["href"]))
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        if a.get("style") and re.search(r"url\(\s*['\"]?(https?:)?//", a["style"]):
            self.loads.append((tag + "[style]", a["style"]))


def _external(url):
    u = urllib.parse.urlsplit(url)
    if u.scheme in ("data", "blob", "about", "javascript", "mailto"):
        return False
    if u.scheme in ("http", "https", "ws", "wss") or url.startswith("//"):
        return u.hostname not in LOCAL_HOSTS
    return False


def static_checks(site: Path):
    "External resources in HTML/CSS and broken internal links; returns a list of failures."
    fails, scans = [], {}
    for f in sorted(site.rglob("*.html")):
        s = _Scan()
        s.feed(f.read_text(encoding="utf-8", errors="replace"))
        scans[f] = s
    for f, s in scans.items():
        rel = f.relative_to(site).as_posix()
        for tag, url in s.loads:
            if _external(url):
                fails.append(f"{rel}: <{tag}> loads from the network: {url[:120]}")
        if f.name == "404.html":
            continue  # its links are written for the site's root, wherever the 404 is shown
        for href in s.links:
            u = urllib.parse.urlsplit(href)
            if u.scheme or href.startswith("//") or not (u.path or u.fragment):
                continue
            target = (f.parent / urllib.parse.unquote(u.path)).resolve() if u.path else f
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                fails.append(f"{rel}: broken link {href}")
                continue
            frag = urllib.parse.unquote(u.fragment)
            if frag and target.suffix == ".html" and target in scans and frag not in scans[target].ids:
                fails.append(f"{rel}: link {href}: no anchor #{frag} in {target.relative_to(site).as_posix()}")
    fails = list(dict.fromkeys(fails))
    for f in sorted(site.rglob("*.css")):
        for m in re.finditer(r"(?:@import\s+|url\()\s*['\"]?((?:https?:)?//[^'\")\s]+)", f.read_text(errors="replace")):
            fails.append(f"{f.relative_to(site).as_posix()}: CSS loads from the network: {m.group(1)}")
    return fails, scans


# ----------------------------------------------------------------------------------------------
# Chromium over the DevTools protocol
# ----------------------------------------------------------------------------------------------
def find_chromium():
    for c in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if c and shutil.which(c):
            return shutil.which(c)
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log("chromium not found: apt-get install chromium")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"], check=True, env=env)
        if shutil.which("chromium"):
            return shutil.which("chromium")
    sys.exit("no chromium: install Debian's `chromium` or set $CHROMIUM")


class CDP:
    "A minimal synchronous DevTools client over one browser-level websocket (flattened sessions)."

    def __init__(self, ws_url, on_event):
        import websocket  # websocket-client
        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True, enable_multithread=True)
        self.on_event = on_event
        self.next_id = 0
        self.replies = {}

    def post(self, method, params=None, session=None):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        return self.next_id

    def call(self, method, params=None, session=None, timeout=60):
        i = self.post(method, params, session)
        end = time.time() + timeout
        while i not in self.replies:
            if time.time() > end:
                raise TimeoutError(f"{method}: no reply in {timeout}s")
            self.pump_one(end - time.time())
        r = self.replies.pop(i)
        if "error" in r:
            raise RuntimeError(f"{method}: {r['error'].get('message')} {r['error'].get('data', '')}")
        return r.get("result", {})

    def pump_one(self, timeout):
        import websocket
        self.ws.settimeout(max(0.01, timeout))
        try:
            m = json.loads(self.ws.recv())
        except websocket.WebSocketTimeoutException:
            return
        if "id" in m:
            self.replies[m["id"]] = m
        else:
            self.on_event(m)

    def pump(self, seconds):
        end = time.time() + seconds
        while time.time() < end:
            self.pump_one(end - time.time())

    def wait_for(self, cond, timeout):
        end = time.time() + timeout
        while not cond():
            if time.time() > end:
                return False
            self.pump_one(min(0.2, end - time.time()))
        return True


class Browser:
    def __init__(self, exe, port):
        self.tmp = tempfile.mkdtemp(prefix="docs_check_chromium_")
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
                 "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "--disable-extensions",
                 "--disable-features=Translate,MediaRouter,OptimizationHints",
                 # the network is this site only: names other than the loopback do not resolve
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
                 f"--user-data-dir={self.tmp}", "--remote-debugging-port=0", "--window-size=1280,900",
                 "about:blank"]
        self.proc = subprocess.Popen([exe] + flags, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        portfile = Path(self.tmp) / "DevToolsActivePort"
        end = time.time() + 60
        while not (portfile.exists() and len(portfile.read_text().split()) >= 2):
            if self.proc.poll() is not None or time.time() > end:
                err = self.proc.stderr.read().decode(errors="replace")[-2000:] if self.proc.poll() is not None else ""
                self.close()
                sys.exit(f"chromium did not start: {err}")
            time.sleep(0.1)
        dport, path = portfile.read_text().split()[:2]
        self.page_port = port
        self.sessions = set()       # sessions whose events count (the page and its workers)
        self.events = []
        self.cdp = CDP(f"ws://127.0.0.1:{dport}{path}", self._event)
        tid = self.cdp.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.cdp.call("Target.attachToTarget", {"targetId": tid, "flatten": True})["sessionId"]
        self.sessions.add(self.session)
        s = self.session
        for m in ("Page.enable", "Runtime.enable", "Log.enable", "Network.enable"):
            self.cdp.call(m, session=s)
        self.cdp.call("Network.setCacheDisabled", {"cacheDisabled": True}, session=s)
        self.cdp.call("Fetch.enable", {"patterns": [{"urlPattern": "*"}]}, session=s)
        self.cdp.call("Target.setAutoAttach", {"autoAttach": True, "waitForDebuggerOnStart": True, "flatten": True},
                      session=s)
        self.cdp.call("Emulation.setDeviceMetricsOverride",
                      {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session=s)

    def _event(self, m):
        method, p, sid = m.get("method"), m.get("params", {}), m.get("sessionId")
        if method == "Target.attachedToTarget":
            # a worker of the page (the search index lives in one): watch its network and errors too
            ws = p["sessionId"]
            self.sessions.add(ws)
            for meth in ("Network.enable", "Runtime.enable", "Log.enable"):
                self.cdp.post(meth, session=ws)
            self.cdp.post("Runtime.runIfWaitingForDebugger", session=ws)
            return
        if method == "Fetch.requestPaused":
            url = p["request"]["url"]
            if _external(url):
                self.cdp.post("Fetch.failRequest", {"requestId": p["requestId"], "errorReason": "BlockedByClient"},
                              session=sid)
            else:
                self.cdp.post("Fetch.continueRequest", {"requestId": p["requestId"]}, session=sid)
            return
        if sid in self.sessions:
            self.events.append(m)

    def evaluate(self, expr, timeout=60):
        r = self.cdp.call("Runtime.evaluate", {"expression": expr, "awaitPromise": True, "returnByValue": True,
                                               "timeout": timeout * 1000}, session=self.session, timeout=timeout + 5)
        if "exceptionDetails" in r:
            raise RuntimeError(f"evaluate failed: {r['exceptionDetails'].get('text')} "
                               f"{r['exceptionDetails'].get('exception', {}).get('description', '')[:300]}")
        return r["result"].get("value")

    def goto(self, url, timeout=60):
        self.events.clear()
        r = self.cdp.call("Page.navigate", {"url": url}, session=self.session)
        if r.get("errorText"):
            raise RuntimeError(f"{url}: {r['errorText']}")
        if not self.cdp.wait_for(lambda: any(e.get("method") == "Page.loadEventFired" for e in self.events), timeout):
            raise TimeoutError(f"{url}: no load event in {timeout}s")

    def settle(self, quiet=0.5, timeout=15):
        "Wait until no request has been in flight for `quiet` seconds."
        end = time.time() + timeout
        while time.time() < end:
            pending = set()
            for e in self.events:
                m, p = e.get("method"), e.get("params", {})
                if m == "Network.requestWillBeSent":
                    pending.add(p["requestId"])
                elif m in ("Network.loadingFinished", "Network.loadingFailed"):
                    pending.discard(p["requestId"])
            n = len(self.events)
            self.cdp.pump(quiet)
            if not pending and len(self.events) == n:
                return True
        return False

    def screenshot(self, path: Path, height):
        h = max(300, min(int(height), SHOT_MAX_HEIGHT))
        r = self.cdp.call("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": 1280, "height": h, "scale": 1}}, session=self.session, timeout=120)
        path.write_bytes(base64.b64decode(r["data"]))

    def problems(self, port):
        "Failures among the events recorded since the last navigation."
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                desc = d.get("exception", {}).get("description") or d.get("text")
                out.append(f"JS exception: {str(desc)[:300]} ({d.get('url', '')}:{d.get('lineNumber')})")
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                msg = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
                out.append(f"console.{p['type']}: {msg[:300]}")
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                en = p["entry"]
                out.append(f"browser log error: {en.get('text', '')[:200]} {en.get('url', '')}")
            elif m == "Network.requestWillBeSent":
                url = p["request"]["url"]
                if _external(url):
                    out.append(f"request to the network: {url[:160]}")
            elif m == "Network.responseReceived":
                st = p["response"].get("status", 0)
                if st >= 400:
                    out.append(f"HTTP {st}: {p['response']['url'][:160]}")
            elif m == "Network.loadingFailed" and not p.get("canceled"):
                out.append(f"load failed ({p.get('errorText')}, {p.get('blockedReason', '')}): request {p['requestId']}")
        return list(dict.fromkeys(out))

    def close(self):
        try:
            if getattr(self, "proc", None) and self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


# What each page reports about itself once MathJax is done.
PAGE_PROBE = r"""
(async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  if (document.fonts) { await document.fonts.ready; }
  await Promise.all([...document.images].map(i => i.decode().catch(() => null)));
  const visible = e => !e.checkVisibility || e.checkVisibility({visibilityProperty: true, opacityProperty: true});
  const skip = /^(PRE|CODE|SCRIPT|STYLE|TEXTAREA|NOSCRIPT|MJX-CONTAINER|MJX-ASSISTIVE-MML|SVG|MATH)$/i;
  const raw = [];
  const rawTeX = /\$\$|\\\(|\\\)|\\\[|\\\]|\\begin\{|\$[^$\n]*[\\^_{}][^$\n]*\$/;
  const w = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT, {acceptNode(n) {
    for (let e = n.parentElement; e; e = e.parentElement) if (skip.test(e.tagName)) return NodeFilter.FILTER_REJECT;
    return NodeFilter.FILTER_ACCEPT; }});
  for (let n; (n = w.nextNode());) {
    const t = n.textContent;
    if (rawTeX.test(t) && visible(n.parentElement)) raw.push(t.trim().slice(0, 120));
  }
  const math = [...document.querySelectorAll('.arithmatex')];
  return {
    title: document.title,
    math: math.length,
    typeset: math.filter(e => e.querySelector('mjx-container')).length,
    mjx: document.querySelectorAll('mjx-container').length,
    untypeset: math.filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.slice(0, 80)),
    texErrors: [...document.querySelectorAll('mjx-merror, [data-mjx-error]')].map(
      e => (e.getAttribute('data-mjx-error') || e.textContent).slice(0, 120)),
    images: [...document.images].map(i => ({src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0,
                                             w: i.naturalWidth})),
    raw: raw,
    mathjax: !!(window.MathJax && MathJax.version),
    height: Math.max(document.documentElement.scrollHeight, document.body.scrollHeight),
  };
})()
"""

SEARCH_PROBE = r"""
(async (q) => {
  const input = document.querySelector('input.md-search__input');
  if (!input) return {error: 'no search box on the page'};
  const toggle = document.getElementById('__search');
  if (toggle) { toggle.checked = true; toggle.dispatchEvent(new Event('change')); }
  input.focus();
  return {focused: document.activeElement === input};
})
"""

SEARCH_RESULTS = r"""
(() => {
  const meta = document.querySelector('.md-search-result__meta');
  const links = [...document.querySelectorAll('.md-search-result__list a.md-search-result__link')];
  return {meta: meta ? meta.textContent.trim() : '',
          results: links.map(a => ({href: a.href, text: a.textContent.replace(/\s+/g, ' ').trim().slice(0, 200)}))};
})()
"""


def serve(site: Path):
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".js": "text/javascript", ".woff": "font/woff", ".woff2": "font/woff2", ".json": "application/json"}


def check_search(br, base, name, shots):
    """Type `name` into the search box like a reader; a result must link to the API entry `#name`
    (the anchor of its show_doc heading), and that page must hold the anchor and mention the name."""
    # Material's search worker sometimes never answers the first query after many page loads in one
    # browser (seen in CI after 26 pages; the same site answers at once in a fresh browser): reload the
    # page and type again, up to 3 times, before calling it a failure.
    hit, res, end = None, {}, time.time() + 45
    for attempt in range(3):
        br.goto(base + f"index.html?search_attempt={attempt}")
        br.settle()
        r = br.evaluate(SEARCH_PROBE + "()")
        if r.get("error"):
            return [f"search: {r['error']}"], None
        br.cdp.call("Input.insertText", {"text": name}, session=br.session)
        tries_end = min(end, time.time() + 15)
        while time.time() < tries_end and hit is None:
            br.cdp.pump(0.3)
            res = br.evaluate(SEARCH_RESULTS)
            hit = next((x["href"] for x in res["results"]
                        if urllib.parse.unquote(urllib.parse.urlsplit(x["href"]).fragment).lower() == name.lower()), None)
        if hit is not None or res.get("results") or time.time() >= end:
            break  # found, or the search answered without the entry: a real failure, not a stuck worker
        log(f"search attempt {attempt + 1}: no answer from the search worker ({res.get('meta')!r}); reloading")
    br.cdp.pump(0.5)  # let the results typeset before the picture
    br.screenshot(shots / "search.png", 900)
    if hit is None:
        shown = ", ".join(x["href"].replace(base, "") for x in res.get("results", [])[:6])
        return [f"search: no result links to the API entry #{name} in 3 attempts "
                f"({res.get('meta')!r}; links: {shown or 'none'})"], None
    br.goto(hit)
    br.settle()
    frag = urllib.parse.unquote(urllib.parse.urlsplit(hit).fragment)
    ok = br.evaluate(f"""(() => ({{anchor: !!document.getElementById({json.dumps(frag)}),
                                   text: document.body.innerText.includes({json.dumps(name)})}}))()""")
    errs = []
    if not ok["anchor"]:
        errs.append(f"search: {hit} has no element #{frag}")
    if not ok["text"]:
        errs.append(f"search: {hit} does not mention {name!r}")
    return errs, hit


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--site", default=str(ROOT / "_site"))
    ap.add_argument("--out", default=str(ROOT / "_docs_check"), help="screenshots go here")
    ap.add_argument("--search", default="fim_eigvalsh", help="an API name the site's search must find")
    ap.add_argument("--pages", default="*.html", help="only pages matching this glob (default: all)")
    args = ap.parse_args()
    t0 = time.time()
    site = Path(args.site).resolve()
    if not (site / "index.html").exists():
        sys.exit(f"{site}/index.html missing: run `make docs` first")
    shots = Path(args.out)
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)

    failures = defaultdict(list)
    static_fails, scans = static_checks(site)
    for f in static_fails:
        failures["(static)"].append(f)
    pages = sorted(p.relative_to(site).as_posix() for p in scans
                   if p.name != "404.html" and not p.relative_to(site).as_posix().startswith("assets/")
                   and fnmatch.fnmatch(p.relative_to(site).as_posix(), args.pages))
    pages.sort(key=lambda p: (p != "index.html", p.startswith("src/"), p))
    log(f"static checks: {len(scans)} HTML files, {len(static_fails)} problems; browsing {len(pages)} pages")

    httpd = serve(site)
    port = httpd.server_address[1]
    base = f"http://127.0.0.1:{port}/"
    br = Browser(find_chromium(), port)
    try:
        ver = br.cdp.call("Browser.getVersion")["product"]
        log(f"{ver} on {base}")
        for page in pages:
            t = time.time()
            try:
                br.goto(base + page)
                info = br.evaluate(PAGE_PROBE)
                br.settle()
                errs = br.problems(port)
                if info["math"] and not info["mathjax"]:
                    errs.append("page has math but MathJax did not load")
                if info["untypeset"]:
                    errs.append(f"{len(info['untypeset'])} formulas not typeset, e.g. {info['untypeset'][0]!r}")
                for e in info["texErrors"][:5]:
                    errs.append(f"TeX error: {e}")
                for s in info["raw"][:5]:
                    errs.append(f"raw TeX in visible text: {s!r}")
                bad_img = [i["src"] for i in info["images"] if not i["ok"]]
                for s in bad_img[:5]:
                    errs.append(f"image not loaded: {s}")
                shot = shots / (page.replace("/", "__").removesuffix(".html") + ".png")
                br.screenshot(shot, info["height"])
            except Exception as e:  # a page that hangs or breaks the probe is a failure, not a crash
                errs, info = [f"{type(e).__name__}: {e}"], {"math": 0, "typeset": 0, "images": []}
            failures[page].extend(errs)
            n_img = len(info["images"])
            log(f"{'FAIL' if errs else 'ok  '} {page:40s} math {info['typeset']}/{info['math']}  "
                f"images {n_img - len([i for i in info['images'] if not i['ok']])}/{n_img}  {time.time() - t:.1f}s")
            for e in errs:
                log(f"     - {e}")
        if args.search:
            errs, href = check_search(br, base, args.search, shots)
            failures[f"search {args.search!r}"].extend(errs)
            log(f"{'FAIL' if errs else 'ok  '} search {args.search!r}" + (f" -> {href.replace(base, '')}" if href else ""))
            for e in errs:
                log(f"     - {e}")
    finally:
        br.close()
        httpd.shutdown()

    bad = {k: v for k, v in failures.items() if v}
    n = sum(len(v) for v in bad.values())
    log(f"{len(pages)} pages, {len(list(shots.glob('*.png')))} screenshots in {shots}, {time.time() - t0:.1f}s")
    if bad:
        print(f"\nDOCS CHECK FAILED: {n} problems", file=sys.stderr)
        for k, v in bad.items():
            print(f"  {k}:", file=sys.stderr)
            for e in v:
                print(f"    - {e}", file=sys.stderr)
        sys.exit(1)
    print("docs check passed")


if __name__ == "__main__":
    main()
