"""The detection chapters' helpers (presentation tier: nothing here changes what a run computes).

* :func:`attack_families` names the attack families of the chapter's Table 1 as poison specs built exactly as the
  other chapters build them (``scenarios.backdoor_poison`` with default fields), so every attacked run is trained
  once and shared; :func:`family_asr` reads one family's attack success from its run (the mean over the triggers of
  a multi-target attack).
* :func:`auroc_interval`: the stratified bootstrap interval of :func:`clipguard.detect.bootstrap_interval` for the
  AUROC, with the very same resamples, but evaluated for all resamples at once (Mann-Whitney counts on weights), so
  that a table of a hundred cells takes seconds; :func:`auroc_frame` and :func:`interval_text` tabulate it.
* :func:`poisons_per_reference`, :func:`expected_copies` and :func:`first_crossing`: the regime condition of the
  local detectors (poisons, or near-duplicates of one poison, per reference set against k) as numbers.
* :func:`median_seconds`, :func:`machine_load` and :func:`stored_timings`: wall times as a median of repeats,
  stored once with the machine load they were measured under.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from .. import scenarios
from ..profiles import Profile, resolve

__all__ = ["DETECTOR_LABELS", "FAMILY_LABELS", "MULTI_TRIGGERS", "MULTI_TARGETS", "attack_families", "family_asr",
           "auroc_interval", "auroc_frame", "interval_text", "poisons_per_reference", "expected_copies",
           "first_crossing", "median_seconds", "machine_load", "stored_timings"]

#: Short column names of the detectors (the chapter's tables must fit the book's content column).
DETECTOR_LABELS = {"k_distance": "k-dist", "lid": "LID", "slof": "SLOF", "dao": "DAO", "lof": "LOF",
                   "isolation_forest": "IForest", "clip_score": "CLIPScore", "gmm": "GMM", "abl": "ABL",
                   "cognitive_distillation": "CD"}
#: Row names of the attack families, in the order of the chapter's Table 1.
FAMILY_LABELS = {"patch": "BadNet patch", "blended": "Blended", "sig": "SIG", "wanet": "WaNet",
                 "label_consistent": "label-consistent", "nashville": "Nashville",
                 "multi_trigger": "multi-trigger, 1 target", "multi_target": "multi-trigger, 3 targets",
                 "targeted": "targeted poisoning"}
#: The triggers of the multi-trigger attacks (the detection paper's ``cc3m_multi_trigger``: a checkerboard patch,
#: the Nashville filter and a WaNet warp), as the comparison chapter uses them.
MULTI_TRIGGERS = ({"name": "badnet_checkerboard"}, {"name": "nashville"}, {"name": "wanet"})
#: The target of each trigger in the multi-target variant (the first is the standard backdoor's target).
MULTI_TARGETS = ("bag", "sneaker", "trouser")


def _profile(profile: str | Profile) -> Profile:
    return resolve(profile) if isinstance(profile, str) else profile


def attack_families(profile: str | Profile) -> dict[str, dict]:
    """The poison spec of each attack family of Table 1, keyed as :data:`FAMILY_LABELS`.

    Backdoors are ``scenarios.backdoor_poison(profile, trigger=...)`` with default fields (the book's standard
    count and target); label-consistent keeps the images' own captions (``caption_source="keep"``); the
    multi-target variant gives each of its three trigger/target pairs the standard count (one target's backdoor is
    as strong as the standard one); targeted poisoning is ``scenarios.targeted_poison(profile)``."""
    p = _profile(profile)
    backdoor = lambda **options: scenarios.backdoor_poison(p, **options)  # noqa: E731
    standard = backdoor()
    multi_target = {"kind": "backdoor", "count": standard["count"] * len(MULTI_TRIGGERS),
                    "components": [{"trigger": dict(t), "target_class": c} for t, c in zip(MULTI_TRIGGERS, MULTI_TARGETS)]}
    return {"patch": standard, "blended": backdoor(trigger="blended"), "sig": backdoor(trigger="sig"),
            "wanet": backdoor(trigger="wanet"),
            "label_consistent": backdoor(trigger="badnet_htba", caption_source="keep"),
            "nashville": backdoor(trigger="nashville"),
            "multi_trigger": backdoor(trigger={"name": "multi", "triggers": [dict(t) for t in MULTI_TRIGGERS]}),
            "multi_target": multi_target, "targeted": scenarios.targeted_poison(p)}


def family_asr(run) -> float:
    """A run's attack success as a fraction: targeted top-1 ASR, backdoor ASR, or for a multi-target backdoor the
    mean of its per-trigger ASRs (``backdoor0_asr``, ``backdoor1_asr``, ...). Raises when the run has none."""
    metrics = run.metrics
    kind = (run.config.get("poison") or {}).get("kind")
    if kind == "targeted" and metrics.get("targeted_top1_asr") is not None:
        return float(metrics["targeted_top1_asr"])
    if kind == "backdoor":
        if metrics.get("backdoor_asr") is not None:
            return float(metrics["backdoor_asr"])
        parts = [float(v) for key, v in sorted(metrics.items())
                 if key.startswith("backdoor") and key.endswith("_asr") and key[len("backdoor"):-len("_asr")].isdigit()]
        if parts:
            return float(np.mean(parts))
    raise ValueError(f"run {run.id} has no attack success metric (poison kind {kind!r})")


def _check(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} must be 1-D of the same length")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (clean) / 1 (poisoned) or booleans")
    if not np.isfinite(s).all():
        raise ValueError(f"scores hold NaN/inf (first at index {int(np.flatnonzero(~np.isfinite(s))[0])})")
    y = y.astype(np.int64)
    if y.min() == y.max():
        raise ValueError("labels need both classes (poisoned and clean)")
    return y, s


def _weighted_auroc(pos: np.ndarray, neg_sorted: np.ndarray, pos_w: np.ndarray, neg_w: np.ndarray) -> np.ndarray:
    """AUROC of each row of weights (``pos_w`` [B, P] counts of each positive, ``neg_w`` [B, M] of each negative in
    ``neg_sorted`` order): the Mann-Whitney statistic with ties counted one half, = the trapezoidal ROC area."""
    cumulative = np.concatenate([np.zeros((len(neg_w), 1)), np.cumsum(neg_w, axis=1)], axis=1)
    below = cumulative[:, np.searchsorted(neg_sorted, pos, side="left")]
    tied = cumulative[:, np.searchsorted(neg_sorted, pos, side="right")] - below
    return (pos_w * (below + 0.5 * tied)).sum(1) / (pos_w.sum(1) * neg_w.sum(1))


def auroc_interval(labels, scores, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0,
                   chunk: int = 100) -> tuple[float, float]:
    """The percentile ``(1 - alpha)`` interval of the AUROC over stratified bootstrap resamples: the same
    resamples, drawn in the same order from ``numpy.random.default_rng(seed)``, and the same percentiles as
    ``clipguard.detect.bootstrap_interval(clipguard.detect.auroc, ...)``, with all resamples evaluated together
    (``chunk`` at a time)."""
    y, s = _check(labels, scores)
    if n_boot < 1 or not 0 < alpha < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < alpha < 1, got {n_boot}, {alpha}")
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    order = np.argsort(s[neg], kind="mergesort")
    neg_sorted = s[neg][order]
    values = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        rows = range(start, min(start + chunk, n_boot))
        pos_w = np.empty((len(rows), len(pos)))
        neg_w = np.empty((len(rows), len(neg)))
        for r, _ in enumerate(rows):
            pos_w[r] = np.bincount(rng.choice(len(pos), len(pos)), minlength=len(pos))
            neg_w[r] = np.bincount(rng.choice(len(neg), len(neg)), minlength=len(neg))[order]
        values[start:start + len(rows)] = _weighted_auroc(s[pos], neg_sorted, pos_w, neg_w)
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def auroc_frame(labels, scores: Mapping[str, np.ndarray], n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per scored key: ``key``, ``auroc`` and its bootstrap interval ``low``/``high`` (fractions)."""
    from ..detect import auroc

    rows = []
    for key, values in scores.items():
        low, high = auroc_interval(labels, values, n_boot=n_boot, seed=seed)
        rows.append({"key": key, "auroc": auroc(labels, values), "low": low, "high": high})
    return pd.DataFrame(rows, columns=["key", "auroc", "low", "high"])


