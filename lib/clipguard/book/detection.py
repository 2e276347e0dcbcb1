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

from .. import comparison as _comparison
from ..profiles import Profile, resolve

__all__ = ["DETECTOR_LABELS", "FAMILY_LABELS", "MULTI_TRIGGERS", "MULTI_TARGETS", "attack_families", "family_asr",
           "component_asrs", "family_took",
           "auroc_interval", "auroc_frame", "interval_text", "poisons_per_reference", "expected_copies",
           "first_crossing", "median_seconds", "machine_load", "stored_timings", "time_detectors", "cell_table", "auroc_range",
           "neighbour_poison_share"]

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
MULTI_TRIGGERS = tuple(dict(t) for t in _comparison.MULTI_TRIGGERS)
#: The target of each trigger in the multi-target variant (the first is the standard backdoor's target).
MULTI_TARGETS = ("bag", "sneaker", "trousers")


def _profile(profile: str | Profile) -> Profile:
    return resolve(profile) if isinstance(profile, str) else profile


def attack_families(profile: str | Profile) -> dict[str, dict]:
    """The poison spec of each attack family of Table 1, keyed as :data:`FAMILY_LABELS`: the comparison chapter's
    standard attacks (:func:`clipguard.comparison.standard_poisons`, so both chapters share their runs) and the
    multi-target variant, which gives each of its three trigger/target pairs the standard count (one target's
    backdoor is as strong as the standard one)."""
    p = _profile(profile)
    families = _comparison.standard_poisons(p)
    standard = families["patch"]
    families["multi_target"] = {
        "kind": "backdoor", "count": standard["count"] * len(MULTI_TRIGGERS),
        "components": [{"trigger": dict(t), "target_class": c} for t, c in zip(MULTI_TRIGGERS, MULTI_TARGETS)]}
    return {name: families[name] for name in FAMILY_LABELS}


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
        parts = component_asrs(run)
        if parts:
            return float(np.mean(parts))
    raise ValueError(f"run {run.id} has no attack success metric (poison kind {kind!r})")


def component_asrs(run) -> list[float]:
    """The per-trigger ASRs of a multi-target backdoor run (``backdoor0_asr``, ``backdoor1_asr``, ... in component
    order); empty for any other run."""
    metrics = run.metrics
    found = {int(key[len("backdoor"):-len("_asr")]): float(v) for key, v in metrics.items()
             if key.startswith("backdoor") and key.endswith("_asr") and key[len("backdoor"):-len("_asr")].isdigit()}
    return [found[i] for i in sorted(found)]


def family_took(run, threshold: float | None = None) -> bool:
    """Whether an attack family took against plain CLIP (:func:`clipguard.book.checks.attack_took`): for a
    multi-target backdoor, every one of its triggers must take (a mean over triggers could pass with one strong
    trigger and two that did nothing)."""
    from .checks import ATTACK_TOOK, attack_took

    threshold = ATTACK_TOOK if threshold is None else threshold
    parts = component_asrs(run)
    if parts:
        return all(attack_took(v, threshold) for v in parts)
    return attack_took(family_asr(run), threshold)


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
        try:
            low, high = auroc_interval(labels, values, n_boot=n_boot, seed=seed)
        except ValueError as error:
            raise ValueError(f"scores {key!r}: {error}") from None
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


