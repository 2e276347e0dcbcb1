import os
import shutil

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_fashion():
    from clipguard import data

    return data.fashion_mnist("train", n=512, seed=0)


@pytest.fixture
def store(tmp_path):
    from clipguard.runs import RunStore

    return RunStore("smoke", root=tmp_path / "results")


@pytest.fixture(scope="session")
def executed_book(tmp_path_factory):
    """Every notebook executed at profile=smoke into a temporary book with a fresh run store (once per session:
    test_notebooks and test_browser share it)."""
    from clipguard import notebooks

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


@pytest.fixture(scope="session")
def built_book(executed_book):
    """The smoke book's HTML folder, built once per session."""
    from clipguard import notebooks

    book, _ = executed_book
    notebooks.build_book(book)
    return book / "_build" / "html"
