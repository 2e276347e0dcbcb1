"""Poisoned training sets and poison manifests (attacks.md Sections 2, 3 and 8).

:func:`build_poisoned` wraps any captioned :class:`~clipguard.data.ImageCaptionSet` and returns a
:class:`PoisonedSet`: the training set with poisons, a per-row ``is_poison`` mask, the effective poison rate, the
targets of a targeted attack and a **poison manifest** (a pandas DataFrame, one row per poison) that names every
poison by content keys, not row indices. :func:`rebuild_from_manifest` re-materialises the same poisons on any copy
of the data (re-ordered or partial: rows whose source is missing are skipped and counted).

Specs are plain dicts (or the dataclasses below); ``spec_identity(spec)`` is the canonical, JSON-able form that
goes into a run-store key::

    {"kind": "backdoor", "trigger": {"name": "badnet_htba"}, "target_class": "bag", "count": 40, "mode": "insert"}
    {"kind": "backdoor", "trigger": {"name": "badnet_random"}, "target_class": "bag", "rate": 0.001,
     "caption_source": "keep"}                                          # label-consistent
    {"kind": "backdoor", "components": [{"trigger": {"name": "badnet_checkerboard"}, "target_class": "bag"},
                                        {"trigger": {"name": "nashville"}, "target_class": "sneaker"}],
     "count": 60}                                                       # multi-trigger, several targets
    {"kind": "targeted", "n_targets": 16, "per_target": 20, "caption_source": "dataset", "noise": 0.0}

Randomness: every draw comes from ``seed``; each poison has its own ``sample_seed`` (recorded), so one poison is
rebuilt identically without the others.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from ..data import CLIP_TEMPLATES, DataError, ImageCaptionSet, class_of_caption, content_key
from ..data import class_synonyms as default_synonyms  # name kept: part of this module's API
from .triggers import Trigger, make_trigger, to_uint8

__all__ = ["BackdoorSpec", "TargetedSpec", "PoisonSpecError", "poison_spec", "spec_identity", "TargetSet",
           "PoisonedSet", "build_poisoned", "rebuild_from_manifest", "save_manifest", "load_manifest",
           "MANIFEST_COLUMNS", "image_key", "without_images_of", "captions_naming", "default_synonyms"]


class PoisonSpecError(ValueError):
    """A poison spec with unknown fields or bad values."""


#: Columns of a poison manifest, in order.
MANIFEST_COLUMNS = [
    "poison_id",         # 0..n-1, the order poisons were planned in
    "row",               # row of the poison in the poisoned set (of the copy it was materialised on)
    "kind",              # "backdoor" | "targeted"
    "mode",              # "insert" (appended after the clean rows) | "replace" (overwrites its source row)
    "component",         # index of the backdoor component (trigger/target pair); 0 for targeted
    "source_split",      # "train" (the wrapped set) | "heldout"
    "source_key",        # content key (image + caption) of the source pair
    "source_image_key",  # content key of the source image alone (fallback match when captions differ)
    "source_label",      # true label of the source image (kept as the poisoned row's label)
    "caption",           # caption of the poisoned pair
    "key",               # content key of the poisoned pair (to score detectors)
    "trigger",           # trigger name ("" for none)
    "trigger_params",    # JSON of the trigger's parameters
    "trigger_state",     # JSON of the per-sample state (e.g. patch location)
    "sample_seed",       # seed of this poison's generator
    "noise",             # std of the Gaussian image noise added (targeted copies)
    "overflow",          # float -> uint8 conversion: "clip" | "wrap"
    "target",            # target (backdoor) or adversarial (targeted) class name
    "target_label",      # its index
    "target_id",         # targeted attack: index of the target image; -1 for backdoors
    "seed",              # the build seed
    "spec",              # JSON of the spec identity
]
_INT_COLUMNS = ["poison_id", "row", "component", "source_label", "sample_seed", "target_label", "target_id", "seed"]
_FLOAT_COLUMNS = ["noise"]


# --------------------------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------------------------


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
        :func:`build_poisoned`, as RoCLIP/SafeCLIP take CC3M-validation images; insert mode only).
    exclude_target: do not trigger images whose label is the target (ignored for ``keep``).
    synonyms: per-class word lists for "names the class" (:func:`clipguard.data.class_of_caption`); None: the
        Fashion-MNIST synonyms for Fashion-MNIST class names, else the class names themselves.
    templates: for ``caption_source="templates"``; None: the wrapped set's templates (else the 80 CLIP templates).
    overflow: float -> uint8 conversion of triggered images, ``clip`` or CleanCLIP's ``wrap``.
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

    ``n_targets`` images are drawn from the held-out set passed to :func:`build_poisoned`, each with an adversarial
    class drawn uniformly among ``adversarial_classes`` (default: all classes) other than its true class, and
    ``per_target`` copies of the unmodified image are inserted with captions naming the adversarial class:
    ``caption_source="dataset"`` draws captions of the wrapped set naming that class (without replacement when
    there are enough; RoCLIP's release notebook), ``"templates"`` fills the prompt templates (a random subset,
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


def _choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise PoisonSpecError(f"{name} must be one of {list(allowed)}, got {value!r}")


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


# --------------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------------


@dataclass
class TargetSet:
    """Targets of a targeted attack: the clean target images (uint8), their true labels and adversarial labels."""

    images: torch.Tensor
    labels: torch.Tensor
    adversarial: torch.Tensor
    keys: list[str]
    classnames: list[str] | None = None

    def __len__(self) -> int:
        return len(self.images)

    def float_images(self) -> torch.Tensor:
        return self.images.float().div(255.0)


@dataclass
class PoisonedSet:
    """A poisoned training set.

    data: the training set with poisons (poisoned rows keep their *source* label); is_poison: bool per row;
    manifest: one row per poison (:data:`MANIFEST_COLUMNS`); targets: the :class:`TargetSet` of a targeted attack;
    requested: poisons asked for; missing: manifest rows whose source was not found (rebuilds on partial data).
    """

    data: ImageCaptionSet
    is_poison: torch.Tensor
    manifest: pd.DataFrame
    targets: TargetSet | None
    spec: dict
    seed: int
    requested: int
    missing: int = 0

    @property
    def n_poison(self) -> int:
        return int(self.is_poison.sum())

    @property
    def poison_rate(self) -> float:
        """Effective poison rate: poisoned rows / rows of the poisoned set."""
        return self.n_poison / max(1, len(self.data))

    def summary(self) -> dict:
        return {"count": self.n_poison, "rate": self.poison_rate, "requested": self.requested,
                "missing": self.missing, "n_train": len(self.data)}


# --------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------


def image_key(image: torch.Tensor) -> str:
    """Content key of an image alone (uint8 ``[3, H, W]``): :func:`clipguard.data.content_key` with no caption."""
    return content_key(image, "")


def without_images_of(dataset: ImageCaptionSet, other: ImageCaptionSet, name: str | None = None) -> ImageCaptionSet:
    """Rows of ``dataset`` whose image does not occur in ``other``: a held-out split, e.g. the Fashion-MNIST test
    split minus the evaluation rows (matched by image bytes, so differing captions do not matter)."""
    if dataset.images.shape[1:] != other.images.shape[1:]:
        raise DataError(f"image sizes differ: {tuple(dataset.images.shape[1:])} vs {tuple(other.images.shape[1:])}")
    taken = {image_key(img) for img in other.images}
    keep = [i for i, img in enumerate(dataset.images) if image_key(img) not in taken]
    return dataset.subset(keep, name=name or f"{dataset.name}-heldout")


def captions_naming(captions: Sequence[str], cls: int, synonyms: Sequence[Sequence[str]]) -> list[int]:
    """Indices of the captions that name class ``cls`` (:func:`clipguard.data.class_of_caption`: whole words,
    longest phrase wins)."""
    return [i for i, c in enumerate(captions) if class_of_caption(c, synonyms) == cls]


def _class_index(classnames: Sequence[str] | None, name: str) -> int:
    if not classnames:
        raise DataError("the dataset has no class names: cannot resolve a target class")
    if name not in classnames:
        raise DataError(f"unknown target class {name!r}; classes: {list(classnames)}")
    return list(classnames).index(name)


def _seeds(rng: np.random.Generator, n: int) -> list[int]:
    return [int(s) for s in rng.integers(0, 2 ** 62, size=n)]


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(stream)])


def _draw(rng: np.random.Generator, pool: Sequence[int], n: int) -> list[int]:
    """n items of pool: without replacement when possible, else with replacement."""
    if n <= len(pool):
        return [pool[i] for i in rng.choice(len(pool), size=n, replace=False)]
    return [pool[i] for i in rng.integers(0, len(pool), size=n)]


def _need_captions(dataset: ImageCaptionSet) -> None:
    if dataset.captions is None:
        raise DataError(f"{dataset.name} has no captions: poisoning needs an image-caption set")


# --------------------------------------------------------------------------------------------------------------
# Planning: the manifest rows before materialisation
# --------------------------------------------------------------------------------------------------------------


def _row(**values) -> dict:
    base = {c: None for c in MANIFEST_COLUMNS}
    base.update(values)
    return base


def _source_fields(dataset: ImageCaptionSet, split: str, index: int) -> dict:
    return {"source_split": split, "source_key": dataset.keys[index],
            "source_image_key": image_key(dataset.images[index]),
            "source_label": int(dataset.labels[index]) if dataset.labels is not None else -1}


def _plan_backdoor(clean: ImageCaptionSet, spec: BackdoorSpec, seed: int, heldout: ImageCaptionSet | None
                   ) -> tuple[list[dict], int]:
    source_set = clean if spec.source == "train" else heldout
    if source_set is None:
        raise DataError("source 'heldout' needs the held-out set: build_poisoned(..., heldout=...)")
    if spec.caption_source == "keep":
        _need_captions(source_set)
    classnames = clean.classnames
    synonyms = spec.synonyms or default_synonyms(classnames or [])
    templates = spec.templates or clean.templates or CLIP_TEMPLATES
    total = spec.count if spec.count is not None else int(round(spec.rate * len(clean)))
    m = len(spec.components)
    counts = [total // m + (i < total % m) for i in range(m)]
    source_classes = None  # class named by each source caption, computed once if needed
    train_classes = None
    used: set[int] = set()
    rows = []
    for ci, (component, n) in enumerate(zip(spec.components, counts)):
        target = _class_index(classnames, component["target_class"])
        trigger = make_trigger(component["trigger"])
        rng = _rng(seed, 100 + ci)
        if spec.caption_source == "keep":
            if source_classes is None:
                source_classes = [class_of_caption(c, synonyms) for c in source_set.captions]
            candidates = [i for i, c in enumerate(source_classes) if c == target]
        else:
            candidates = list(range(len(source_set)))
            if spec.exclude_target and source_set.labels is not None:
                candidates = [i for i in candidates if int(source_set.labels[i]) != target]
        candidates = [i for i in candidates if i not in used]
        n_eff = min(n, len(candidates))
        chosen = [candidates[i] for i in rng.choice(len(candidates), size=n_eff, replace=False)] if n_eff else []
        used.update(chosen)
        if spec.caption_source == "keep":
            captions = [source_set.captions[i] for i in chosen]
        elif spec.caption_source == "templates":
            captions = [templates[i].format(classnames[target]) for i in rng.integers(0, len(templates), size=n_eff)]
        else:
            _need_captions(clean)
            if train_classes is None:
                train_classes = [class_of_caption(c, synonyms) for c in clean.captions]
            pool = [i for i, c in enumerate(train_classes) if c == target]
            if n_eff and not pool:
                raise DataError(f"no caption of {clean.name} names {classnames[target]!r} (synonyms "
                                f"{synonyms[target]}); use caption_source='templates'")
            captions = [clean.captions[i] for i in _draw(rng, pool, n_eff)]
        for src, caption, sample_seed in zip(chosen, captions, _seeds(rng, n_eff)):
            rows.append(_row(kind="backdoor", mode=spec.mode, component=ci,
                             **_source_fields(source_set, spec.source, src), caption=caption,
                             trigger=trigger.name, trigger_params=json.dumps(trigger.params, sort_keys=True),
                             sample_seed=sample_seed, noise=0.0, overflow=spec.overflow,
                             target=classnames[target], target_label=target, target_id=-1))
    return rows, total


def _partners(classnames: list[str], pairs: list | None) -> dict[int, list[int]] | None:
    """Class index -> indices of the classes it is paired with (both directions), or None without pairs."""
    if pairs is None:
        return None
    partners: dict[int, list[int]] = {}
    for pair in pairs:
        if len(pair) != 2 or pair[0] == pair[1]:
            raise PoisonSpecError(f"similar_pairs entries must be two different class names, got {pair!r}")
        a, b = (_class_index(classnames, c) for c in pair)
        partners.setdefault(a, []).append(b)
        partners.setdefault(b, []).append(a)
    return partners


def _plan_targeted(clean: ImageCaptionSet, spec: TargetedSpec, seed: int, heldout: ImageCaptionSet | None
                   ) -> tuple[list[dict], int]:
    if heldout is None:
        raise DataError("targeted poisoning draws its targets from a held-out split: "
                        "build_poisoned(..., heldout=...) (e.g. without_images_of(test_split, evaluation_set))")
    if heldout.labels is None:
        raise DataError(f"held-out set {heldout.name} has no labels: targets need a true class")
    classnames = clean.classnames or heldout.classnames
    if not classnames:
        raise DataError("targeted poisoning needs class names")
    if spec.n_targets > len(heldout):
        raise DataError(f"{spec.n_targets} targets asked for, the held-out set has {len(heldout)} rows")
    synonyms = spec.synonyms or default_synonyms(classnames)
    templates = spec.templates or clean.templates or CLIP_TEMPLATES
    candidates = (list(range(len(classnames))) if spec.adversarial_classes is None
                  else [_class_index(classnames, c) for c in spec.adversarial_classes])
    partners = _partners(classnames, spec.similar_pairs)
    eligible = (np.arange(len(heldout)) if partners is None
                else np.flatnonzero(np.isin(heldout.labels.numpy(), sorted(partners))))
    if spec.n_targets > len(eligible):
        raise DataError(f"{spec.n_targets} targets asked for, the held-out set has {len(eligible)} eligible rows")
    rng = _rng(seed, 1)
    target_rows = [int(eligible[i]) for i in rng.choice(len(eligible), size=spec.n_targets, replace=False)]
    train_classes = None
    rows = []
    for tid, src in enumerate(target_rows):
        true = int(heldout.labels[src])
        allowed = [c for c in candidates if c != true] if partners is None else partners[true]
        if not allowed:
            raise DataError(f"no adversarial class other than the true class {classnames[true]!r}")
        adversarial = allowed[int(rng.integers(0, len(allowed)))]
        if spec.caption_source == "dataset":
            _need_captions(clean)
            if train_classes is None:
                train_classes = [class_of_caption(c, synonyms) for c in clean.captions]
            pool = [i for i, c in enumerate(train_classes) if c == adversarial]
            if not pool:
                raise DataError(f"no caption of {clean.name} names {classnames[adversarial]!r}; "
                                "use caption_source='templates'")
            captions = [clean.captions[i] for i in _draw(rng, pool, spec.per_target)]
        else:
            order = rng.permutation(len(templates))
            captions = [templates[order[i % len(templates)]].format(classnames[adversarial])
                        for i in range(spec.per_target)]
        for caption, sample_seed in zip(captions, _seeds(rng, spec.per_target)):
            rows.append(_row(kind="targeted", mode="insert", component=0, **_source_fields(heldout, "heldout", src),
                             caption=caption, trigger="", trigger_params="{}", sample_seed=sample_seed,
                             noise=float(spec.noise), overflow=spec.overflow, target=classnames[adversarial],
                             target_label=adversarial, target_id=tid))
    return rows, spec.n_targets * spec.per_target


# --------------------------------------------------------------------------------------------------------------
# Materialisation (shared by build and rebuild, so both give the same set)
# --------------------------------------------------------------------------------------------------------------


class _Lookup:
    """Find a source row by pair key, falling back to the image-only key."""

    def __init__(self, dataset: ImageCaptionSet):
        self.dataset = dataset
        self._pair: dict[str, int] | None = None
        self._image: dict[str, int] | None = None

    def find(self, pair_key: str, img_key: str) -> int | None:
        if self._pair is None:
            self._pair = {}
            for i, k in enumerate(self.dataset.keys):
                self._pair.setdefault(k, i)
        if pair_key in self._pair:
            return self._pair[pair_key]
        if self._image is None:
            self._image = {}
            for i, img in enumerate(self.dataset.images):
                self._image.setdefault(image_key(img), i)
        return self._image.get(img_key)


def _poison_image(image: torch.Tensor, trigger: Trigger | None, noise: float, sample_seed: int, overflow: str
                  ) -> tuple[torch.Tensor, dict]:
    generator = torch.Generator().manual_seed(int(sample_seed))
    x = image.float().div(255.0)[None]
    state: dict = {}
    if trigger is not None:
        x, raw = trigger.apply(x, generator)
        state = {k: int(v[0]) for k, v in raw.items()}
    if noise > 0:
        x = x + noise * torch.randn(x.shape, generator=generator)
    return to_uint8(x, overflow)[0], state


def _materialise(clean: ImageCaptionSet, rows: list[dict], heldout: ImageCaptionSet | None, spec: dict, seed: int,
                 requested: int, check_state: bool) -> PoisonedSet:
    _need_captions(clean)
    sets = {"train": clean, "heldout": heldout}
    lookups = {name: _Lookup(s) for name, s in sets.items() if s is not None}
    triggers: dict[tuple[str, str], Trigger] = {}
    images = clean.images.clone()
    captions = list(clean.captions)
    labels = clean.labels.clone() if clean.labels is not None else None
    keys = list(clean.keys)
    is_poison = torch.zeros(len(clean), dtype=torch.bool)
    inserted_images, inserted_captions, inserted_labels, inserted_keys = [], [], [], []
    attributes_ok = all(set(s.attributes) == set(clean.attributes) for s in sets.values() if s is not None)
    inserted_attrs: dict[str, list] = {a: [] for a in clean.attributes} if attributes_ok else {}
    out_rows, missing, target_sources = [], 0, {}
    replaced: set[int] = set()
    for row in rows:
        split = row["source_split"]
        if split not in lookups:
            if split == "heldout":
                raise DataError("this manifest has poisons from a held-out set: pass heldout=...")
            raise DataError(f"unknown source_split {split!r} in manifest")
        source = sets[split]
        src = lookups[split].find(row["source_key"], row["source_image_key"])
        if src is None:
            missing += 1
            continue
        trigger = None
        if row["trigger"]:
            cache_key = (row["trigger"], row["trigger_params"])
            if cache_key not in triggers:
                triggers[cache_key] = make_trigger(row["trigger"], **json.loads(row["trigger_params"]))
            trigger = triggers[cache_key]
        image, state = _poison_image(source.images[src], trigger, float(row["noise"]), row["sample_seed"],
                                     row["overflow"])
        state_json = json.dumps(state, sort_keys=True)
        if check_state and row.get("trigger_state") not in (None, "") and row["trigger_state"] != state_json:
            raise DataError(f"poison {row['poison_id']}: trigger state {state_json} differs from the manifest's "
                            f"{row['trigger_state']} (did the trigger implementation change?)")
        key = content_key(image, row["caption"])
        label = int(source.labels[src]) if source.labels is not None else -1
        if row["mode"] == "replace":
            if split != "train":
                raise DataError(f"poison {row['poison_id']}: 'replace' needs a source in the training set")
            if src in replaced:
                raise DataError(f"poison {row['poison_id']}: row {src} is replaced twice")
            replaced.add(src)
            images[src], captions[src], keys[src] = image, row["caption"], key
            is_poison[src] = True
            position = src
        else:
            position = len(clean) + len(inserted_images)
            inserted_images.append(image)
            inserted_captions.append(row["caption"])
            inserted_labels.append(label)
            inserted_keys.append(key)
            for a in inserted_attrs:
                inserted_attrs[a].append(source.attributes[a][src])
        if row["target_id"] is not None and int(row["target_id"]) >= 0:
            target_sources.setdefault(int(row["target_id"]), (source, src, int(row["target_label"])))
        out_rows.append({**row, "row": position, "key": key, "trigger_state": state_json, "source_label": label,
                         "seed": seed, "spec": json.dumps(spec, sort_keys=True)})
    n_insert = len(inserted_images)
    if n_insert:
        images = torch.cat([images, torch.stack(inserted_images)])
        captions += inserted_captions
        if labels is not None:
            labels = torch.cat([labels, torch.tensor(inserted_labels, dtype=torch.long)])
        keys += inserted_keys
        is_poison = torch.cat([is_poison, torch.ones(n_insert, dtype=torch.bool)])
    attributes = ({a: torch.cat([v, torch.stack(inserted_attrs[a])]) if n_insert else v.clone()
                   for a, v in clean.attributes.items()} if attributes_ok else {})
    data = ImageCaptionSet(images, captions, labels, clean.classnames, clean.templates, name=f"{clean.name}-poisoned",
                           attributes=attributes, attribute_names=dict(clean.attribute_names) if attributes_ok else {},
                           _keys=keys)
    manifest = _frame(out_rows)
    targets = None
    if target_sources:
        order = sorted(target_sources)
        srcs = [target_sources[t] for t in order]
        targets = TargetSet(
            images=torch.stack([s.images[i] for s, i, _ in srcs]),
            labels=torch.tensor([int(s.labels[i]) for s, i, _ in srcs], dtype=torch.long),
            adversarial=torch.tensor([a for _, _, a in srcs], dtype=torch.long),
            keys=[s.keys[i] for s, i, _ in srcs], classnames=clean.classnames)
    return PoisonedSet(data, is_poison, manifest, targets, spec, seed, requested, missing)


def _frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    for column in _INT_COLUMNS:
        frame[column] = frame[column].astype("int64")
    for column in _FLOAT_COLUMNS:
        frame[column] = frame[column].astype("float64")
    for column in set(MANIFEST_COLUMNS) - set(_INT_COLUMNS) - set(_FLOAT_COLUMNS):
        frame[column] = frame[column].astype(object)
    return frame


# --------------------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------------------


def build_poisoned(clean: ImageCaptionSet, spec: dict | BackdoorSpec | TargetedSpec, seed: int = 0,
                   heldout: ImageCaptionSet | None = None) -> PoisonedSet:
    """Poison ``clean`` as ``spec`` says, deterministically given ``seed``.

    ``heldout``: the split targets (targeted attacks) or held-out poison sources (``source="heldout"``) come from;
    it must share no image with the training or evaluation data (:func:`without_images_of`). Inserted poisons are
    appended after the clean rows in manifest order; replaced poisons keep their row."""
    parsed = poison_spec(spec)
    identity = parsed.identity()
    _need_captions(clean)
    plan = _plan_backdoor if parsed.kind == "backdoor" else _plan_targeted
    rows, requested = plan(clean, parsed, seed, heldout)
    for i, row in enumerate(rows):
        row["poison_id"] = i
    return _materialise(clean, rows, heldout, identity, int(seed), requested, check_state=False)


def rebuild_from_manifest(clean: ImageCaptionSet, manifest: pd.DataFrame | str | Path,
                          heldout: ImageCaptionSet | None = None) -> PoisonedSet:
    """Re-materialise the poisons of a manifest on a copy of the data (a DataFrame or a saved manifest path).

    Sources are found by content key (pair, then image alone); on the same copy the result is identical to the
    original build (same content keys in the same order). On a partial copy, poisons whose source is missing are
    skipped: ``missing`` counts them and ``poison_rate`` is the effective rate. A recorded per-sample trigger state
    that differs from the recomputed one raises (the trigger code changed)."""
    frame = load_manifest(manifest) if isinstance(manifest, (str, Path)) else manifest
    missing_columns = [c for c in MANIFEST_COLUMNS if c not in frame.columns]
    if missing_columns:
        raise DataError(f"manifest lacks column(s) {missing_columns}")
    rows = frame.sort_values("poison_id", kind="stable").to_dict("records")
    spec = json.loads(rows[0]["spec"]) if rows else {}
    seed = int(rows[0]["seed"]) if rows else 0
    return _materialise(clean, rows, heldout, spec, seed, len(rows), check_state=True)


def save_manifest(manifest: pd.DataFrame, path: str | Path) -> Path:
    """Write a manifest as CSV (``.csv``) or Parquet (``.parquet``), atomically (temporary file, then rename)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ValueError(f"manifest path must end in .csv or .parquet, got {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if suffix == ".csv":
            manifest.to_csv(tmp, index=False)
        else:
            manifest.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest written by :func:`save_manifest`, with the column types restored."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"manifest not found: {path}")
    if path.suffix.lower() == ".parquet":
        frame = pd.read_parquet(path)
    else:
        text_columns = set(MANIFEST_COLUMNS) - set(_INT_COLUMNS) - set(_FLOAT_COLUMNS)
        frame = pd.read_csv(path, keep_default_na=False, dtype={c: str for c in text_columns})
    missing = [c for c in MANIFEST_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: not a poison manifest (missing column(s) {missing})")
    return _frame(frame[MANIFEST_COLUMNS].to_dict("records"))