def time_detectors(model, dataset, losses: np.ndarray, k: int = 16, batch: int = 256, repeats: int = 3,
                   loss_epochs: int = 10, cd_images: int = 64, seed: int = 0, cd_options: dict | None = None
                   ) -> dict[str, float]:
    """Median wall seconds (over ``repeats`` rounds) of each detector on ``dataset`` (N pairs) with ``model``. Each
    round times every step once, in turn, so that a change in machine load during the measurement hits all steps
    alike rather than a few. Steps:

    * ``embed``: the image and caption embedding pass every embedding-based detector needs first;
    * ``<detector>``: its score from the embeddings (k_distance, lid, slof, dao, lof, isolation_forest against
      batch-local references of ``batch``; ``dao (global)`` against all pairs; clip_score; abl from ``losses``);
    * ``abl loss pass``: one pass of per-pair losses over the dataset (ABL needs one after each of its first
      ``loss_epochs`` epochs: multiply);
    * ``cognitive_distillation``: its optimisation on the first ``cd_images`` images in one batch, scaled to N
      (each image's mask is optimised on its own, so the cost is linear in N); ``cd_options``: settings of
      :class:`~clipguard.detect.cognitive_distillation.CognitiveDistillation` (default: the released ones).

    Everything is per N pairs (scale by 10,000 / N for the book's "per 10k")."""
    from ..detect import cognitive_distillation, embed, score_many
    from ..evaluate import pair_statistics

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    n = len(dataset)
    image, text = embed(model, dataset)
    few = min(cd_images, n)
    images = dataset.float_images(slice(0, few))
    options = {"k": k, "reference": "batch", "batch_size": batch, "seed": seed}
    steps: dict[str, Callable[[], object]] = {"embed": lambda: embed(model, dataset)}
    for name in ("k_distance", "lid", "slof", "dao", "lof", "isolation_forest"):
        steps[name] = lambda name=name: score_many([name], image, text, **options)
    steps["dao (global)"] = lambda: score_many(["dao"], image, text, k=k)
    steps["clip_score"] = lambda: score_many(["clip_score"], image, text)
    steps["abl"] = lambda: score_many(["abl"], losses=losses, abl_epochs=min(loss_epochs, len(losses)))
    steps["abl loss pass"] = lambda: pair_statistics(model, dataset)
    cd = {"seed": seed, "batch_size": few, **(cd_options or {})}
    steps["cognitive_distillation"] = lambda: cognitive_distillation(model, images, **cd)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(median_seconds(step, 1)[0])
    out = {name: statistics.median(values) for name, values in times.items()}
    out["cognitive_distillation"] *= n / few
    return out


def cell_table(results: pd.DataFrame, variant: str, detectors: Sequence[str], families: Sequence[str],
               row_labels: Mapping[str, str], value: str = "cell") -> pd.DataFrame:
    """One variant of a long results frame (columns ``family``, ``variant``, ``detector`` and ``value``) as a table:
    one row per family (in ``families`` order, named by ``row_labels``), one column per detector (short names of
    :data:`DETECTOR_LABELS`); missing cells stay empty."""
    missing = {"family", "variant", "detector", value} - set(results.columns)
    if missing:
        raise KeyError(f"cell_table: results lack column(s) {sorted(missing)}")
    part = results[(results.variant == variant) & results.detector.isin(list(detectors))]
    wide = part.pivot(index="family", columns="detector", values=value).reindex(index=list(families),
                                                                                columns=list(detectors))
    wide.index = [row_labels[f] for f in wide.index]
    wide.columns = [DETECTOR_LABELS.get(d, d) for d in wide.columns]
    return wide.reset_index().rename(columns={"index": "attack"})


def auroc_range(results: pd.DataFrame, variant: str, detector: str, above: float = 0.97) -> dict:
    """Over the rows of ``results`` for one variant and detector: the AUROC range as text (``"95.1%–99.8%"``, or
    ``"—"`` when there are none), how many exceed ``above`` and how many there are."""
    values = results[(results.variant == variant) & (results.detector == detector)].auroc
    if not len(values):
        return {"text": "—", "above": 0, "total": 0}
    return {"text": f"{values.min():.1%}–{values.max():.1%}", "above": int((values > above).sum()),
            "total": int(len(values))}


def neighbour_poison_share(embeddings: np.ndarray, labels, k: int = 16, reference_size: int | None = None,
                           seed: int = 0) -> float:
    """Mean over the poisoned points of the share of their k nearest neighbours (Euclidean, self excluded) that are
    poisoned too: against all points (``reference_size=None``) or within shuffled batches of ``reference_size``
    (``numpy.random.default_rng(seed)``'s permutation, as the detectors' batch-local reference; a last batch
    smaller than k + 1 joins the one before)."""
    from ..detect import knn

    x = np.asarray(embeddings)
    y = np.asarray(labels).astype(bool)
    if x.ndim != 2 or y.shape != (len(x),):
        raise ValueError(f"embeddings [N, D] and labels [N] needed, got {x.shape} and {y.shape}")
    if not y.any():
        raise ValueError("no poisoned point among the labels")
    n = len(x)
    if reference_size is None:
        blocks = [np.arange(n)]
    else:
        order = np.random.default_rng(seed).permutation(n)
        blocks = [order[s:s + reference_size] for s in range(0, n, reference_size)]
        if len(blocks) > 1 and len(blocks[-1]) < k + 1:
            blocks[-2] = np.concatenate([blocks[-2], blocks.pop()])
    shares = []
    for block in blocks:
        if len(block) < k + 1:
            raise ValueError(f"a reference set of {len(block)} points has fewer than k + 1 = {k + 1}")
        poisoned = y[block]
        if not poisoned.any():
            continue
        graph = knn(x[block], None, k)
        shares.append(poisoned[graph.indices[poisoned]].mean(1))
    return float(np.concatenate(shares).mean())