def interval_text(auroc: float, low: float, high: float) -> str:
    """``"97.3 (95–99)"``: the AUROC in percent with one decimal and its interval rounded to whole percent (floor
    and ceiling, so the printed interval contains the computed one)."""
    if not (0 <= low <= high <= 1 and 0 <= auroc <= 1):
        raise ValueError(f"need 0 <= low <= high <= 1 and an AUROC in [0, 1], got {auroc}, {low}, {high}")
    lo, hi = int(np.floor(100 * low + 1e-9)), int(np.ceil(100 * high - 1e-9))
    return f"{100 * auroc:.1f} ({lo}–{hi})"


def poisons_per_reference(n_poison: int, n: int, reference_size: int | None) -> float:
    """Expected number of poisons in a reference set of ``reference_size`` drawn from ``n`` pairs of which
    ``n_poison`` are poisoned (``None``: the whole set)."""
    if not 0 <= n_poison <= n or n < 1:
        raise ValueError(f"need 0 <= n_poison <= n and n >= 1, got {n_poison}, {n}")
    size = n if reference_size is None else int(reference_size)
    if not 1 <= size <= n:
        raise ValueError(f"reference_size must be in 1..{n}, got {reference_size}")
    return n_poison * size / n


def expected_copies(duplicates: int, reference_size: int | None, n: int) -> float:
    """Expected number of a poison's own near-duplicates (the other ``duplicates - 1`` copies) in the reference set
    of ``reference_size`` it is scored against, drawn at random from the other ``n - 1`` pairs (``None``: all)."""
    if duplicates < 1 or n < 2:
        raise ValueError(f"need duplicates >= 1 and n >= 2, got {duplicates}, {n}")
    size = n if reference_size is None else int(reference_size)
    if not 1 <= size <= n:
        raise ValueError(f"reference_size must be in 1..{n}, got {reference_size}")
    return (duplicates - 1) * (size - 1) / (n - 1)


