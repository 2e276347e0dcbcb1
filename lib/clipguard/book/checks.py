"""Checks that guard what the book states about its results (presentation only: nothing here changes a run).

* :func:`poison_rate` is the book's one definition of a poison rate (the papers': poisons over the pairs of the
  training set the model sees, i.e. the poisoned set); :func:`run_poison_rate` applies it to a stored run and
  :func:`format_rate` prints it the same way everywhere.
* :func:`attack_took` and :func:`mark_untaken`: an attack can only judge a defence if it first succeeds against
  plain CLIP at that profile; defended rows whose undefended attack did not take are marked, not compared.
* :func:`utility_drop` / :func:`collapse_note`: a defence that lowers attack success by wrecking the model must say
  so next to its attack success.
* :func:`describe_auroc` and :func:`compare`: words chosen from numbers, so sentences cannot drift from them.
"""

from __future__ import annotations

import math
from typing import Hashable, Mapping

import pandas as pd

__all__ = ["ATTACK_TOOK", "COLLAPSE_DROP", "poison_rate", "run_poison_rate", "format_rate", "attack_took",
           "mark_untaken", "utility_drop", "collapse_note", "describe_auroc", "compare", "count_words"]

#: An attack "took" against plain CLIP when at least this share of its targets (targeted) or triggered test images
#: (backdoor) lands in the attacker's class. With 10 classes a random guess hits a given class 10% of the time; a
#: quarter is clearly above that and below the weakest undefended attack the papers judge a defence with
#: (RoCLIP Table 6, Blended against CLIP: 28%).
ATTACK_TOOK = 0.25

#: A defended model whose accuracy falls by more than this (absolute, fraction) below plain CLIP's under the same
#: attack pays for its attack success with accuracy: the sentence giving its attack success must say so.
COLLAPSE_DROP = 0.10
#: ... and by more than this it has collapsed: its attack success says little about the defence.
COLLAPSED = 0.30


def _fraction(value: float, name: str) -> float:
    value = float(value)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a fraction in [0, 1], got {value!r}")
    return value


def poison_rate(poisons: int, clean: int) -> float:
    """The poison rate as the papers define it: poisoned pairs over the pairs of the training set the model sees
    (the poisoned set: ``clean + poisons`` for inserted poisons). 200 poisons inserted into 10,000 clean pairs:
    200 / 10,200 = 1.96%."""
    if int(poisons) != poisons or int(clean) != clean or poisons < 0 or clean < 0:
        raise ValueError(f"poisons and clean must be non-negative integers, got {poisons!r} and {clean!r}")
    seen = int(poisons) + int(clean)
    if seen == 0:
        raise ValueError("poison rate of an empty training set")
    return int(poisons) / seen


def run_poison_rate(run) -> float:
    """:func:`poison_rate` of a stored run (its ``poison_count`` and ``n_train``, the size of the set it trained
    on); 0 for a run without poisons."""
    metrics = run.metrics
    if "n_train" not in metrics:
        raise ValueError(f"run {run.id}: no 'n_train' metric; cannot state its poison rate")
    poisons = int(metrics.get("poison_count", 0) or 0)
    return poison_rate(poisons, int(metrics["n_train"]) - poisons)


def format_rate(rate: float, digits: int = 2) -> str:
    """A poison rate as the book prints it: a percentage with ``digits`` decimals (``0.0196`` -> ``"1.96%"``)."""
    return f"{_fraction(rate, 'rate'):.{digits}%}"


def attack_took(asr: float | object, threshold: float = ATTACK_TOOK) -> bool:
    """Whether an attack succeeded against plain CLIP: ``asr`` (a fraction, or a stored run whose attack success is
    read with :func:`clipguard.book.tables.attack_success`) is at least ``threshold``."""
    if hasattr(asr, "metrics"):
        from .tables import attack_success

        value = attack_success(asr)
        if value is None:
            raise ValueError(f"run {asr.id} has no attack success (no targeted or backdoor attack)")
        asr = value
    return _fraction(asr, "asr") >= threshold


