"""Every notebook executes under papermill at profile=smoke, and the book builds from the executed copies."""

import os
import shutil

import pytest

from clipguard import notebooks


@pytest.fixture(scope="module")
def executed_book(tmp_path_factory):
    book = tmp_path_factory.mktemp("book")
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(notebooks.BOOK_DIR / name, book / name)
    for page in notebooks.BOOK_DIR.glob("*.md"):
        shutil.copy(page, book / page.name)
    for extra in ("images", "_static"):
        if (notebooks.BOOK_DIR / extra).exists():
            shutil.copytree(notebooks.BOOK_DIR / extra, book / extra)
    previous = os.environ.get("CLIPGUARD_RESULTS")
    os.environ["CLIPGUARD_RESULTS"] = str(book / "results")  # the kernels inherit it: a fresh run store
    try:
        timings = notebooks.run_all("smoke", book / "executed")
    finally:
        if previous is None:
            os.environ.pop("CLIPGUARD_RESULTS", None)
        else:
            os.environ["CLIPGUARD_RESULTS"] = previous
    return book, timings


@pytest.mark.slow
def test_every_notebook_executes_at_smoke(executed_book):
    book, timings = executed_book
    assert len(timings) == len(notebooks.discover())
    print(f"smoke timings: {timings} (total {sum(timings.values()):.0f} s)")


@pytest.mark.slow
def test_book_builds_from_executed_notebooks(executed_book):
    book, _ = executed_book
    notebooks.build_book(book)
    assert (book / "_build" / "html" / "index.html").exists()
    for path in notebooks.discover():
        relative = path.relative_to(notebooks.NOTEBOOK_DIR).with_suffix(".html")
        assert (book / "_build" / "html" / "executed" / relative).exists(), relative


def test_unknown_parameter_fails_before_execution(tmp_path):
    source = notebooks.discover()[0]
    with pytest.raises(notebooks.NotebookError, match="unknown parameter"):
        notebooks.execute(source, tmp_path / "out.ipynb", {"profile": "smoke", "no_such_parameter": 1})
    with pytest.raises(notebooks.NotebookError, match="unknown profile"):
        notebooks.execute(source, tmp_path / "out.ipynb", {"profile": "huge"})
    assert not (tmp_path / "out.ipynb").exists()