def first_crossing(x: Sequence[float], y: Sequence[float], level: float) -> float | None:
    """The smallest ``x`` at which ``y`` (sampled at increasing ``x``) falls below ``level``, interpolated linearly
    between the last sample at or above it and the first below; the first ``x`` if ``y`` starts below; ``None``
    if it never does."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.ndim != 1 or x.shape != y.shape or len(x) == 0:
        raise ValueError(f"x {x.shape} and y {y.shape} must be 1-D, non-empty and of the same length")
    if np.any(np.diff(x) <= 0):
        raise ValueError("x must increase strictly")
    below = np.flatnonzero(y < level)
    if not below.size:
        return None
    i = int(below[0])
    if i == 0:
        return float(x[0])
    x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
    return float(x0 + (x1 - x0) * (y0 - level) / (y0 - y1))


def median_seconds(fn: Callable[[], object], repeats: int = 3) -> tuple[float, list[float]]:
    """Wall seconds of ``fn()`` as the median of ``repeats`` calls (robust to one call slowed by other processes),
    and every call's time."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), times


def machine_load() -> dict:
    """What the machine was doing: 1-minute load average, CPU cores and torch threads (a load above the cores
    means other processes competed for them)."""
    import torch

    return {"load_1min": os.getloadavg()[0], "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}


def stored_timings(store, config: dict, measure: Callable[[], dict[str, float]]) -> tuple[dict[str, float], dict]:
    """Timings measured once and kept in the run store under ``config`` (name what was timed: run ids, sizes,
    repeats): ``measure()`` returns seconds by label; the machine load before and after is stored beside them.
    Returns ``(seconds, load)``; a rebuild reads the stored figures instead of timing again."""
    def compute(work) -> dict:
        before = machine_load()
        seconds = measure()
        after = machine_load()
        return {"seconds": seconds, "load_before": before, "load_after": after}

    result = store.get_or_compute({"kind": "detector-timings", **config}, compute)
    return result.metrics["seconds"], {"before": result.metrics["load_before"], "after": result.metrics["load_after"]}
