"""Downstream evaluation on the papers' benchmark datasets, where the user has them on disk.

The papers (RoCLIP Table 1/3, SafeCLIP, CleanCLIP) report zero-shot and linear-probe accuracy on ten torchvision
classification datasets. Nothing can be downloaded here, so each dataset is looked for under a root folder in the
layout torchvision's own loaders expect (``torchvision.datasets.<Name>(root, download=False)``); missing ones are
reported as missing, never silently skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import evaluate
from .data import DataError, ImageCaptionSet, load_torchvision

__all__ = ["Downstream", "PAPER_DOWNSTREAM", "evaluate_downstream", "evaluate_on"]


@dataclass(frozen=True)
class Downstream:
    """A benchmark dataset: the paper's column label, torchvision's class name and its train/test split names."""

    label: str
    torchvision_name: str
    train_split: str = "train"
    test_split: str = "test"


#: RoCLIP Table 1's datasets in the column order of Table 3 (ImageNet needs the ILSVRC2012 archives under the root).
PAPER_DOWNSTREAM = [
    Downstream("F102", "Flowers102"), Downstream("Fd101", "Food101"), Downstream("I1K", "ImageNet", "train", "val"),
    Downstream("Pet", "OxfordIIITPet", "trainval", "test"), Downstream("Cars", "StanfordCars"),
    Downstream("Cal101", "Caltech101"), Downstream("C10", "CIFAR10"), Downstream("C100", "CIFAR100"),
    Downstream("DTD", "DTD"), Downstream("Air.", "FGVCAircraft", "trainval", "test"),
]


def evaluate_on(model, train: ImageCaptionSet, test: ImageCaptionSet, seed: int = 0) -> dict[str, float]:
    """Zero-shot top-1 on ``test`` (class prompts from its class names and templates) and the papers' torch linear
    probe trained on ``train``'s frozen, un-normalised image features."""
    zero_shot = evaluate.zero_shot_accuracy(model, test, ks=(1,))["top1"]
    probe = evaluate.linear_probe_torch(evaluate.image_embeddings(model, train, normalize=False), train.labels,
                                        evaluate.image_embeddings(model, test, normalize=False), test.labels,
                                        seed=seed)
    return {"zeroshot_top1": zero_shot, "linear_probe": probe}


def evaluate_downstream(model, root: str | Path | None, datasets: list[Downstream] = PAPER_DOWNSTREAM,
                        image_size: int = 32, n_train: int | None = 5000, n_test: int | None = 2000,
                        seed: int = 0) -> list[dict]:
    """One row per dataset: accuracies where the dataset is under ``root``, else ``status="missing"`` with why."""
    rows = []
    for item in datasets:
        row = {"dataset": item.label, "torchvision": item.torchvision_name}
        if root is None:
            rows.append({**row, "status": "missing", "reason": "no data root given"})
            continue
        try:
            train = load_torchvision(item.torchvision_name, root, item.train_split, image_size, n_train, seed)
            test = load_torchvision(item.torchvision_name, root, item.test_split, image_size, n_test, seed + 1)
        except (DataError, FileNotFoundError, OSError) as error:
            rows.append({**row, "status": "missing", "reason": str(error).splitlines()[0][:200]})
            continue
        rows.append({**row, "status": "ok", "n_train": len(train), "n_test": len(test),
                     **evaluate_on(model, train, test, seed)})
    return rows
