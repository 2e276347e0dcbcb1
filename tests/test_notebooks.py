"""Every notebook executes under papermill at profile=smoke, and the book builds from the executed copies
(the ``executed_book`` fixture lives in conftest.py: test_browser checks the same book)."""

import pytest

from clipguard import notebooks


@pytest.mark.slow
def test_every_notebook_executes_at_smoke(executed_book):
    book, timings = executed_book
    assert len(timings) == len(notebooks.discover())
    print(f"smoke timings: {timings} (total {sum(timings.values()):.0f} s)")


@pytest.mark.slow
def test_book_builds_from_executed_notebooks(built_book):
    assert (built_book / "index.html").exists()
    for path in notebooks.discover():
        relative = path.relative_to(notebooks.NOTEBOOK_DIR).with_suffix(".html")
        assert (built_book / "executed" / relative).exists(), relative


def test_unknown_parameter_fails_before_execution(tmp_path):
    source = notebooks.discover()[0]
    with pytest.raises(notebooks.NotebookError, match="unknown parameter"):
        notebooks.execute(source, tmp_path / "out.ipynb", {"profile": "smoke", "no_such_parameter": 1})
    with pytest.raises(notebooks.NotebookError, match="unknown profile"):
        notebooks.execute(source, tmp_path / "out.ipynb", {"profile": "huge"})
    assert not (tmp_path / "out.ipynb").exists()
