"""Experiments as data: a *spec* (a plain dict) names the data, poisoning, model, objective, optimisation and
evaluation of one training run; :func:`run` resolves it through small registries and the run store.

Because the spec is the run-store key, two notebooks asking for the same baseline get the same stored run.
Other modules extend the registries (``attacks`` registers poisoners and ASR evaluators, ``defenses`` registers
objectives) with the ``register_*`` decorators.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

import torch

from . import data as data_lib
from .evaluate import (PerSampleTracker, ZeroShotEval, class_retrieval_precision, image_embeddings, linear_probe_sklearn, linear_probe_torch, retrieval_recall,
                       text_embeddings, zero_shot_accuracy)
from .models import CLIPModel, build_model
from .profiles import Profile, resolve
from .runs import Run, RunStore
from .train import ClipObjective, TrainConfig, train

__all__ = ["DATASETS", "POISONERS", "OBJECTIVES", "EVALUATORS", "register_dataset", "register_poisoner",
           "register_objective", "register_evaluator", "load_dataset", "clip_spec", "run", "Prepared", "prepare"]

DATASETS: dict[str, Callable[..., data_lib.ImageCaptionSet]] = {}
POISONERS: dict[str, Callable] = {}
OBJECTIVES: dict[str, Callable] = {}
EVALUATORS: dict[str, Callable] = {}


def _register(table: dict, name: str):
    def decorator(fn):
        table[name] = fn
        return fn
    return decorator


def register_dataset(name: str):
    """``fn(split, n, seed, image_size) -> ImageCaptionSet``."""
    return _register(DATASETS, name)


def register_poisoner(name: str):
    """``fn(clean: ImageCaptionSet, spec: dict, context: dict) -> (ImageCaptionSet, info: dict)``; ``info`` may hold
    tensors (e.g. ``is_poison``) and is passed to objectives and evaluators."""
    return _register(POISONERS, name)


def register_objective(name: str):
    """``fn(spec: dict, train_data: ImageCaptionSet, info: dict) -> Objective``."""
    return _register(OBJECTIVES, name)


def register_evaluator(name: str):
    """``fn(model, spec: dict, prepared: Prepared) -> dict`` of JSON-able metrics."""
    return _register(EVALUATORS, name)


@register_dataset("fashion-mnist")
def _fashion(split: str, n: int | None, seed: int, image_size: int) -> data_lib.ImageCaptionSet:
    return data_lib.fashion_mnist(split, n=n, seed=seed, image_size=image_size)


@register_dataset("shapes")
def _shapes(split: str, n: int | None, seed: int, image_size: int) -> data_lib.ImageCaptionSet:
    # disjoint seeds per split so train and test images differ
    return data_lib.shapes(n or 10000, seed=seed * 2 + (split == "test"), image_size=image_size)


def load_plugins() -> None:
    """Import the modules that register attacks and defences (they import this module, so not at the top)."""
    import importlib

    for module in ("clipguard.attacks", "clipguard.defenses"):
        importlib.import_module(module)


def load_dataset(spec: dict) -> data_lib.ImageCaptionSet:
    """``{"name", "split", "n", "seed", "image_size"}`` -> dataset."""
    spec = dict(spec)
    name = spec.pop("name")
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; registered: {sorted(DATASETS)}")
    allowed = {"split", "n", "seed", "image_size"}
    if set(spec) - allowed:
        raise ValueError(f"unknown dataset field(s) {sorted(set(spec) - allowed)}; allowed: {sorted(allowed)}")
    return DATASETS[name](spec.get("split", "train"), spec.get("n"), spec.get("seed", 0), spec.get("image_size", 32))


def clip_spec(profile: str | Profile = "cpu", seed: int = 0, **overrides) -> dict:
    """The standard CLIP pre-training spec of a profile. ``overrides`` replace top-level keys (``poison``,
    ``objective``, ``evaluate``...) or, with a dotted name passed as ``train__epochs=3``, nested ones."""
    p = resolve(profile) if isinstance(profile, str) else profile
    spec = {
        "profile": p.name,
        "data": {"name": p.dataset, "split": "train", "n": p.n_train, "seed": seed, "image_size": p.image_size},
        "test": {"name": p.dataset, "split": "test", "n": p.n_test, "seed": 1000 + seed, "image_size": p.image_size},
        "probe_train": {"name": p.dataset, "split": "train", "n": p.n_probe_train, "seed": 2000 + seed,
                        "image_size": p.image_size},
        "poison": None,
        "model": p.model,
        "model_seed": seed,
        "objective": {"name": "clip"},
        "train": TrainConfig(epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, warmup_steps=p.warmup_steps,
                             seed=seed).identity(),
        "evaluate": ["zeroshot", "linear_probe", "retrieval"],
        "track_per_sample": False,
    }
    for key, value in overrides.items():
        if "__" in key:
            outer, inner = key.split("__", 1)
            if outer not in spec or not isinstance(spec[outer], dict):
                raise ValueError(f"cannot override {key!r}: {outer!r} is not a nested section")
            spec[outer] = {**spec[outer], inner: value}
        elif key in spec:
            spec[key] = value
        else:
            raise ValueError(f"unknown spec key {key!r}; known: {sorted(spec)}")
    return spec


class Prepared:
    """The resolved inputs of a spec: training data (poisoned if asked), poison info, test and probe sets."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.clean = load_dataset(spec["data"])
        self.test = load_dataset(spec["test"])
        self.probe_train = load_dataset(spec["probe_train"]) if spec.get("probe_train") else None
        self.info: dict = {}
        self.train_data = self.clean
        poison = spec.get("poison")
        if poison:
            load_plugins()
            kind = poison.get("kind")
            if kind not in POISONERS:
                raise ValueError(f"unknown poison kind {kind!r}; registered: {sorted(POISONERS)} "
                                 "(import clipguard.attacks to register the attacks)")
            self.train_data, self.info = POISONERS[kind](self.clean, poison, {"spec": spec, "test": self.test})

    def fingerprints(self) -> dict[str, str]:
        out = {"train": self.train_data.fingerprint(), "test": self.test.fingerprint()}
        if self.probe_train is not None:
            out["probe_train"] = self.probe_train.fingerprint()
        return out


