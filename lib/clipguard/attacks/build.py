"""Poisoned training sets: plan the poisons of a spec, then materialise them (attacks.md Sections 2, 3 and 8).

:func:`build_poisoned` wraps any captioned :class:`~clipguard.data.ImageCaptionSet` and returns a
:class:`PoisonedSet`: the training set with poisons, a per-row ``is_poison`` mask, the effective poison rate, the
targets of a targeted attack and a poison manifest (:mod:`.manifest`) that names every poison by content keys, not
row indices. :func:`rebuild_from_manifest` re-materialises the same poisons on any copy of the data (re-ordered or
partial: rows whose source is missing are skipped and counted).

Building is two steps: *planning* draws the manifest rows (sources, captions, per-poison seeds) from the spec and
the seed; *materialising* turns manifest rows into images, shared by build and rebuild so both give the same set.
Randomness: every draw comes from ``seed``; each poison has its own ``sample_seed`` (recorded), so one poison is
rebuilt identically without the others.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..data import (CLIP_TEMPLATES, DataError, ImageCaptionSet, class_of_caption, class_synonyms, content_key,
                    image_keys)
from ..utils import derive_seed
from .manifest import MANIFEST_COLUMNS, load_manifest, manifest_frame, missing_columns
from .specs import BackdoorSpec, PoisonSpecError, TargetedSpec, poison_spec
from .triggers import Trigger, make_trigger, to_uint8

__all__ = ["TargetSet", "PoisonedSet", "build_poisoned", "rebuild_from_manifest", "image_key", "without_images_of",
           "captions_naming", "TRUE_AND_TARGET"]

#: What ``caption_style="true_and_target"`` puts into a template: the true class, then the target class.
TRUE_AND_TARGET = "{true} and a {target}"


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
    manifest: one row per poison (:data:`~clipguard.attacks.MANIFEST_COLUMNS`); targets: the :class:`TargetSet` of
    a targeted attack; spec: the spec identity; requested: poisons asked for; missing: manifest rows whose source
    was not found (rebuilds on partial data).
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
    taken = set(image_keys(other))
    keep = [i for i, key in enumerate(image_keys(dataset)) if key not in taken]
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


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(stream)])


def _seeds(rng: np.random.Generator, n: int) -> list[int]:
    return [int(s) for s in rng.integers(0, 2 ** 62, size=n)]


def _draw(rng: np.random.Generator, pool: Sequence[int], n: int) -> list[int]:
    """n items of pool: without replacement when possible, else with replacement."""
    if n <= len(pool):
        return [pool[i] for i in rng.choice(len(pool), size=n, replace=False)]
    return [pool[i] for i in rng.integers(0, len(pool), size=n)]


def _check_unseen(heldout: ImageCaptionSet | None, clean: ImageCaptionSet) -> None:
    """Held-out images (targets, held-out poison sources) must not occur among the training images."""
    if heldout is None:
        return
    seen = set(image_keys(clean))
    shared = sum(key in seen for key in image_keys(heldout))
    if shared:
        raise DataError(f"the held-out set {heldout.name!r} shares {shared} image(s) with the training set "
                        f"{clean.name!r}: targets and held-out poison sources must be unseen images "
                        "(remove them with without_images_of(heldout, training_set))")


def _fill(template: str, target: str, true: str | None, style: str) -> str:
    """A template filled with the target class name, or (``true_and_target``) with the true and target names."""
    if style == "template":
        return template.format(target)
    if true is None:
        raise DataError("caption_style 'true_and_target' needs the true class of each source image (labels)")
    return template.format(TRUE_AND_TARGET.format(true=true, target=target))


def _cycle(captions: list[str], k: int | None) -> list[str]:
    """The captions cycled through their first ``k`` (all when ``k`` is None)."""
    return captions if k is None else [captions[i % k] for i in range(len(captions))]


def _need_captions(dataset: ImageCaptionSet) -> None:
    if dataset.captions is None:
        raise DataError(f"{dataset.name} has no captions: poisoning needs an image-caption set")


# --------------------------------------------------------------------------------------------------------------
# Planning: the manifest rows before materialisation
# --------------------------------------------------------------------------------------------------------------


def _row(**values) -> dict:
    return {**{c: None for c in MANIFEST_COLUMNS}, "duplicate": 0, **values}


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
    synonyms = spec.synonyms or class_synonyms(classnames or [])
    templates = spec.templates or clean.templates or CLIP_TEMPLATES
    total = spec.count if spec.count is not None else int(round(spec.rate * len(clean)))
    copies = spec.duplicates_per_poison
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
        n_eff = min(-(-n // copies), len(candidates))  # distinct poisons
        chosen = [candidates[i] for i in rng.choice(len(candidates), size=n_eff, replace=False)] if n_eff else []
        used.update(chosen)
        if spec.caption_source == "keep":
            captions = [source_set.captions[i] for i in chosen]
        elif spec.caption_source == "templates":
            true = [classnames[int(source_set.labels[i])] if source_set.labels is not None else None for i in chosen]
            captions = [_fill(templates[t], classnames[target], true[j], spec.caption_style)
                        for j, t in enumerate(rng.integers(0, len(templates), size=n_eff))]
        else:
            if train_classes is None:
                train_classes = [class_of_caption(c, synonyms) for c in clean.captions]
            pool = [i for i, c in enumerate(train_classes) if c == target]
            if n_eff and not pool:
                raise DataError(f"no caption of {clean.name} names {classnames[target]!r} (synonyms "
                                f"{synonyms[target]}); use caption_source='templates'")
            captions = [clean.captions[i] for i in _draw(rng, pool, n_eff)]
        captions = _cycle(captions, spec.distinct_captions)
        planned = [_row(kind="backdoor", mode=spec.mode, component=ci, **_source_fields(source_set, spec.source, src),
                        caption=caption, trigger=trigger.name,
                        trigger_params=json.dumps(trigger.params, sort_keys=True), sample_seed=sample_seed,
                        noise=0.0, overflow=spec.overflow, target=classnames[target], target_label=target,
                        target_id=-1)
                   for src, caption, sample_seed in zip(chosen, captions, _seeds(rng, n_eff))]
        rows += _with_duplicates(planned, copies, spec.duplicate_noise)[:n]
    return rows, total


def _with_duplicates(rows: list[dict], copies: int, noise: float) -> list[dict]:
    """Each row followed by ``copies - 1`` noisy copies (same source, caption, trigger draws and sample seed)."""
    if copies == 1:
        return rows
    return [{**row, "duplicate": d, "noise": float(noise)} if d else row for row in rows for d in range(copies)]


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
    synonyms = spec.synonyms or class_synonyms(classnames)
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
            if train_classes is None:
                train_classes = [class_of_caption(c, synonyms) for c in clean.captions]
            pool = [i for i, c in enumerate(train_classes) if c == adversarial]
            if not pool:
                raise DataError(f"no caption of {clean.name} names {classnames[adversarial]!r}; "
                                "use caption_source='templates'")
            captions = [clean.captions[i] for i in _draw(rng, pool, spec.per_target)]
        else:
            order = rng.permutation(len(templates))
            captions = [_fill(templates[order[i % len(templates)]], classnames[adversarial], classnames[true],
                              spec.caption_style) for i in range(spec.per_target)]
        captions = _cycle(captions, spec.distinct_captions)
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
    """Find a source row by pair key, falling back to the image-only key (first occurrence wins)."""

    def __init__(self, dataset: ImageCaptionSet):
        self.dataset = dataset
        self._pair: dict[str, int] | None = None
        self._image: dict[str, int] | None = None

    def find(self, pair_key: str, img_key: str) -> int | None:
        if self._pair is None:
            self._pair = _first_index(self.dataset.keys)
        if pair_key in self._pair:
            return self._pair[pair_key]
        if self._image is None:
            self._image = _first_index(image_keys(self.dataset))
        return self._image.get(img_key)


def _first_index(keys: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i, key in enumerate(keys):
        out.setdefault(key, i)
    return out


def _poison_image(image: torch.Tensor, trigger: Trigger | None, noise: float, sample_seed: int, overflow: str,
                  duplicate: int = 0) -> tuple[torch.Tensor, dict]:
    """The poisoned image: trigger draws from ``sample_seed``, then the noise (a copy ``duplicate > 0`` draws its
    noise from a seed derived from ``sample_seed`` and its index, so copies share the trigger draws)."""
    generator = torch.Generator().manual_seed(int(sample_seed))
    x = image.float().div(255.0)[None]
    state: dict = {}
    if trigger is not None:
        x, raw = trigger.apply(x, generator)
        state = {k: int(v[0]) for k, v in raw.items()}
    if noise > 0:
        if duplicate:
            generator = torch.Generator().manual_seed(derive_seed(int(sample_seed), "duplicate", int(duplicate)))
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
                                     row["overflow"], int(row.get("duplicate", 0)))
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
    return PoisonedSet(data, is_poison, manifest_frame(out_rows), _target_set(target_sources, clean.classnames),
                       spec, seed, requested, missing)


def _target_set(target_sources: dict[int, tuple], classnames: list[str] | None) -> TargetSet | None:
    """The targets (target id -> (source set, row, adversarial label)) in target-id order."""
    if not target_sources:
        return None
    srcs = [target_sources[t] for t in sorted(target_sources)]
    return TargetSet(images=torch.stack([s.images[i] for s, i, _ in srcs]),
                     labels=torch.tensor([int(s.labels[i]) for s, i, _ in srcs], dtype=torch.long),
                     adversarial=torch.tensor([a for _, _, a in srcs], dtype=torch.long),
                     keys=[s.keys[i] for s, i, _ in srcs], classnames=classnames)


# --------------------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------------------


def build_poisoned(clean: ImageCaptionSet, spec: dict | BackdoorSpec | TargetedSpec, seed: int = 0,
                   heldout: ImageCaptionSet | None = None) -> PoisonedSet:
    """Poison ``clean`` as ``spec`` says, deterministically given ``seed``.

    ``heldout``: the split targets (targeted attacks) or held-out poison sources (``source="heldout"``) come from;
    it must share no image with the training data (checked: a :class:`~clipguard.data.DataError` names the count)
    nor with the evaluation data (:func:`without_images_of`). Inserted poisons are appended after the clean rows in
    manifest order; replaced poisons keep their row."""
    parsed = poison_spec(spec)
    _need_captions(clean)
    _check_unseen(heldout, clean)
    plan = _plan_backdoor if parsed.kind == "backdoor" else _plan_targeted
    rows, requested = plan(clean, parsed, seed, heldout)
    for i, row in enumerate(rows):
        row["poison_id"] = i
    return _materialise(clean, rows, heldout, parsed.identity(), int(seed), requested, check_state=False)


def rebuild_from_manifest(clean: ImageCaptionSet, manifest: pd.DataFrame | str | Path,
                          heldout: ImageCaptionSet | None = None) -> PoisonedSet:
    """Re-materialise the poisons of a manifest on a copy of the data (a DataFrame or a saved manifest path).

    Sources are found by content key (pair, then image alone); on the same copy the result is identical to the
    original build (same content keys in the same order). On a partial copy, poisons whose source is missing are
    skipped: ``missing`` counts them and ``poison_rate`` is the effective rate. A recorded per-sample trigger state
    that differs from the recomputed one raises (the trigger code changed). ``heldout`` is checked as in
    :func:`build_poisoned`."""
    _check_unseen(heldout, clean)
    frame = load_manifest(manifest) if isinstance(manifest, (str, Path)) else manifest
    missing = missing_columns(frame)
    if missing:
        raise DataError(f"manifest lacks column(s) {missing}")
    rows = frame.sort_values("poison_id", kind="stable").to_dict("records")
    spec = json.loads(rows[0]["spec"]) if rows else {}
    seed = int(rows[0]["seed"]) if rows else 0
    return _materialise(clean, rows, heldout, spec, seed, len(rows), check_state=True)
