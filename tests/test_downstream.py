import gzip
import shutil

import pytest

from clipguard import downstream, models
from clipguard.data import FASHION_MNIST_DIR


@pytest.fixture(scope="module")
def torchvision_root(tmp_path_factory):
    """Fashion-MNIST in torchvision's own on-disk layout (uncompressed IDX files under FashionMNIST/raw)."""
    root = tmp_path_factory.mktemp("tv")
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for source in FASHION_MNIST_DIR.glob("*-ubyte.gz"):
        with gzip.open(source) as packed, open(raw / source.name[:-3], "wb") as out:
            shutil.copyfileobj(packed, out)
    return root


def test_present_datasets_are_evaluated_and_missing_ones_reported(torchvision_root):
    model = models.build_model("clipguard-tiny", seed=0)
    items = [downstream.Downstream("FMNIST", "FashionMNIST"), downstream.Downstream("C10", "CIFAR10")]
    rows = downstream.evaluate_downstream(model, torchvision_root, items, n_train=64, n_test=32)
    present, missing = rows
    assert present["status"] == "ok" and present["n_train"] == 64 and present["n_test"] == 32
    assert 0.0 <= present["zeroshot_top1"] <= 1.0 and 0.0 <= present["linear_probe"] <= 1.0
    assert missing["status"] == "missing" and "CIFAR10" in missing["reason"]


def test_no_root_marks_every_paper_dataset_missing():
    rows = downstream.evaluate_downstream(None, None)
    assert [r["dataset"] for r in rows] == [d.label for d in downstream.PAPER_DOWNSTREAM]
    assert {r["status"] for r in rows} == {"missing"}
