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
        if self.kind != "backdoor":
            raise PoisonSpecError(f"BackdoorSpec.kind must be 'backdoor', got {self.kind!r}")

    def identity(self) -> dict:
        """Canonical JSON-able form (trigger parameters filled in), for run-store keys."""
        out = dataclasses.asdict(self)
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
        if self.kind != "targeted":
            raise PoisonSpecError(f"TargetedSpec.kind must be 'targeted', got {self.kind!r}")

    def identity(self) -> dict:
        return dataclasses.asdict(self)


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
