#!/usr/bin/env python
"""Test the built docs site (`_site/`) in headless Chromium, page by page. Exit 1 on any failure.

Serves `_site/` on 127.0.0.1 (a free port), opens every page in Debian's `chromium` driven by playwright
(no `playwright install`: the system browser, offline), and checks on each page:

- math is typeset: every `.arithmatex` element holds a rendered `mjx-container`, MathJax reported no TeX
  error, and no raw `$$`, `\\(`, `\\[`, `\\begin{` or `$..\\..$` (TeX between dollars) is left in visible text outside code;
- every image loaded (`naturalWidth > 0`);
- no JavaScript error (uncaught exceptions, console errors, browser log errors; the page's and its workers');
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
import fnmatch
import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
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
# Chromium through playwright
# ----------------------------------------------------------------------------------------------
def find_chromium():
    "Debian's chromium ($CHROMIUM, else on PATH); installed with apt-get when missing and run as root."
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


# Flags for a browser that talks to nobody but 127.0.0.1: no background fetches, no updates, no sync, no QUIC.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
                  "--disable-extensions", "--disable-features=Translate,MediaRouter,OptimizationHints",
                  # the network is this machine only: names other than the loopback do not resolve
                  "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"]


def launch_chromium(pw, exe=None, **kw):
    """Launch Debian's chromium through playwright (`sync_playwright()` as `pw`), offline, no `playwright install`.

    The profile is an empty `--user-data-dir` that playwright creates in a temp folder and removes on close."""
    return pw.chromium.launch(executable_path=exe or find_chromium(), headless=True, args=CHROMIUM_FLAGS,
                              chromium_sandbox=False, **kw)


class Browser:
    "One page in a fresh context that records, per navigation, what went wrong (the page and its workers)."

    def __init__(self, pw, exe):
        self.browser = launch_chromium(pw, exe)
        self.context = self.browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1,
                                                service_workers="block")
        # Every request goes through here, the page's and its workers' (routing also turns off the HTTP cache):
        # anything not on 127.0.0.1 is refused, so what is tested is the site offline.
        self.context.route("**/*", lambda route: route.abort("blockedbyclient") if _external(route.request.url)
                           else route.continue_())
        self.events = []          # problems since the last navigation
        self.inflight = set()
        self.context.on("request", self._request)
        self.context.on("response", self._response)
        self.context.on("requestfinished", lambda r: self.inflight.discard(r))
        self.context.on("requestfailed", self._failed)
        self.page = self.context.new_page()
        self.page.on("pageerror", self._pageerror)   # uncaught exceptions, the page's and its workers'
        self.page.on("console", self._console)       # console.error/assert, and the browser's log errors

    @property
    def version(self):
        return f"Chromium/{self.browser.version}"

    def _request(self, r):
        self.inflight.add(r)
        if _external(r.url):
            self.events.append(f"request to the network: {r.url[:160]}")

    def _response(self, resp):
        if resp.status >= 400:
            self.events.append(f"HTTP {resp.status}: {resp.url[:160]}")

    def _failed(self, r):
        self.inflight.discard(r)
        err = r.failure or ""
        if "ERR_ABORTED" in err and not _external(r.url):
            return  # a request the page itself cancelled (navigating away), not a failure
        self.events.append(f"load failed ({err}): {r.url[:160]}")

    def _pageerror(self, e):
        loc = (e.stack or "").strip().splitlines()[1:2]
        self.events.append(f"JS exception: {str(e.message or e)[:300]} ({loc[0].strip() if loc else ''})")

    def _console(self, m):
        if m.type not in ("error", "assert"):
            return
        if not m.args:   # playwright hands the browser's own log entries (Log.entryAdded) over as console messages
            self.events.append(f"browser log error: {m.text[:200]} {m.location.get('url', '')}")
        else:
            self.events.append(f"console.{m.type}: {m.text[:300]}")

    def evaluate(self, expr, arg=None):
        return self.page.evaluate(expr, arg)

    def goto(self, url, timeout=60):
        self.events.clear()
        self.page.goto(url, wait_until="load", timeout=timeout * 1000)

    def pump(self, seconds):
        "Let the page run (and its events arrive) for `seconds`."
        self.page.wait_for_timeout(seconds * 1000)

    def settle(self, quiet=0.5, timeout=15):
        "Wait until no request has been in flight for `quiet` seconds."
        end = time.time() + timeout
        while time.time() < end:
            n = len(self.events)
            busy = bool(self.inflight)
            self.pump(quiet)
            if not busy and not self.inflight and len(self.events) == n:
                return True
        return False

    def screenshot(self, path: Path, height):
        h = max(300, min(int(height), SHOT_MAX_HEIGHT))
        self.page.screenshot(path=str(path), full_page=True, clip={"x": 0, "y": 0, "width": 1280, "height": h},
                             timeout=120_000)

    def problems(self):
        "Failures among the events recorded since the last navigation."
        return list(dict.fromkeys(self.events))

    def close(self):
        try:
            self.context.close()
        finally:
            self.browser.close()


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
(async () => {
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
    # Material's search worker sometimes never answers the first query (seen in CI after 26 pages, and
    # with text inserted in one go rather than typed): type key by key, type again after 4 s without an
    # answer, and reload the page, up to 3 times, before calling it a failure.
    hit, res, end = None, {}, time.time() + 45
    for attempt in range(3):
        br.goto(base + f"index.html?search_attempt={attempt}")
        br.settle()
        r = br.evaluate(SEARCH_PROBE)
        if r.get("error"):
            return [f"search: {r['error']}"], None
        tries_end, typed, n_typed = min(end, time.time() + 15), 0.0, 0
        while time.time() < tries_end and hit is None:
            if time.time() - typed > 4:  # key by key, as a reader types; again if the worker has not answered
                br.page.keyboard.press("Control+a")
                br.page.keyboard.type(name, delay=20)
                typed, n_typed = time.time(), n_typed + 1
            br.pump(0.3)
            res = br.evaluate(SEARCH_RESULTS)
            hit = next((x["href"] for x in res["results"]
                        if urllib.parse.unquote(urllib.parse.urlsplit(x["href"]).fragment).lower() == name.lower()), None)
        if n_typed > 1 and res.get("results"):
            log(f"search attempt {attempt + 1}: answered after typing the query {n_typed} times")
        if hit is not None or res.get("results") or time.time() >= end:
            break  # found, or the search answered without the entry: a real failure, not a stuck worker
        log(f"search attempt {attempt + 1}: no answer from the search worker ({res.get('meta')!r}); reloading")
    br.pump(0.5)  # let the results typeset before the picture
    br.screenshot(shots / "search.png", 900)
    if hit is None:
        shown = ", ".join(x["href"].replace(base, "") for x in res.get("results", [])[:6])
        return [f"search: no result links to the API entry #{name} in 3 attempts "
                f"({res.get('meta')!r}; links: {shown or 'none'})"], None
    br.goto(hit)
    br.settle()
    frag = urllib.parse.unquote(urllib.parse.urlsplit(hit).fragment)
    ok = br.evaluate("([frag, name]) => ({anchor: !!document.getElementById(frag),"
                     " text: document.body.innerText.includes(name)})", [frag, name])
    errs = []
    if not ok["anchor"]:
        errs.append(f"search: {hit} has no element #{frag}")
    if not ok["text"]:
        errs.append(f"search: {hit} does not mention {name!r}")
    return errs, hit


def _browse(pw, exe, base, pages, shots, failures, search):
    "Every page, then the search, in one browser; failures go into `failures` by page."
    br = Browser(pw, exe)
    try:
        log(f"{br.version} on {base}")
        for page in pages:
            t = time.time()
            try:
                br.goto(base + page)
                info = br.evaluate(PAGE_PROBE)
                br.settle()
                errs = br.problems()
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
        if search:
            errs, href = check_search(br, base, search, shots)
            failures[f"search {search!r}"].extend(errs)
            log(f"{'FAIL' if errs else 'ok  '} search {search!r}" + (f" -> {href.replace(base, '')}" if href else ""))
            for e in errs:
                log(f"     - {e}")
    finally:
        br.close()


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
    shots.mkdir(parents=True, exist_ok=True)
    for old in shots.glob("*.png"):  # this run's pictures only (tools/lab_check.py keeps its own in lab/)
        old.unlink()

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
    from playwright.sync_api import sync_playwright
    exe = find_chromium()
    try:
        with sync_playwright() as pw:
            _browse(pw, exe, base, pages, shots, failures, args.search)
    finally:
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
