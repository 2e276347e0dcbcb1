"""Detectors on a stored run: embed its training set, score, and keep the scores in the run store.

The detect package is excluded from the run store's code identity (so tuning a detector never retrains a model);
stored *scores* are therefore keyed by :func:`code_version`, a hash of this package's source, so that editing a
detector does recompute them.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .scores import score_many

__all__ = ["code_version", "embed", "toy_2d", "Toy2D", "stored_scores", "array_fingerprint", "tracked_losses"]

_DIR = Path(__file__).resolve().parent


def code_version() -> str:
    """Hash of the detect package's source files (the run store's code identity, applied to this package)."""
    from ..runs import code_identity

    return code_identity(_DIR)


def array_fingerprint(array) -> str | None:
    """Content hash of an array (dtype, shape and bytes in C order), ``None`` for ``None``: a store key that changes
    whenever the values do."""
    if array is None:
        return None
    a = np.ascontiguousarray(np.asarray(array))
    digest = hashlib.sha256(f"{a.dtype.str}|{a.shape}|".encode())
    digest.update(a.tobytes())
    return digest.hexdigest()[:32]


def embed(model, dataset, normalize: bool = False, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Image and caption embeddings ``[N, D]`` of a dataset (un-normalised by default, as the released code)."""
    from ..evaluate import image_embeddings, text_embeddings

    images = image_embeddings(model, dataset, batch_size=batch_size, normalize=normalize).numpy()
    texts = text_embeddings(model, dataset.captions, normalize=normalize).numpy()
    return images, texts


def tracked_losses(run) -> tuple[np.ndarray, np.ndarray]:
    """The per-pair loss matrix ``[rows, N]`` of a run trained with per-pair tracking (``per_sample.npz``, written
    by :class:`clipguard.evaluate.PerSampleTracker`) and the 1-based epoch number of each row, for ABL."""
    path = run.artifact("per_sample.npz")
    if not path.exists():
        raise FileNotFoundError(f"run {run.id} has no per_sample.npz: train it with track_per_sample=True")
    with np.load(path) as records:
        if "epochs" not in records.files:
            raise ValueError(f"{path} has no 'epochs' array: cannot tell which epoch each loss row belongs to")
        return records["loss"], records["epochs"].astype(np.int64)


def stored_scores(store, run, dataset, variants: dict[str, dict], seed: int = 0, losses: np.ndarray | None = None,
                  loss_epochs: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Scores of several detector *variants* on ``run``'s model over ``dataset``, computed once and stored.

    ``variants`` maps a label to the keyword arguments of :func:`~clipguard.detect.scores.score_many` plus
    ``names`` (the detectors) and an optional ``embedding`` (``"raw"`` default, or ``"normalized"``); the result
    maps ``"<label>/<detector>"`` to scores. Seconds per variant come back in the stored metrics. The store key
    holds the content hashes of ``losses`` and ``loss_epochs`` (the epoch number of each loss row, see
    :func:`tracked_losses`; :func:`array_fingerprint`), so other losses give other scores."""
    config = {"kind": "detector-scores", "run": run.id, "variants": variants, "seed": seed,
              "detect_code": code_version(), "losses": array_fingerprint(losses),
              "loss_epochs": array_fingerprint(loss_epochs)}

    def compute(work: Path) -> dict:
        model = run.load_model()
        cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        arrays, seconds = {}, {}
        for label, options in variants.items():
            options = dict(options)
            names = options.pop("names")
            embedding = options.pop("embedding", "raw")
            if embedding not in cache:
                cache[embedding] = embed(model, dataset, normalize=embedding == "normalized")
            image, text = cache[embedding]
            started = time.perf_counter()
            if "cognitive_distillation" in names:      # a model-based detector: the model and the images
                options.update(model=model, images=dataset)
            result = score_many(names, image, text, seed=seed, losses=losses, loss_epochs=loss_epochs, **options)
            seconds[label] = time.perf_counter() - started
            arrays.update({f"{label}/{name}": values for name, values in result.items()})
        np.savez_compressed(work / "scores.npz", **arrays)
        return {"seconds": seconds, "n": len(dataset)}

    result = store.get_or_compute(config, compute, data={"train": dataset.fingerprint()})
    with np.load(result.artifact("scores.npz")) as stored:
        return {key: stored[key] for key in stored.files}, result.metrics


@dataclass
class Toy2D:
    x: np.ndarray          # [N, 2]
    is_outlier: np.ndarray  # [N] bool: planted sparse points and the tight pair
    cluster: np.ndarray    # [N] cluster id, -1 for planted points
    pair: np.ndarray       # indices of the tight pair


def toy_2d(seed: int = 0, sizes=(300, 200, 120), spreads=(0.25, 0.6, 1.2), n_sparse: int = 6) -> Toy2D:
    """A 2-D picture of the paper's claim: Gaussian clusters of different densities, a few sparse planted points
    (backdoor-like: far from their nearest clean points relative to the local density) and one tight pair (two
    poisons next to each other: a neighbour at ~0 distance, still sparse beyond it)."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [4.0, 3.0], [-3.5, 4.5]])[:len(sizes)]
    parts, cluster = [], []
    for c, (n, s) in enumerate(zip(sizes, spreads)):
        parts.append(centres[c] + s * rng.normal(size=(n, 2)))
        cluster += [c] * n
    angles = rng.uniform(0, 2 * np.pi, n_sparse)
    radius = rng.uniform(2.0, 3.0, n_sparse)
    home = rng.integers(0, len(sizes), n_sparse)
    sparse = centres[home] + (np.array(spreads)[home] * 2.5 + radius)[:, None] * np.c_[np.cos(angles), np.sin(angles)]
    pair_centre = np.array([2.5, -2.5])
    pair = pair_centre + 0.05 * rng.normal(size=(2, 2))
    x = np.concatenate(parts + [sparse, pair])
    n_clean = sum(sizes)
    is_outlier = np.r_[np.zeros(n_clean, bool), np.ones(n_sparse + 2, bool)]
    return Toy2D(x, is_outlier, np.r_[cluster, -np.ones(n_sparse + 2, int)], np.arange(len(x) - 2, len(x)))