def prepare(spec: dict) -> Prepared:
    return Prepared(spec)


def make_objective(spec: dict, prepared: Prepared):
    objective = dict(spec.get("objective") or {"name": "clip"})
    name = objective.get("name", "clip")
    if name == "clip" and set(objective) == {"name"}:
        return ClipObjective()
    load_plugins()
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; registered: {sorted(set(OBJECTIVES) | {'clip'})} "
                         "(import clipguard.defenses to register the defences)")
    return OBJECTIVES[name](objective, prepared.train_data, {**prepared.info, "seed": spec["train"]["seed"]})


@register_evaluator("zeroshot")
def _eval_zeroshot(model: CLIPModel, spec: dict, prepared: Prepared) -> dict:
    return {f"zeroshot_{k}": v for k, v in zero_shot_accuracy(model, prepared.test).items()}


@register_evaluator("linear_probe")
def _eval_probe(model: CLIPModel, spec: dict, prepared: Prepared) -> dict:
    if prepared.probe_train is None:
        return {}
    train_x = image_embeddings(model, prepared.probe_train, normalize=False)
    test_x = image_embeddings(model, prepared.test, normalize=False)
    seed = spec.get("model_seed", 0)
    return {"linear_probe_torch": linear_probe_torch(train_x, prepared.probe_train.labels, test_x,
                                                     prepared.test.labels, seed=seed),
            "linear_probe_sklearn": linear_probe_sklearn(train_x, prepared.probe_train.labels, test_x,
                                                         prepared.test.labels, seed=seed)}


@register_evaluator("retrieval")
def _eval_retrieval(model: CLIPModel, spec: dict, prepared: Prepared) -> dict:
    test = prepared.test
    if test.captions is None:
        return {}
    n = min(len(test), 1000)
    images = image_embeddings(model, test.float_images(slice(0, n)))
    texts = text_embeddings(model, test.captions[:n])
    metrics = retrieval_recall(images, texts)
    if test.labels is not None:
        metrics.update(class_retrieval_precision(images, texts, test.labels[:n]))
    return metrics


def _evaluator_name(entry: str | dict) -> tuple[str, dict]:
    if isinstance(entry, str):
        return entry, {}
    entry = dict(entry)
    return entry.pop("name"), entry


def run(spec: dict, store: RunStore | None = None, force: bool = False, progress: bool = True) -> Run:
    """Get the stored run of ``spec`` or train it: build data (and poisons), model, objective; train with
    per-epoch zero-shot tracking; evaluate; store weights, history and metrics."""
    spec = copy.deepcopy(spec)
    store = store or RunStore(spec.get("profile", "cpu"))
    prepared = Prepared(spec)
    load_plugins()
    for entry in spec.get("evaluate", []):
        name, _ = _evaluator_name(entry)
        if name not in EVALUATORS:
            raise ValueError(f"unknown evaluator {name!r}; registered: {sorted(EVALUATORS)}")

    def train_fn(work: Path):
        model = build_model(spec["model"], seed=spec.get("model_seed", 0))
        config = TrainConfig(**spec["train"], progress=progress)
        objective = make_objective(spec, prepared)
        callbacks = [ZeroShotEval(prepared.test)]
        tracker = None
        if spec.get("track_per_sample"):
            groups = {}
            if "is_poison" in prepared.info:
                groups = {"clean": ~prepared.info["is_poison"], "poison": prepared.info["is_poison"]}
            tracker = PerSampleTracker(prepared.train_data, groups)
            callbacks.append(tracker)
        result = train(model, prepared.train_data, objective, config, run_dir=work, callbacks=callbacks)
        if tracker is not None:
            tracker.save(work / "per_sample.npz")
        metrics = {"train_seconds": result.seconds, "pairs_per_second": result.pairs_per_second,
                   "n_train": len(prepared.train_data)}
        for key, value in prepared.info.items():
            if isinstance(value, (int, float, str)):
                metrics[f"poison_{key}"] = value
        for entry in spec.get("evaluate", []):
            name, options = _evaluator_name(entry)
            metrics.update(EVALUATORS[name](model, {**spec, **options}, prepared))
        for saver in prepared.info.get("savers", []):
            saver(work)
        return model, metrics

    return store.get_or_train(spec, train_fn, data=prepared.fingerprints(), force=force)


def runs_over_seeds(profile: str, seeds: int | None = None, **overrides) -> list[Run]:
    """The same spec trained for each of the profile's seeds (``seeds`` overrides the count)."""
    p = resolve(profile)
    return [run(clip_spec(p, seed=s, **overrides)) for s in range(seeds or p.seeds)]


def mean_std(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0