def mark_untaken(frame: pd.DataFrame, by: str | list[str] = "attack", method: str = "method",
                 asr: str = "asr", undefended: str = "CLIP", threshold: float = ATTACK_TOOK) -> pd.DataFrame:
    """``frame`` with two columns added: ``attack took`` (did the attack of the row's ``by`` group succeed against
    the ``undefended`` method, by :func:`attack_took` on that method's mean ``asr`` over its rows) and ``verdict``
    (empty where it took; "attack did not take against CLIP (x%): no conclusion" where it did not). Every group
    needs an undefended row: a defence cannot be judged without one."""
    by = [by] if isinstance(by, str) else list(by)
    missing = [c for c in by + [method, asr] if c not in frame.columns]
    if missing:
        raise KeyError(f"mark_untaken: no column(s) {missing}; columns are {list(frame.columns)}")
    out = frame.copy()
    took, verdict = {}, {}
    for key, group in out.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        base = group.loc[group[method] == undefended, asr].dropna()
        if base.empty:
            raise ValueError(f"mark_untaken: no {undefended!r} row with an {asr!r} value for "
                             f"{dict(zip(by, key))}: an attack must be measured against {undefended} first")
        mean = float(base.mean())
        took[key] = attack_took(mean, threshold)
        verdict[key] = "" if took[key] else (f"attack did not take against {undefended} ({mean:.1%} < "
                                             f"{threshold:.0%}): no conclusion")
    keys = [tuple(row) for row in out[by].itertuples(index=False)]
    out["attack took"] = [took[k] for k in keys]
    out["verdict"] = [verdict[k] for k in keys]
    return out


def utility_drop(defended: float, reference: float) -> float:
    """How much accuracy (fractions) the defended model lost against the reference (positive = worse)."""
    return _fraction(reference, "reference") - _fraction(defended, "defended")


def collapse_note(defended: Mapping[str, float], reference: Mapping[str, float], who: str = "this model",
                  reference_name: str = "CLIP", max_drop: float = COLLAPSE_DROP, collapsed: float = COLLAPSED) -> str:
    """A clause to put next to a defended model's attack success: empty when every accuracy in ``defended``
    (e.g. ``{"zero-shot": 0.25, "linear probe": 0.40}``) is within ``max_drop`` of ``reference``'s; otherwise
    "but {who}'s zero-shot is 25.0% and linear probe 40.0% against CLIP's 81.8% and 81.0%: ..." ending with "the
    model has collapsed, so its low attack success says little about the defence" (a loss over ``collapsed``) or
    "it pays up to N points of accuracy for its low attack success"."""
    unknown = set(defended) ^ set(reference)
    if unknown:
        raise KeyError(f"collapse_note: defended and reference name different accuracies: {sorted(unknown)}")
    worst = max(utility_drop(defended[k], reference[k]) for k in defended)
    if worst <= max_drop:
        return ""
    names = list(defended)
    ours = " and ".join(f"{k} {defended[k]:.1%}" for k in names)
    theirs = " and ".join(f"{reference[k]:.1%}" for k in names)
    verdict = ("the model has collapsed, so its low attack success says little about the defence" if worst > collapsed
               else f"it pays up to {100 * worst:.0f} points of accuracy for its low attack success")
    return f"but {who}'s {ours} against {reference_name}'s {theirs}: {verdict}"


def describe_auroc(auroc: float) -> str:
    """Words for how well a score separates two groups: AUROC 0.5 = no information; the words avoid "far apart"
    unless the groups barely overlap."""
    value = _fraction(auroc, "auroc")
    if value >= 0.99:
        return "separated almost completely"
    if value >= 0.9:
        return "largely separated, with a visible overlap"
    if value >= 0.7:
        return "shifted apart but overlapping heavily"
    if value > 0.55:
        return "barely distinguishable"
    if value >= 0.45:
        return "indistinguishable"
    return "reversed, the poisoned pairs scoring as the cleaner group"


def compare(value: float, reference: float, tolerance: float = 0.0, words=("above", "about equal to", "below")) -> str:
    """``words[0]`` if ``value`` exceeds ``reference`` by more than ``tolerance``, ``words[2]`` if it falls short
    by more than ``tolerance``, else ``words[1]``."""
    if value > reference + tolerance:
        return words[0]
    if value < reference - tolerance:
        return words[2]
    return words[1]


def count_words(count: int, total: int, noun: str = "targets") -> str:
    """``"none of the 16 targets"``, ``"1 of the 16 targets"``, ``"all 16 targets"``: a count said in words that
    cannot contradict a percentage printed elsewhere."""
    if not 0 <= count <= total:
        raise ValueError(f"count {count} outside 0..{total}")
    if count == 0:
        return f"none of the {total} {noun}"
    if count == total:
        return f"all {total} {noun}"
    return f"{count} of the {total} {noun}"

