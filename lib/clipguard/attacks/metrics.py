"""Attack success rates (evaluation.md Section 4) and across-seed intervals.

Definitions implemented:

* **Targeted ASR** (4.1, RoCLIP's "poison success rate"): the fraction of targets whose **clean** target image is
  classified zero-shot as its adversarial class (top-1; top-5 as RoCLIP/SafeCLIP's evaluator also logs). With 16
  targets it moves in steps of 1/16; report the count with the percentage.
* **Backdoor ASR** (4.2, the detection paper's code and the papers' intent):
  ``#{i : y_i != t and top-1 of T(x_i) is t} / #{i : y_i != t}``: triggered test images whose true class is not the
  target, classified as the target. Report the trigger's test-time placement with it (attacks.md Section 7).
* :func:`cleanclip_release_asr`: what the CleanCLIP release computes (4.3), **for comparison only**.

The pure functions on logits (:func:`targeted_success`, :func:`backdoor_success`) do the counting; the model-level
functions (:func:`targeted_asr`, :func:`backdoor_asr`) embed and call them. :func:`mean_interval` summarises a
metric over seeds (t-interval or bootstrap).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..data import CLIP_TEMPLATES, ImageCaptionSet
from ..evaluate import zero_shot_classifier, zero_shot_logits
from .build import PoisonedSet, TargetSet
from .triggers import Trigger, make_trigger, to_uint8

__all__ = ["ASR", "targeted_success", "backdoor_success", "cleanclip_release_asr", "targeted_asr", "backdoor_asr",
           "multi_target_backdoor_asr", "triggered_test_images", "mean_interval", "BACKDOOR_ASR_DEFINITION",
           "TARGETED_ASR_DEFINITION"]

TARGETED_ASR_DEFINITION = ("targeted ASR (evaluation.md 4.1): fraction of targets whose clean image is classified "
                           "zero-shot as its adversarial class within the top k")
BACKDOOR_ASR_DEFINITION = ("backdoor ASR (evaluation.md 4.2): triggered test images with true class != target, "
                           "fraction classified zero-shot as the target (top-1); target-class images excluded")


@dataclass
class ASR:
    """Counts of an attack-success computation: ``successes`` of ``total`` eligible items, and the per-item
    success flags (over the eligible items, in order)."""

    successes: int
    total: int
    per_item: torch.Tensor

    @property
    def rate(self) -> float:
        return self.successes / self.total if self.total else float("nan")

    def to_dict(self, prefix: str = "") -> dict:
        return {f"{prefix}successes": self.successes, f"{prefix}total": self.total, f"{prefix}asr": self.rate}


def _topk_hits(logits: torch.Tensor, wanted: torch.Tensor, k: int) -> torch.Tensor:
    if logits.ndim != 2:
        raise ValueError(f"logits must be [N, C], got {tuple(logits.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, logits.shape[1])
    return logits.topk(k, dim=1).indices.eq(wanted.reshape(-1, 1)).any(1)


def targeted_success(logits: torch.Tensor, adversarial_labels: Sequence[int] | torch.Tensor, k: int = 1) -> ASR:
    """Targets (rows of ``logits`` for the clean target images) whose adversarial label is among the top ``k``."""
    adversarial = torch.as_tensor(adversarial_labels, dtype=torch.long)
    if len(adversarial) != len(logits):
        raise ValueError(f"{len(logits)} logit rows but {len(adversarial)} adversarial labels")
    hits = _topk_hits(logits, adversarial, k)
    return ASR(int(hits.sum()), len(hits), hits)


def backdoor_success(logits: torch.Tensor, true_labels: Sequence[int] | torch.Tensor, target: int, k: int = 1) -> ASR:
    """Rows of ``logits`` (triggered test images) with true label != ``target`` whose top-``k`` prediction includes
    ``target`` (k = 1 is the papers' ASR); rows of the target class are excluded from numerator and denominator."""
    labels = torch.as_tensor(true_labels, dtype=torch.long)
    if len(labels) != len(logits):
        raise ValueError(f"{len(logits)} logit rows but {len(labels)} labels")
    eligible = labels != int(target)
    hits = _topk_hits(logits[eligible], torch.full((int(eligible.sum()),), int(target)), k)
    return ASR(int(hits.sum()), len(hits), hits)


def cleanclip_release_asr(logits: torch.Tensor, true_labels: Sequence[int] | torch.Tensor, target: int,
                          variant: str = "zeroshot") -> ASR:
    """**Not the ASR.** What the CleanCLIP release reports (evaluation.md 4.3), for side-by-side comparison.

    ``variant="zeroshot"``: the printed ``zeroshot_top1`` with ``--asr``: top-1 accuracy of the triggered images
    against their **true** labels (all images), which is the accuracy under the trigger, not the ASR.
    ``"zeroshot_fixed"``: the maintainer's proposed fix (issue #14): predictions equal to the target over **all**
    images, target class included. ``"probe"``: the linear-probe/fine-tune path: predictions equal to the target
    among images whose label is not the target, divided by **all** images."""
    labels = torch.as_tensor(true_labels, dtype=torch.long)
    predicted = logits.argmax(1)
    if variant == "zeroshot":
        hits = predicted.eq(labels)
    elif variant == "zeroshot_fixed":
        hits = predicted.eq(int(target))
    elif variant == "probe":
        hits = predicted.eq(int(target)) & labels.ne(int(target))
    else:
        raise ValueError(f"variant must be 'zeroshot', 'zeroshot_fixed' or 'probe', got {variant!r}")
    return ASR(int(hits.sum()), len(hits), hits)


# --------------------------------------------------------------------------------------------------------------
# Model-level ASR
# --------------------------------------------------------------------------------------------------------------


def targeted_asr(model, targets: TargetSet | PoisonedSet, classnames: Sequence[str] | None = None,
                 templates: Sequence[str] | None = None, ks: Sequence[int] = (1, 5),
                 classifier: torch.Tensor | None = None) -> dict:
    """Targeted ASR of a model: zero-shot classify the clean target images over ``classnames`` (default: the
    targets' class names) with ``templates`` (default: the 80 CLIP templates), success if the adversarial class is
    in the top k. Returns ``n_targets`` and, per k, ``top{k}_successes``, ``top{k}_asr`` and ``per_target_top{k}``
    (a list of 0/1). ``classifier`` (class embeddings) skips the text encoding."""
    if isinstance(targets, PoisonedSet):
        if targets.targets is None:
            raise ValueError("this poisoned set has no targets (not a targeted attack)")
        targets = targets.targets
    classnames = classnames or targets.classnames
    if classifier is None:
        if not classnames:
            raise ValueError("targeted_asr needs class names")
        classifier = zero_shot_classifier(model, list(classnames), list(templates or CLIP_TEMPLATES))
    logits = zero_shot_logits(model, targets.float_images(), classifier)
    out: dict = {"n_targets": len(targets), "definition": TARGETED_ASR_DEFINITION}
    for k in ks:
        result = targeted_success(logits, targets.adversarial, k)
        out[f"top{k}_successes"] = result.successes
        out[f"top{k}_asr"] = result.rate
        out[f"per_target_top{k}"] = result.per_item.int().tolist()
    return out


def _class_index(classnames: Sequence[str], target: str | int) -> int:
    if isinstance(target, (int, np.integer)):
        if not 0 <= int(target) < len(classnames):
            raise ValueError(f"target index {target} outside 0..{len(classnames) - 1}")
        return int(target)
    if target not in classnames:
        raise ValueError(f"target class {target!r} not among the evaluation classes {list(classnames)}")
    return list(classnames).index(target)


def triggered_test_images(images: torch.Tensor, trigger: Trigger, generator: torch.Generator | None = None,
                          overflow: str = "clip") -> torch.Tensor:
    """Test images (float ``[B, 3, H, W]`` in [0, 1]) triggered and rounded to 8 bits exactly as training poisons
    are stored: ``overflow`` is the poison spec's float -> uint8 conversion (``clip``, or CleanCLIP's ``wrap``), so
    the test-time trigger is the trained one."""
    return to_uint8(trigger(images, generator), overflow).float().div(255.0)


@torch.no_grad()
def backdoor_asr(model, test_set: ImageCaptionSet, trigger: Trigger | dict, target_class: str | int,
                 generator: torch.Generator | None = None, classnames: Sequence[str] | None = None,
                 templates: Sequence[str] | None = None, ks: Sequence[int] = (1,), batch_size: int = 256,
                 classifier: torch.Tensor | None = None, quantize: bool = True, per_item: bool = False,
                 overflow: str = "clip") -> dict:
    """Backdoor ASR (evaluation.md 4.2) of a model on a labelled test set.

    Every test image is triggered at the trigger's declared placement (use ``trigger.with_params(placement=...)``
    for a test-time placement, attacks.md Section 7; random triggers draw from ``generator``), zero-shot classified
    over ``classnames`` (default: the test set's) with ``templates`` (default: the test set's, else the 80 CLIP
    templates); images whose true class is the target are excluded. ``quantize``: round triggered images to 8 bits
    as the poisons are stored, with the poison spec's ``overflow`` (:func:`triggered_test_images`). Returns
    ``successes``, ``total`` (eligible images), ``asr`` (top-1) and, for other k, ``top{k}_asr``; plus ``n_test``,
    ``n_excluded``, ``target``, ``trigger`` (identity) and ``placement``; ``per_item`` adds the 0/1 list over
    eligible images (for a bootstrap over test images)."""
    if test_set.labels is None:
        raise ValueError(f"{test_set.name} has no labels: backdoor ASR needs true classes")
    trigger = trigger if isinstance(trigger, Trigger) else make_trigger(trigger)
    classnames = list(classnames or test_set.classnames or [])
    target = _class_index(classnames, target_class)
    if classifier is None:
        classifier = zero_shot_classifier(model, classnames, list(templates or test_set.templates or CLIP_TEMPLATES))
    logits = []
    for start in range(0, len(test_set), batch_size):
        images = test_set.float_images(slice(start, start + batch_size))
        images = triggered_test_images(images, trigger, generator, overflow) if quantize else trigger(images, generator)
        logits.append(zero_shot_logits(model, images, classifier))
    logits = torch.cat(logits) if logits else torch.empty(0, len(classnames))
    out: dict = {}
    for k in ks:
        result = backdoor_success(logits, test_set.labels, target, k)
        if k == 1:
            out.update(result.to_dict())
            if per_item:
                out["per_item"] = result.per_item.int().tolist()
        else:
            out[f"top{k}_successes"], out[f"top{k}_asr"] = result.successes, result.rate
    n_excluded = int((test_set.labels == target).sum())
    out.update({"n_test": len(test_set), "n_excluded": n_excluded, "target": classnames[target],
                "trigger": trigger.identity(), "placement": trigger.params.get("placement", "whole image"),
                "definition": BACKDOOR_ASR_DEFINITION})
    return out


def multi_target_backdoor_asr(model, test_set: ImageCaptionSet, components: Sequence[dict],
                              generator: torch.Generator | None = None, **kwargs) -> dict[str, dict]:
    """Per-trigger backdoor ASR of a multi-target attack (attacks.md 5.11): ``components`` as in
    :class:`~clipguard.attacks.BackdoorSpec` (``{"trigger": ..., "target_class": ...}``); each test image is
    triggered with each component's trigger and scored against that component's target. Keys
    ``"{index}:{trigger}->{target}"``; the zero-shot classifier is computed once."""
    classnames = list(kwargs.pop("classnames", None) or test_set.classnames or [])
    templates = kwargs.pop("templates", None)
    classifier = kwargs.pop("classifier", None)
    if classifier is None:
        classifier = zero_shot_classifier(model, classnames, list(templates or test_set.templates or CLIP_TEMPLATES))
    out = {}
    for i, component in enumerate(components):
        trigger = make_trigger(component["trigger"])
        out[f"{i}:{trigger.name}->{component['target_class']}"] = backdoor_asr(
            model, test_set, trigger, component["target_class"], generator, classnames=classnames,
            classifier=classifier, **kwargs)
    return out


# --------------------------------------------------------------------------------------------------------------
# Intervals over seeds
# --------------------------------------------------------------------------------------------------------------


def mean_interval(values: Sequence[float], confidence: float = 0.95, method: str = "t", n_boot: int = 10_000,
                  seed: int = 0) -> dict:
    """Mean and a two-sided ``confidence`` interval of ``values`` (e.g. one ASR per seed).

    ``method="t"``: Student t interval, mean +- t_{(1+c)/2, n-1} * s / sqrt(n). ``"bootstrap"``: percentile
    bootstrap of the mean with ``n_boot`` resamples drawn from ``seed`` (also usable over per-image 0/1 successes of
    one run). With a single value the bounds are NaN. Returns ``mean``, ``low``, ``high``, ``half_width``, ``std``,
    ``n``, ``method``, ``confidence``."""
    x = np.asarray(list(values), dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError("mean_interval needs a non-empty list of numbers")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n, mean = len(x), float(x.mean())
    std = float(x.std(ddof=1)) if n > 1 else float("nan")
    if n < 2:
        low = high = float("nan")
    elif method == "t":
        from scipy import stats

        half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
        low, high = mean - half, mean + half
    elif method == "bootstrap":
        rng = np.random.default_rng(seed)
        step = max(1, 2_000_000 // n)  # resample in chunks: bounded memory for per-image values
        means = np.concatenate([x[rng.integers(0, n, size=(min(step, n_boot - i), n))].mean(1)
                                for i in range(0, n_boot, step)])
        low, high = (float(v) for v in np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2]))
    else:
        raise ValueError(f"method must be 't' or 'bootstrap', got {method!r}")
    return {"mean": mean, "low": low, "high": high, "half_width": (high - low) / 2, "std": std, "n": n,
            "method": method, "confidence": confidence}
