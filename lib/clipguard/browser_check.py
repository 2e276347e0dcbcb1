"""Open every page of the built HTML book in a real browser and report what a reader would see broken.

    python -m clipguard.browser_check book/_build/html [--screenshots DIR] [--search RoCLIP=roclip]

The browser is Debian's ``chromium`` (installed by ``scripts/setup.sh``) driven by Playwright, headless, pointed at
that executable: Playwright downloads nothing. The book is served from a local HTTP server on 127.0.0.1 (search
needs http); every request to another host is refused, so nothing leaves the machine.

Checks, each reported as a :class:`Problem` naming the page:

* ``error-output``: an error output (traceback) in a cell, or "Traceback (most recent call last)" in any output;
* ``broken-image``: an ``<img>`` that did not load;
* ``raw-role``: MyST syntax left in the rendered text (outside code blocks and math): a role such as
  ``{glue:text}`x``` (rendered as ``{glue:text}`` before inline code), a bare ``{glue:}``, a ``{{ substitution }}``
  or a directive fence; a glue key that is missing altogether renders as nothing and is left to the build (-W);
* ``broken-link``: an internal link (or its ``#anchor``) that does not resolve; ``resource``: a stylesheet, script
  or font of the book's own that failed to load;
* ``paper-without-ours``: a table in a cell output whose header names a paper value (the word "paper") but has
  no column headed "ours" (the book's convention for "the paper's value stands beside ours");
* ``overflow``: a table, image or output wider than the content column (scrolled or spilling), or a page wider than
  the window;
* ``download``: a page built from a notebook whose download menu does not offer that notebook as ``.ipynb``, or
  offers one without outputs (not executed);
* ``search``: the search page does not list the expected page for a query (``RoCLIP`` must find a RoCLIP chapter).

A full-page screenshot of each page goes to ``<html_dir>/../screenshots/<page>.png`` for review without building.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import re
import shutil
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Iterator
from urllib.parse import quote, urldefrag, urljoin, urlsplit

__all__ = ["Problem", "Report", "find_chromium", "book_pages", "serve", "check_book", "main"]

VIEWPORT = {"width": 1280, "height": 900}
SKIPPED_PAGES = {"genindex.html", "search.html", "py-modindex.html"}
PAGE_TIMEOUT_MS = 30_000


@dataclass(frozen=True)
class Problem:
    page: str    # the page's path inside the HTML folder, e.g. executed/03_roclip/roclip_defence.html
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.page}: {self.kind}: {self.detail}"


@dataclass
class Report:
    pages: list[str]
    problems: list[Problem]
    screenshots: Path
    seconds: float
    blocked_hosts: set[str] = field(default_factory=set)  # other hosts the pages asked for (refused)

    @property
    def ok(self) -> bool:
        return not self.problems


def find_chromium(explicit: str | os.PathLike | None = None) -> str:
    """The chromium executable: ``explicit``, else ``$CLIPGUARD_CHROMIUM``, else ``chromium`` on the PATH."""
    candidate = explicit or os.environ.get("CLIPGUARD_CHROMIUM")
    path = shutil.which(str(candidate)) if candidate else (shutil.which("chromium") or shutil.which("chromium-browser"))
    if not path:
        wanted = candidate or "chromium"
        raise FileNotFoundError(f"no chromium executable ({wanted!r}); "
                                "install Debian's chromium: bash scripts/setup.sh")
    return path


def _is_redirect(page: Path) -> bool:
    return re.search(r"<meta[^>]+http-equiv=[\"']?refresh", page.read_text(errors="replace"), re.I) is not None


def book_pages(html_dir: Path) -> list[str]:
    """Content pages of a built book (paths relative to ``html_dir``): every ``*.html`` outside ``_*`` folders, less
    Sphinx's index and search pages and redirect stubs."""
    html_dir = Path(html_dir)
    if not (html_dir / "index.html").exists():
        raise FileNotFoundError(f"{html_dir} holds no built book (no index.html)")
    pages = []
    for path in sorted(html_dir.rglob("*.html")):
        relative = path.relative_to(html_dir)
        if any(part.startswith("_") for part in relative.parts) or relative.as_posix() in SKIPPED_PAGES:
            continue
        if not _is_redirect(path):
            pages.append(relative.as_posix())
    return pages


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@contextmanager
def serve(html_dir: Path) -> Iterator[str]:
    """Serve ``html_dir`` on 127.0.0.1 at a free port for the duration; yields the base URL (ending in /)."""
    handler = functools.partial(_QuietHandler, directory=str(html_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _Ids(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("id", "name") and value:
                self.ids.add(value)


class _Links:
    """Status and anchor ids of internal URLs, fetched once each."""

    def __init__(self):
        self._cache: dict[str, tuple[int, set[str] | None]] = {}

    def get(self, url: str) -> tuple[int, set[str] | None]:
        if url not in self._cache:
            try:
                with urllib.request.urlopen(url, timeout=10) as response:
                    status, body = response.status, response.read()
                    kind = response.headers.get_content_type()
            except urllib.error.HTTPError as error:
                status, body, kind = error.code, b"", ""
            ids = None
            if kind == "text/html":
                parser = _Ids()
                parser.feed(body.decode("utf-8", errors="replace"))
                ids = parser.ids
            self._cache[url] = (status, ids)
        return self._cache[url]

    def body(self, url: str) -> bytes:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read()


# One pass over the rendered page; returns everything the Python side judges. Kept in one evaluate call so a page
# costs one round trip.
_PAGE_SCRIPT = r"""
async () => {
  const article = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
  const describe = (el) => {
    const cls = typeof el.className === 'string' && el.className.trim()
      ? '.' + el.className.trim().split(/\s+/).join('.') : '';
    const text = (el.innerText || el.getAttribute('src') || '').replace(/\s+/g, ' ').trim().slice(0, 60);
    return `<${el.tagName.toLowerCase()}${cls}> "${text}"`;
  };
  const out = {errors: [], images: [], text: '', tables: [], overflow: [], links: [], downloads: []};

  // errors: myst-nb renders an error output as div.output.traceback
  for (const cell of article.querySelectorAll('.cell_output')) {
    const text = cell.innerText || '';
    if (cell.querySelector('.traceback, .output.error') || text.includes('Traceback (most recent call last)')) {
      const lines = text.split('\n').map(s => s.trim()).filter(Boolean);
      const last = lines.filter(s => /^[A-Za-z_.]*(Error|Exception|Interrupt|Exit)\b/.test(s)).pop();
      out.errors.push(last || lines.slice(-1)[0] || 'traceback');
    }
  }

  // images: load lazy ones now, wait for each to finish, then ask whether it decoded
  const images = [...document.images];
  images.forEach(img => { img.loading = 'eager'; });
  await Promise.all(images.map(img => img.complete ? null : new Promise(done => {
    img.addEventListener('load', done); img.addEventListener('error', done); setTimeout(done, 5000);
  })));
  for (const img of images) {
    if (!img.complete || img.naturalWidth === 0) out.images.push(img.getAttribute('src') || '(no src)');
  }

  // text as written: code blocks, math and cell inputs dropped, inline code back in backticks
  const clone = article.cloneNode(true);
  clone.querySelectorAll('pre, script, style, .math, mjx-container, .cell_input, .headerlink')
    .forEach(el => el.remove());
  clone.querySelectorAll('code').forEach(el => el.replaceWith('`' + el.textContent + '`'));
  out.text = clone.textContent;

  // tables in cell outputs: their header cells
  article.querySelectorAll('.cell_output table').forEach((table, i) => {
    let heads = [...table.querySelectorAll('thead th')];
    if (!heads.length && table.rows.length) heads = [...table.rows[0].cells];
    out.tables.push({index: i + 1, headers: heads.map(th => th.innerText.replace(/\s+/g, ' ').trim())});
  });

  // overflow: content wider than the column, whether it spills out or sits in a horizontal scroller
  const column = article.getBoundingClientRect();
  const spills = (el) => el.getBoundingClientRect().right > column.right + 1;
  const candidates = article.querySelectorAll(
    '.cell_output, .cell_output *, table, img, figure, .math, .pst-scrollable-table-container');
  const columnPx = `column ${Math.round(column.width)} px`;
  const reported = [];
  for (const el of candidates) {
    if (el.closest('.cell_input') || reported.some(r => r.contains(el))) continue;
    const scrolls = /(auto|scroll|hidden)/.test(getComputedStyle(el).overflowX) && el.scrollWidth > el.clientWidth + 1;
    const parentSpills = el.parentElement && el.parentElement !== article && spills(el.parentElement);
    const reach = Math.round(el.getBoundingClientRect().right - column.left);
    const scroller = `${el.scrollWidth} px wide in a ${el.clientWidth} px scroller`;
    if (scrolls) out.overflow.push(`${describe(el)} is ${scroller} (${columnPx})`);
    else if (spills(el) && !parentSpills) out.overflow.push(`${describe(el)} reaches ${reach} px (${columnPx})`);
    else continue;
    reported.push(el);
  }
  if (document.documentElement.scrollWidth > window.innerWidth + 1)
    out.overflow.push(`page is ${document.documentElement.scrollWidth} px wide in a ${window.innerWidth} px window`);

  // links anywhere on the page, and what the download menu offers
  for (const a of document.querySelectorAll('a[href]')) out.links.push(a.href);
  for (const a of document.querySelectorAll('.dropdown-download-buttons a[href]')) out.downloads.push(a.href);
  return out;
}
"""

_RAW_SYNTAX = [
    (re.compile(r"\{[A-Za-z][\w.+-]*(?::[\w.+-]*)*\}`[^`]*`?"), "raw MyST role"),
    (re.compile(r"\{glue(?::[\w-]*)?\}"), "unresolved glue role"),
    (re.compile(r"\{\{[^{}\n]{1,80}\}\}"), "unresolved substitution"),
    (re.compile(r"(?:`{3,}|:{3,})\{[\w:.-]+\}"), "raw MyST directive"),
]
_PAPER = re.compile(r"\bpaper\b", re.I)
_OURS = re.compile(r"\bours\b", re.I)


def raw_syntax(text: str) -> list[str]:
    """MyST syntax left in rendered text, each as ``"<what>: '<match>'"`` (one finding per location)."""
    found, seen = [], set()
    for pattern, what in _RAW_SYNTAX:
        for match in pattern.finditer(text):
            if not any(s <= match.start() < e for s, e in seen):
                seen.add((match.start(), match.end()))
                found.append(f"{what}: {match.group(0)[:60]!r}")
    return found


def paper_without_ours(headers: list[str]) -> bool:
    """The book's convention: a table whose header names a paper value must have a column headed "ours"."""
    return any(_PAPER.search(h) for h in headers) and not any(_OURS.search(h) for h in headers)


def _source_notebook(html_dir: Path, page: str) -> str | None:
    notebook = Path("_sources") / Path(page).with_suffix(".ipynb")
    return notebook.as_posix() if (html_dir / notebook).exists() else None


def _check_download(page: str, offered: list[str], base: str, notebook: str, links: _Links) -> list[Problem]:
    wanted = urljoin(base, notebook)
    if wanted not in [urldefrag(u)[0] for u in offered]:
        return [Problem(page, "download", f"download menu does not offer {notebook} (offers {offered or 'nothing'})")]
    try:
        nb = json.loads(links.body(wanted))
    except (urllib.error.URLError, ValueError) as error:
        return [Problem(page, "download", f"{notebook} is not a readable notebook: {error}")]
    if not any(c.get("outputs") for c in nb.get("cells", []) if c.get("cell_type") == "code"):
        return [Problem(page, "download", f"{notebook} has no outputs: not the executed notebook")]
    return []


def _check_links(page: str, urls: list[str], base: str, links: _Links) -> list[Problem]:
    problems, seen = [], set()
    for url in urls:
        if not url.startswith(base) or url in seen:
            continue
        seen.add(url)
        target, anchor = urldefrag(url)
        status, ids = links.get(target)
        shown = url[len(base) - 1:]
        if status >= 400:
            problems.append(Problem(page, "broken-link", f"{shown} answers {status}"))
        elif anchor and ids is not None and anchor not in ids:
            problems.append(Problem(page, "broken-link", f"{shown}: no element with id {anchor!r}"))
    return problems


def _check_page(browser_page, page: str, base: str, html_dir: Path, shots: Path, links: _Links) -> list[Problem]:
    failures: list[str] = []

    def on_response(response):  # the book's own stylesheets, scripts, fonts (images are judged in the page)
        if response.status >= 400 and response.url.startswith(base) and \
                response.request.resource_type not in ("image", "document"):
            failures.append(f"{response.url[len(base) - 1:]} answers {response.status}")

    browser_page.on("response", on_response)
    try:
        response = browser_page.goto(urljoin(base, page), wait_until="load", timeout=PAGE_TIMEOUT_MS)
        if response is None or response.status >= 400:
            return [Problem(page, "broken-link", f"page answers {response.status if response else 'nothing'}")]
        found = browser_page.evaluate(_PAGE_SCRIPT)
        shot = shots / Path(page).with_suffix(".png")
        shot.parent.mkdir(parents=True, exist_ok=True)
        browser_page.screenshot(path=str(shot), full_page=True)
    finally:
        browser_page.remove_listener("response", on_response)
    problems = [Problem(page, "error-output", e) for e in found["errors"]]
    problems += [Problem(page, "broken-image", f"{src} did not load") for src in found["images"]]
    problems += [Problem(page, "raw-role", r) for r in raw_syntax(found["text"])]
    problems += [Problem(page, "paper-without-ours",
                         f"output table {t['index']} has paper column(s) but none headed 'ours': {t['headers']}")
                 for t in found["tables"] if paper_without_ours(t["headers"])]
    problems += [Problem(page, "overflow", o) for o in found["overflow"]]
    problems += [Problem(page, "resource", f) for f in failures]
    problems += _check_links(page, found["links"], base, links)
    notebook = _source_notebook(html_dir, page)
    if notebook:
        problems += _check_download(page, found["downloads"], base, notebook, links)
    return problems


def _check_search(browser_page, base: str, query: str, expect: str) -> list[Problem]:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    browser_page.goto(urljoin(base, f"search.html?q={quote(query)}"), wait_until="load", timeout=PAGE_TIMEOUT_MS)
    try:  # Sphinx's search writes a summary line when it has listed every result
        browser_page.wait_for_function(
            "() => (document.querySelector('#search-results .search-summary')?.innerText || '').length > 0",
            timeout=PAGE_TIMEOUT_MS)
    except PlaywrightTimeout:
        return [Problem("search.html", "search", f"search for {query!r} never finished")]
    hits = browser_page.eval_on_selector_all("#search-results ul.search li a", "as => as.map(a => a.href)")
    if not any(expect.lower() in h.lower() for h in hits):
        shown = [h[len(base):] for h in hits][:10]
        return [Problem("search.html", "search", f"search for {query!r} lists no page matching {expect!r}: {shown}")]
    return []


def check_book(html_dir: Path, screenshots: Path | None = None, search: tuple[str, str] | None = ("RoCLIP", "roclip"),
               chromium: str | None = None) -> Report:
    """Open every page of the book built in ``html_dir`` in headless chromium; see the module docstring.

    ``search`` is (query, a substring of the URL of a page the results must list), or None to skip."""
    from playwright.sync_api import sync_playwright

    html_dir = Path(html_dir).resolve()
    pages = book_pages(html_dir)
    shots = Path(screenshots) if screenshots else html_dir.parent / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    executable = find_chromium(chromium)
    started = time.perf_counter()
    problems: list[Problem] = []
    blocked: set[str] = set()
    links = _Links()
    with serve(html_dir) as base, sync_playwright() as playwright:
        # --no-sandbox: chromium refuses to run as root otherwise; other hosts never resolve (offline, loopback only)
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=[
            "--no-sandbox", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"])
        try:
            browser_page = browser.new_context(viewport=VIEWPORT).new_page()

            def on_failed(request):  # other hosts are refused by design; note which ones the book asks for
                if not request.url.startswith(base):
                    blocked.add(urlsplit(request.url).netloc)

            browser_page.on("requestfailed", on_failed)
            for page in pages:
                problems += _check_page(browser_page, page, base, html_dir, shots, links)
            if search:
                problems += _check_search(browser_page, base, *search)
        finally:
            browser.close()
    return Report(pages, problems, shots, time.perf_counter() - started, blocked)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clipguard.browser_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("html_dir", type=Path, help="the built book, e.g. book/_build/html")
    parser.add_argument("--screenshots", type=Path,
                        help="where the page screenshots go (default: HTML_DIR/../screenshots)")
    parser.add_argument("--search", default="RoCLIP=roclip", metavar="QUERY=URL_PART",
                        help="search query and a part of the URL a result must have ('' to skip)")
    parser.add_argument("--chromium", help="chromium executable (default: $CLIPGUARD_CHROMIUM or chromium on PATH)")
    args = parser.parse_args(argv)
    search = tuple(args.search.split("=", 1)) if args.search else None
    if search is not None and len(search) != 2:
        parser.error("--search takes QUERY=URL_PART")
    try:
        report = check_book(args.html_dir, args.screenshots, search, args.chromium)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for problem in report.problems:
        print(problem)
    if report.blocked_hosts:
        print(f"note: refused requests to other hosts (the book needs them online): {sorted(report.blocked_hosts)}")
    print(f"browser check: {len(report.pages)} pages in {report.seconds:.1f} s, {len(report.problems)} problem(s); "
          f"screenshots in {report.screenshots}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
