"""The built book in a real browser (Debian's chromium driven by Playwright): a deliberately broken tiny book makes
the checker name each problem, and the smoke book of test_notebooks passes it."""

import base64
import io
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import nbformat
import pytest
from PIL import Image

from clipguard import browser_check

CONFIG = """\
title: tiny
only_build_toc_files: true
execute:
  execute_notebooks: "off"
html:
  use_download_button: true
"""
TOC = """\
format: jb-book
root: intro
chapters:
  - file: clean
  - file: broken
  - file: draft
"""
INTRO = """\
# Intro

The word needle appears on this page only. The [clean chapter](clean.ipynb) and the [broken one](broken.ipynb).

| paper | what it contributes |
|---|---|
| RoCLIP | robust pre-training (a prose table: the paper/ours convention is for output tables only) |
"""


def _notebook(*cells) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = list(cells)
    return nb


def _code(source: str, *outputs) -> nbformat.NotebookNode:
    return nbformat.v4.new_code_cell(source, outputs=list(outputs))


def _html(html: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_output("display_data", data={"text/html": html, "text/plain": "<table>"})


def _png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _write_broken_book(root: Path) -> None:
    (root / "_config.yml").write_text(CONFIG)
    (root / "_toc.yml").write_text(TOC)
    (root / "intro.md").write_text(INTRO)
    clean = _notebook(
        nbformat.v4.new_markdown_cell("# Clean\n\nA page with nothing wrong. Back to the [intro](intro.md)."),
        _code("print('hello')", nbformat.v4.new_output("stream", name="stdout", text="hello\n")),
        _code("figure", nbformat.v4.new_output("display_data", data={"image/png": _png(), "text/plain": "fig"})),
        _code("table", _html("<table><thead><tr><th>what</th><th>paper</th><th>ours</th></tr></thead>"
                             "<tbody><tr><td>ASR</td><td>93</td><td>88</td></tr></tbody></table>")))
    broken = _notebook(
        nbformat.v4.new_markdown_cell("# Broken\n\n<img src='nothere.png' alt='lost'>\n\n"
                                      "<a href='missing.html'>gone</a> and <a href='clean.html#no-such-anchor'>x</a>"),
        _code("1/0", nbformat.v4.new_output("error", ename="ZeroDivisionError", evalue="division by zero",
                                            traceback=["Traceback (most recent call last)",
                                                       "ZeroDivisionError: division by zero"])),
        _code("display(Markdown(text))", nbformat.v4.new_output(
            "display_data", data={"text/markdown": "Value {glue:text}`missing_key` here."})),
        _code("paper_only", _html("<table><thead><tr><th>what</th><th>paper (%)</th></tr></thead>"
                                  "<tbody><tr><td>ASR</td><td>93</td></tr></tbody></table>")),
        _code("wide", _html("<div style='width:3000px'>wide</div>")))
    draft = _notebook(nbformat.v4.new_markdown_cell("# Draft"), _code("never_run()"))
    for name, nb in (("clean", clean), ("broken", broken), ("draft", draft)):
        nbformat.write(nb, str(root / f"{name}.ipynb"))


@pytest.fixture(scope="module")
def broken_book(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("broken_book")
    _write_broken_book(root)
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    # no -W: the broken image and the missing anchor are warnings this book is meant to have
    subprocess.run([str(jupyter_book), "build", str(root), "--quiet"], check=True, capture_output=True)
    return root / "_build" / "html"


def test_raw_syntax_finds_roles_glue_substitutions_and_directives():
    text = "a {glue:text}`acc` b {glue:} c {{ n_runs }} d ```{figure} e {ref}`intro` f"
    found = browser_check.raw_syntax(text)
    assert found == ["raw MyST role: '{glue:text}`acc`'", "raw MyST role: '{ref}`intro`'",
                     "unresolved glue role: '{glue:}'", "unresolved substitution: '{{ n_runs }}'",
                     "raw MyST directive: '```{figure}'"]
    # prose braces, set notation and a caption template are not MyST
    assert browser_check.raw_syntax('"a photo of a {class}." and {1, 2} and f"{x}"') == []


def test_paper_without_ours_convention():
    assert browser_check.paper_without_ours(["what", "paper (%)"])
    assert browser_check.paper_without_ours(["method", "BSR", "paper BSR (%)"])
    assert not browser_check.paper_without_ours(["what", "paper", "ours"])
    assert not browser_check.paper_without_ours(["ours: success rate (%)", "paper (%)"])
    assert not browser_check.paper_without_ours(["method", "papers read", "BSR"])  # the word, not a prefix


@pytest.mark.slow
def test_checker_names_each_problem_of_a_broken_book(broken_book):
    report = browser_check.check_book(broken_book, search=("needle", "intro"))
    assert report.pages == ["broken.html", "clean.html", "draft.html", "intro.html"]
    found = defaultdict(list)
    for problem in report.problems:
        found[problem.page, problem.kind].append(problem.detail)
    expected = {
        ("broken.html", "error-output"): "ZeroDivisionError: division by zero",
        ("broken.html", "broken-image"): "nothere.png",
        ("broken.html", "raw-role"): "{glue:text}`missing_key`",
        ("broken.html", "paper-without-ours"): "paper (%)",
        ("broken.html", "overflow"): "3000 px",
        ("broken.html", "broken-link"): "/missing.html answers 404",
        ("draft.html", "download"): "has no outputs",
    }
    assert set(found) == set(expected), "\n".join(map(str, report.problems))
    for key, detail in expected.items():
        assert any(detail in d for d in found[key]), (key, found[key])
    links = [p.detail for p in report.problems if p.kind == "broken-link"]
    assert sorted(links) == ["/clean.html#no-such-anchor: no element with id 'no-such-anchor'",
                             "/missing.html answers 404"]
    for page in report.pages:
        with Image.open(report.screenshots / Path(page).with_suffix(".png")) as shot:
            assert shot.width == browser_check.VIEWPORT["width"] and shot.height >= 300


@pytest.mark.slow
def test_search_that_misses_the_expected_page_is_a_problem(broken_book, tmp_path):
    report = browser_check.check_book(broken_book, tmp_path / "shots", search=("needle", "broken"))
    assert [str(p) for p in report.problems if p.kind == "search"] == [
        "search.html: search: search for 'needle' lists no page matching 'broken': ['intro.html']"]


@pytest.mark.slow
def test_smoke_book_passes_in_the_browser(built_book):
    report = browser_check.check_book(built_book, search=("RoCLIP", "roclip"))
    print(f"browser check: {len(report.pages)} pages in {report.seconds:.1f} s; screenshots in {report.screenshots}")
    assert len(report.pages) >= 2
    assert all((report.screenshots / Path(p).with_suffix(".png")).exists() for p in report.pages)
    assert report.ok, "\n".join(map(str, report.problems))
