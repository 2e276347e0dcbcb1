"""Detection metrics (detectors.md Section 6): labels 1 = poisoned, scores oriented higher = more suspicious.

ROC and PR points follow scikit-learn's ``roc_curve`` / ``precision_recall_curve`` (one point per distinct score,
``drop_intermediate=False``), so the values equal sklearn's; written out so that the threshold-based metrics
(FPR@TPR, error@TPR, TPR@FPR) are computed on the very same points.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["roc_points", "auroc", "pr_auc", "average_precision", "fpr_at_tpr", "detection_error_at_tpr",
           "detection_error_at_tpr_released", "tpr_at_fpr", "precision_at_k", "recall_at_fraction",
           "bootstrap_interval", "detection_report"]


def _check(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1 or len(y) != len(s):
        raise ValueError(f"labels {y.shape} and scores {s.shape} must be 1-D of the same length")
    if not np.isfinite(s).all():
        raise ValueError(f"scores hold NaN/inf (first at index {int(np.flatnonzero(~np.isfinite(s))[0])})")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (clean) / 1 (poisoned) or booleans")
    y = y.astype(np.int64)
    if y.min() == y.max():
        raise ValueError("labels need both classes (poisoned and clean)")
    return y, s


def _counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative false and true positives at each distinct threshold, from the highest score down."""
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[last]
    return 1 + last - tps, tps


def roc_points(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` starting at (0, 0), one point per distinct score (sklearn ``roc_curve``, no dropping)."""
    y, s = _check(labels, scores)
    fps, tps = _counts(y, s)
    return np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]]


def auroc(labels, scores) -> float:
    """Area under the ROC curve (trapezoidal over :func:`roc_points`, = sklearn ``roc_auc_score``)."""
    fpr, tpr = roc_points(labels, scores)
    return float(np.trapezoid(tpr, fpr))


def _pr(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y, s = _check(labels, scores)
    fps, tps = _counts(y, s)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    stop = tps.searchsorted(tps[-1])          # sklearn stops at the first full-recall point
    keep = slice(stop, None, -1)
    return np.r_[precision[keep], 1.0], np.r_[recall[keep], 0.0]


def pr_auc(labels, scores) -> float:
    """The paper's PR-AUC: trapezoidal ``auc(recall, precision)`` over sklearn's PR points (not average precision).
    Random baseline about the positive rate."""
    precision, recall = _pr(labels, scores)
    return float(-np.trapezoid(precision, recall))


def average_precision(labels, scores) -> float:
    """Average precision ``sum_n (R_n - R_{n-1}) P_n`` (= sklearn ``average_precision_score``)."""
    precision, recall = _pr(labels, scores)
    return float(-np.sum(np.diff(recall) * precision[:-1]))


def fpr_at_tpr(labels, scores, tpr_level: float = 0.95) -> float:
    """FPR at ``tpr_level``, linearly interpolated between the two ROC points whose TPRs bracket it (the lowest FPR
    when a point reaches it exactly)."""
    fpr, tpr = roc_points(labels, scores)
    i = int(np.searchsorted(tpr, tpr_level, side="left"))
    if tpr[i] == tpr_level or i == 0:
        return float(fpr[i])
    t0, t1, f0, f1 = tpr[i - 1], tpr[i], fpr[i - 1], fpr[i]
    return float(f0 + (f1 - f0) * (tpr_level - t0) / (t1 - t0))


def detection_error_at_tpr(labels, scores, tpr_level: float = 0.95) -> float:
    """Misclassification rate at the best threshold with TPR >= ``tpr_level``:
    ``min pos_ratio·(1 - TPR) + neg_ratio·FPR`` (the correctly weighted error; detectors.md 5.3)."""
    y, _ = _check(labels, scores)
    fpr, tpr = roc_points(labels, scores)
    pos = y.mean()
    ok = tpr >= tpr_level
    return float(np.min(pos * (1 - tpr[ok]) + (1 - pos) * fpr[ok]))


def detection_error_at_tpr_released(labels, scores, tpr_level: float = 0.95) -> float:
    """COMPATIBILITY ONLY: the released ``process_detection_scores.py::detection_error`` weighting
    ``neg_ratio·(1 - TPR) + pos_ratio·FPR`` (swapped weights; always <= pos_ratio, so nearly uninformative)."""
    y, _ = _check(labels, scores)
    fpr, tpr = roc_points(labels, scores)
    pos = y.mean()
    ok = tpr >= tpr_level
    return float(np.min((1 - pos) * (1 - tpr[ok]) + pos * fpr[ok]))


def tpr_at_fpr(labels, scores, fpr_level: float = 0.01) -> float:
    """The largest TPR among ROC points with FPR <= ``fpr_level`` (no interpolation: an achievable threshold)."""
    fpr, tpr = roc_points(labels, scores)
    return float(tpr[fpr <= fpr_level].max())


def precision_at_k(labels, scores, k: int) -> float:
    """Fraction of poisoned samples among the ``k`` highest scores (ties broken by position, stable)."""
    y, s = _check(labels, scores)
    if not 1 <= k <= len(y):
        raise ValueError(f"k must be in [1, {len(y)}], got {k}")
    return float(y[np.argsort(-s, kind="mergesort")[:k]].mean())


def recall_at_fraction(labels, scores, fraction: float = 0.05) -> float:
    """Fraction of all poisoned samples found in the top ``ceil(fraction·N)`` scores (the paper's removal of the
    top x%)."""
    y, s = _check(labels, scores)
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    top = int(np.ceil(fraction * len(y)))
    return float(y[np.argsort(-s, kind="mergesort")[:top]].sum() / y.sum())


def bootstrap_interval(metric: Callable, labels, scores, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
                       ) -> tuple[float, float]:
    """Percentile ``(1 - alpha)`` interval of ``metric(labels, scores)`` over stratified bootstrap resamples
    (poisoned and clean resampled separately, so every resample keeps the poison count)."""
    y, s = _check(labels, scores)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    values = np.empty(n_boot)
    for b in range(n_boot):
        idx = np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]
        values[b] = metric(y[idx], s[idx])
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def detection_report(labels, scores, top_fraction: float = 0.05) -> dict[str, float]:
    """All headline metrics of one detector as a dict."""
    y, s = _check(labels, scores)
    return {
        "auroc": auroc(y, s),
        "pr_auc": pr_auc(y, s),
        "average_precision": average_precision(y, s),
        "fpr@95tpr": fpr_at_tpr(y, s, 0.95),
        "error@95tpr": detection_error_at_tpr(y, s, 0.95),
        "error@95tpr_released": detection_error_at_tpr_released(y, s, 0.95),
        "tpr@0.1%fpr": tpr_at_fpr(y, s, 0.001),
        "tpr@1%fpr": tpr_at_fpr(y, s, 0.01),
        f"recall@top{top_fraction:.0%}": recall_at_fraction(y, s, top_fraction),
        "precision@n_poison": precision_at_k(y, s, int(y.sum())),
        "positive_rate": float(y.mean()),
    }
