"""Poison specs: what to poison, parsed and checked (attacks.md Sections 2, 3 and 5.11).

Specs are plain dicts (or the dataclasses below); :func:`spec_identity` gives the canonical, JSON-able form that
goes into run-store keys and poison manifests::

    {"kind": "backdoor", "trigger": {"name": "badnet_htba"}, "target_class": "bag", "count": 40, "mode": "insert"}
    {"kind": "backdoor", "trigger": {"name": "badnet_random"}, "target_class": "bag", "rate": 0.001,
     "caption_source": "keep"}                                          # label-consistent
    {"kind": "backdoor", "components": [{"trigger": {"name": "badnet_checkerboard"}, "target_class": "bag"},
                                        {"trigger": {"name": "nashville"}, "target_class": "sneaker"}],
     "count": 60}                                                       # multi-trigger, several targets
    {"kind": "targeted", "n_targets": 16, "per_target": 20, "caption_source": "dataset", "noise": 0.0}

:func:`clipguard.attacks.build_poisoned` turns a spec into a poisoned set.

Adaptive options (each aimed at one defence; :mod:`.adaptive` explains them and names ready-made option sets):
``caption_style="true_and_target"`` (SafeCLIP), ``distinct_captions`` (RoCLIP's caption pool),
``duplicates_per_poison`` + ``duplicate_noise`` (kNN detectors; backdoors only). At their defaults they are left out
of the identity, so the identities of specs written before they existed do not change.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .triggers import make_trigger

__all__ = ["BackdoorSpec", "TargetedSpec", "PoisonSpecError", "poison_spec", "spec_identity"]


class PoisonSpecError(ValueError):
    """A poison spec with unknown fields or bad values."""


def _choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise PoisonSpecError(f"{name} must be one of {list(allowed)}, got {value!r}")


@dataclass
class BackdoorSpec:
    """A backdoor poison set (attacks.md Section 3).

    trigger / target_class: one trigger (a trigger dict, see :func:`~clipguard.attacks.make_trigger`) and the
        target class name; or ``components``: a list of ``{"trigger": ..., "target_class": ...}`` (multi-target
        multi-trigger, attacks.md 5.11; the count is split evenly, remainder to the first components). For one
        target with several triggers use the ``multi`` trigger.
    count / rate: number of poisons, or a rate of the clean set's size (``count = round(rate * len(clean))``);
        exactly one. Fewer are made when there are fewer candidates (reported).
    mode: ``insert`` (triggered copies appended; SafeCLIP/RoCLIP) or ``replace`` (the source pair is overwritten,
        dataset size fixed; CleanCLIP).
    caption_source: ``templates`` (a random template filled with the target name; CleanCLIP), ``dataset`` (captions
        of the wrapped set naming the target; detection code's ``use_caption_set``) or ``keep`` (label-consistent:
        only images whose caption already names the target are triggered and their caption is kept; 5.8).
    source: ``train`` (images of the wrapped set) or ``heldout`` (images of the held-out set passed to
        :func:`~clipguard.attacks.build_poisoned`, as RoCLIP/SafeCLIP take CC3M-validation images; insert mode
        only).
    exclude_target: do not trigger images whose label is the target (ignored for ``keep``).
    synonyms: per-class word lists for "names the class" (:func:`clipguard.data.class_of_caption`); None: the
        Fashion-MNIST synonyms for Fashion-MNIST class names, else the class names themselves.
    templates: for ``caption_source="templates"``; None: the wrapped set's templates (else the 80 CLIP templates).
    overflow: float -> uint8 conversion of triggered images, ``clip`` or CleanCLIP's ``wrap``; the ``backdoor_asr``
        evaluator triggers test images with the same conversion.
    caption_style: ``template`` (the caption ``caption_source`` gives; the default) or ``true_and_target``
        (SafeCLIP-aware: a template filled with the source image's true class *and* the target, e.g. "a photo of a
        shirt and a bag.", so the pair keeps a high image-caption cosine; needs ``caption_source="templates"`` and
        labelled sources).
    distinct_captions: None (a caption drawn per poison) or k: the poisons of a component cycle through its first k
        drawn captions (RoCLIP-pool-aware: with k = 1 all share one caption, which then fills the caption pool).
    duplicates_per_poison / duplicate_noise: each distinct poison is inserted ``duplicates_per_poison`` times; the
        copies after the first add Gaussian noise of std ``duplicate_noise`` (on [0, 1]) to the same triggered
        image, so poisons are each other's nearest neighbours (detection-aware dense cluster). ``count`` / ``rate``
        still count rows: ``ceil(count / duplicates_per_poison)`` distinct poisons. Insert mode only.
    """

    trigger: dict | None = None
    target_class: str | None = None
    components: list | None = None
    count: int | None = None
    rate: float | None = None
    mode: str = "insert"
    caption_source: str = "templates"
    source: str = "train"
    exclude_target: bool = True
    synonyms: list | None = None
    templates: list | None = None
    overflow: str = "clip"
    caption_style: str = "template"
    distinct_captions: int | None = None
    duplicates_per_poison: int = 1
    duplicate_noise: float = 0.01
    kind: str = "backdoor"

    def __post_init__(self) -> None:
        if self.components is None:
            if self.trigger is None or self.target_class is None:
                raise PoisonSpecError("backdoor spec needs 'trigger' and 'target_class' (or 'components')")
            self.components = [{"trigger": self.trigger, "target_class": self.target_class}]
            self.trigger = self.target_class = None
        elif self.trigger is not None or self.target_class is not None:
            raise PoisonSpecError("give either 'trigger' + 'target_class' or 'components', not both")
        if not self.components:
            raise PoisonSpecError("'components' is empty")
        components = []
        for c in self.components:
            if not isinstance(c, dict) or set(c) != {"trigger", "target_class"}:
                raise PoisonSpecError(f"each component must be {{'trigger': ..., 'target_class': ...}}, got {c!r}")
            components.append({"trigger": make_trigger(c["trigger"]).identity(), "target_class": str(c["target_class"])})
        self.components = components
        if (self.count is None) == (self.rate is None):
            raise PoisonSpecError("backdoor spec needs exactly one of 'count' and 'rate'")
        if self.count is not None and (not isinstance(self.count, (int, np.integer)) or self.count < 0):
            raise PoisonSpecError(f"count must be a non-negative int, got {self.count!r}")
        if self.rate is not None and not 0 <= self.rate <= 1:
            raise PoisonSpecError(f"rate must be in [0, 1], got {self.rate!r}")
        _choice("mode", self.mode, ("insert", "replace"))
        _choice("caption_source", self.caption_source, ("templates", "dataset", "keep"))
        _choice("source", self.source, ("train", "heldout"))
        _choice("overflow", self.overflow, ("clip", "wrap"))
        if self.mode == "replace" and self.source != "train":
            raise PoisonSpecError("mode 'replace' overwrites rows of the training set: source must be 'train'")
        _check_adaptive(self)
        if not isinstance(self.duplicates_per_poison, (int, np.integer)) or self.duplicates_per_poison < 1:
            raise PoisonSpecError(f"duplicates_per_poison must be a positive int, got {self.duplicates_per_poison!r}")
        if self.duplicates_per_poison > 1 and self.mode != "insert":
            raise PoisonSpecError("duplicates_per_poison > 1 inserts copies: mode must be 'insert'")
        if self.duplicates_per_poison > 1 and not self.duplicate_noise > 0:
            raise PoisonSpecError(f"duplicate_noise must be > 0 (exact copies share a content key and are removed by "
                                  f"de-duplication), got {self.duplicate_noise!r}")
        if self.kind != "backdoor":
            raise PoisonSpecError(f"BackdoorSpec.kind must be 'backdoor', got {self.kind!r}")

    def identity(self) -> dict:
        """Canonical JSON-able form (trigger parameters filled in), for run-store keys."""
        out = _identity(self)
        del out["trigger"], out["target_class"]
        return out


@dataclass
class TargetedSpec:
    """Targeted data poisoning (Carlini and Terzis as RoCLIP uses it; attacks.md Section 2).

    ``n_targets`` images are drawn from the held-out set passed to :func:`~clipguard.attacks.build_poisoned`, each
    with an adversarial class drawn uniformly among ``adversarial_classes`` (default: all classes) other than its
    true class, and ``per_target`` copies of the unmodified image are inserted with captions naming the adversarial
    class: ``caption_source="dataset"`` draws captions of the wrapped set naming that class (without replacement
    when there are enough; RoCLIP's release notebook), ``"templates"`` fills the prompt templates (a random subset,
    repeated when ``per_target`` exceeds their number). ``noise`` adds Gaussian noise of that std (on [0, 1]) to
    each copy, to evade de-duplication (RoCLIP Sec. 3.2). RoCLIP: 16 targets; 50 (moderate) to 10,000 per target.
    ``similar_pairs``: the adaptive attack of RoCLIP Fig. 4 / Appendix 7.2: a list of ``[class_a, class_b]`` pairs
    of visually similar classes; targets are drawn only among held-out images of a paired class, and the
    adversarial class is its partner (random among partners).
    ``caption_style="true_and_target"`` (SafeCLIP-aware; with ``caption_source="templates"``) names the target
    image's true class and the adversarial class in each caption; ``distinct_captions=k`` makes the copies of a
    target cycle through k captions (RoCLIP-pool-aware); see :class:`BackdoorSpec`. The copies of a target are
    already near-duplicates of each other (add ``noise`` to make them distinct).
    """

    n_targets: int = 16
    per_target: int = 20
    caption_source: str = "dataset"
    noise: float = 0.0
    adversarial_classes: list | None = None
    similar_pairs: list | None = None
    synonyms: list | None = None
    templates: list | None = None
    overflow: str = "clip"
    caption_style: str = "template"
    distinct_captions: int | None = None
    kind: str = "targeted"

    def __post_init__(self) -> None:
        for name in ("n_targets", "per_target"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise PoisonSpecError(f"{name} must be a positive int, got {value!r}")
        _choice("caption_source", self.caption_source, ("dataset", "templates"))
        _choice("overflow", self.overflow, ("clip", "wrap"))
        if not self.noise >= 0:
            raise PoisonSpecError(f"noise must be >= 0, got {self.noise!r}")
        _check_adaptive(self)
        if self.kind != "targeted":
            raise PoisonSpecError(f"TargetedSpec.kind must be 'targeted', got {self.kind!r}")

    def identity(self) -> dict:
        return _identity(self)


#: Adaptive options and their defaults (left out of an identity when all are at their defaults).
_ADAPTIVE_DEFAULTS = {"caption_style": "template", "distinct_captions": None, "duplicates_per_poison": 1,
                      "duplicate_noise": 0.01}


def _check_adaptive(spec: BackdoorSpec | TargetedSpec) -> None:
    _choice("caption_style", spec.caption_style, ("template", "true_and_target"))
    if spec.caption_style == "true_and_target" and spec.caption_source != "templates":
        raise PoisonSpecError("caption_style 'true_and_target' fills the templates: set caption_source='templates', "
                              f"got {spec.caption_source!r}")
    k = spec.distinct_captions
    if k is not None and (not isinstance(k, (int, np.integer)) or k < 1):
        raise PoisonSpecError(f"distinct_captions must be None or a positive int, got {k!r}")
    if k is not None and spec.caption_source == "keep":
        raise PoisonSpecError("distinct_captions does not apply to caption_source 'keep' (captions are kept)")


def _identity(spec: BackdoorSpec | TargetedSpec) -> dict:
    out = dataclasses.asdict(spec)
    adaptive = {k: v for k, v in _ADAPTIVE_DEFAULTS.items() if k in out}
    if all(out[k] == v for k, v in adaptive.items()):
        for k in adaptive:
            del out[k]
    return out


_SPECS = {"backdoor": BackdoorSpec, "targeted": TargetedSpec}


def poison_spec(spec: dict | BackdoorSpec | TargetedSpec) -> BackdoorSpec | TargetedSpec:
    """Parse a spec dict (or pass a spec object through); unknown kinds or fields raise listing the valid ones."""
    if isinstance(spec, (BackdoorSpec, TargetedSpec)):
        return spec
    if not isinstance(spec, dict):
        raise PoisonSpecError(f"a poison spec is a dict or a spec object, got {type(spec).__name__}")
    kind = spec.get("kind")
    if kind not in _SPECS:
        raise PoisonSpecError(f"unknown poison kind {kind!r}; valid: {sorted(_SPECS)}")
    cls = _SPECS[kind]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(spec) - fields)
    if unknown:
        raise PoisonSpecError(f"{kind} spec has no field(s) {unknown}; valid: {sorted(fields)}")
    return cls(**spec)


def spec_identity(spec: dict | BackdoorSpec | TargetedSpec) -> dict:
    """The canonical JSON-able identity of a spec (defaults filled in)."""
    return poison_spec(spec).identity()
