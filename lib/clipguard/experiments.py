"""Experiments as data: a *spec* (a plain dict) names the data, poisoning, model, objective, optimisation and
evaluation of one training run; :func:`run` resolves it through small registries and the run store.

Because the spec is the run-store key, two notebooks asking for the same baseline get the same stored run.
Other modules extend the registries (``attacks`` registers poisoners and ASR evaluators, ``defenses`` registers
objectives) with the ``register_*`` decorators.
"""

from __future__ import annotations

import copy
import functools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import data as data_lib
from . import progress as progress_log
from .evaluate import (PerSampleTracker, ZeroShotEval, class_retrieval_precision, image_embeddings, linear_probe_sklearn, linear_probe_torch, retrieval_recall,
                       text_embeddings, zero_shot_accuracy)
from .models import CLIPModel, build_model
from .profiles import Profile, resolve
from .runs import CORE_MODULES, Run, RunStore, code_identity
from .train import ClipObjective, TrainConfig, train
from .utils import config_from_spec, cpu_threads

__all__ = ["DATASETS", "POISONERS", "OBJECTIVES", "EVALUATORS", "register_dataset", "register_poisoner",
           "register_objective", "register_evaluator", "load_dataset", "clip_spec", "finetune_spec", "run",
           "Prepared", "prepare", "spec_modules", "attack_of", "AugmentConfig", "augmentation_hooks", "register_filter",
           "FILTERS", "execute", "code_key", "describe", "stored"]

DATASETS: dict[str, Callable[..., data_lib.ImageCaptionSet]] = {}
POISONERS: dict[str, Callable] = {}
OBJECTIVES: dict[str, Callable] = {}
EVALUATORS: dict[str, Callable] = {}
FILTERS: dict[str, Callable] = {}
#: (table, name) -> the modules a registered function runs beyond the core ones: its own module plus ``uses``
#: (a tuple of module names, or a function of the spec section returning one). They enter the run's key.
_MODULES: dict[tuple[str, str], tuple[str, Callable | tuple[str, ...]]] = {}
_TABLES = {"dataset": DATASETS, "poisoner": POISONERS, "objective": OBJECTIVES, "evaluator": EVALUATORS,
           "filter": FILTERS}


def _register(kind: str, name: str, uses: tuple[str, ...] | Callable[[dict], tuple[str, ...]] = ()):
    def decorator(fn):
        _TABLES[kind][name] = fn
        _MODULES[(kind, name)] = (fn.__module__, uses)
        return fn
    return decorator


def register_dataset(name: str, uses=()):
    """``fn(split, n, seed, image_size) -> ImageCaptionSet``."""
    return _register("dataset", name, uses)


def register_poisoner(name: str, uses=()):
    """``fn(clean: ImageCaptionSet, spec: dict, context: dict) -> (ImageCaptionSet, info: dict)``; ``info`` may hold
    tensors (e.g. ``is_poison``) and is passed to objectives and evaluators."""
    return _register("poisoner", name, uses)


def register_objective(name: str, uses=()):
    """``fn(spec: dict, train_data: ImageCaptionSet, info: dict) -> Objective``. ``uses``: modules the objective
    runs beyond its own (e.g. ``("clipguard.augment",)``), or a function of the objective spec returning them."""
    return _register("objective", name, uses)


def register_evaluator(name: str, uses=()):
    """``fn(model, spec: dict, prepared: Prepared) -> dict`` of JSON-able metrics."""
    return _register("evaluator", name, uses)


def register_filter(name: str, uses=()):
    """``fn(prepared, section: dict, scored: Run, store) -> (keep: bool tensor over the training rows, info)``:
    removes training pairs before training (detect-and-retrain). ``section`` is the spec's ``filter``; ``scored``
    is the stored run of ``section["by"]`` whose model scores the pairs."""
    return _register("filter", name, uses)


def _declared(kind: str, name: str, section: dict) -> list[str]:
    module, uses = _MODULES[(kind, name)]
    extra = uses(section) if callable(uses) else uses
    return [module, *extra]


def code_key(spec: dict, package_dir: Path | None = None) -> str:
    """The code part of a spec's run key: :func:`~clipguard.runs.code_identity` of :func:`spec_modules`."""
    from .runs import PACKAGE_DIR

    return code_identity(spec_modules(spec), package_dir or PACKAGE_DIR)


def spec_modules(spec: dict) -> list[str]:
    """The library modules a spec's run executes: the core ones plus what its datasets, poisoner, objective and
    evaluators declared when they registered (a parent run of ``init`` is keyed by its own id)."""
    load_plugins()
    modules = list(CORE_MODULES)
    for key in ("data", "test", "probe_train"):
        if spec.get(key):
            modules += _declared("dataset", spec[key]["name"], spec[key])
    if spec.get("poison"):
        modules += _declared("poisoner", spec["poison"]["kind"], spec["poison"])
    if spec.get("filter"):
        modules += _declared("filter", spec["filter"]["name"], spec["filter"])
    objective = spec.get("objective") or {"name": "clip"}
    modules += _declared("objective", objective.get("name", "clip"), objective)
    for entry in spec.get("evaluate", []):
        name, options = _evaluator_name(entry)
        modules += _declared("evaluator", name, options)
    return sorted(set(modules))


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


@functools.lru_cache(maxsize=4)
def _disjoint_candidates(name: str, spec_json: str) -> tuple[data_lib.ImageCaptionSet, list[int]]:
    """The whole split (drawn with the spec's seed; ``n`` is not part of ``spec_json``) and the rows of it whose
    images the ``disjoint_from`` set does not hold. Cached: a chapter fine-tunes many runs on clean sets drawn from
    the same split, and callers only take subsets of it."""
    spec = json.loads(spec_json)
    candidates = DATASETS[name](spec.get("split", "train"), None, spec.get("seed", 0), spec.get("image_size", 32))
    taken = set(data_lib.image_keys(load_dataset(spec["disjoint_from"])))
    return candidates, [i for i, key in enumerate(data_lib.image_keys(candidates)) if key not in taken]


def load_dataset(spec: dict) -> data_lib.ImageCaptionSet:
    """``{"name", "split", "n", "seed", "image_size"}`` -> dataset. With ``"disjoint_from": <dataset spec>`` the
    ``n`` rows are drawn (with ``seed``) from the split's images that the other set does not hold, e.g. a clean
    fine-tuning set that shares no image with the pre-training set."""
    spec = dict(spec)
    name = spec.pop("name")
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; registered: {sorted(DATASETS)}")
    allowed = {"split", "n", "seed", "image_size", "disjoint_from"}
    if set(spec) - allowed:
        raise ValueError(f"unknown dataset field(s) {sorted(set(spec) - allowed)}; allowed: {sorted(allowed)}")
    load = lambda n: DATASETS[name](spec.get("split", "train"), n, spec.get("seed", 0),  # noqa: E731
                                    spec.get("image_size", 32))
    if not spec.get("disjoint_from"):
        return load(spec.get("n"))
    candidates, free = _disjoint_candidates(name, json.dumps({k: v for k, v in spec.items() if k != "n"},
                                                             sort_keys=True))
    n = spec.get("n") or len(free)
    if n > len(free):
        raise ValueError(f"dataset {name!r}: asked for {n} rows disjoint from {spec['disjoint_from'].get('name')!r}, "
                         f"but only {len(free)} remain")
    rows = np.sort(np.random.default_rng(spec.get("seed", 0)).choice(free, size=n, replace=False))
    return candidates.subset(rows.tolist(), name=f"{candidates.name}-disjoint")


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
                             seed=seed, threads=p.cpu_threads).identity(),
        "evaluate": ["zeroshot", "linear_probe", "linear_probe_sklearn", "retrieval"],
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
    """The resolved inputs of a spec: training data (poisoned if asked), poison info, test and probe sets.

    ``info`` describes this spec's own training data (objectives read it: ``is_poison`` marks its rows);
    ``attack_info`` is what the evaluators read: the spec's own poisoning, or for a fine-tuning spec (``init``)
    the poisoning of the run it starts from, so a fine-tuned model is measured against its parent's attack."""

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
        self._parent: Prepared | None = None
        self.filter_info: dict = {}

    @property
    def attack_info(self) -> dict:
        if self.info or not self.spec.get("init"):
            return self.info
        if self._parent is None:
            self._parent = Prepared(self.spec["init"])
        return self._parent.attack_info

    def for_evaluation(self) -> "Prepared":
        """A view whose ``info`` is :attr:`attack_info` (what the evaluators read)."""
        view = copy.copy(self)
        view.info = self.attack_info
        return view

    def apply_filter(self, keep: torch.Tensor, info: dict) -> None:
        """Train on the rows ``keep`` marks only (``is_poison`` follows); ``info`` joins the poison info
        (``filter_*`` metrics: pairs and poisons removed)."""
        keep = torch.as_tensor(keep, dtype=torch.bool)
        if len(keep) != len(self.train_data):
            raise ValueError(f"filter mask has {len(keep)} rows, the training set {len(self.train_data)}")
        rows = keep.nonzero().flatten()
        self.train_data = self.train_data.subset(rows, name=f"{self.train_data.name}-filtered")
        poison = self.info.get("is_poison")
        removed = {"filter_removed": int((~keep).sum())}
        if poison is not None:
            removed["filter_poisons_removed"] = int((poison & ~keep).sum())
            removed["filter_poisons_left"] = int((poison & keep).sum())
            self.info["is_poison"] = poison[rows]
        self.filter_info = {**removed, **info}

    def fingerprints(self) -> dict[str, str]:
        out = {"train": self.train_data.fingerprint(), "test": self.test.fingerprint()}
        if self.probe_train is not None:
            out["probe_train"] = self.probe_train.fingerprint()
        return out


def prepare(spec: dict) -> Prepared:
    return Prepared(spec)


def attack_of(spec: dict) -> dict | None:
    """The poison section a spec's model was attacked with: its own, else that of the run it starts from."""
    while spec is not None:
        if spec.get("poison"):
            return spec["poison"]
        spec = spec.get("init")
    return None


@dataclass
class AugmentConfig:
    """Augmentation fields shared by the ``clip`` objective and the defences: ``augment`` turns on the image policy
    (``image_policy``: :class:`clipguard.augment.ImagePolicy` fields) and EDA on captions (``caption_resample``:
    new EDA every epoch; False is the released RoCLIP code's fixed-once caption)."""

    augment: bool = False
    image_policy: dict | None = None
    caption_resample: bool = True


def augmentation_hooks(config: AugmentConfig, seed: int) -> tuple[Callable | None, Callable | None]:
    """Image and caption augmentation hooks for :class:`~clipguard.train.ClipObjective` from an augmentation
    config (None, None when ``augment`` is off)."""
    if not config.augment:
        return None, None
    from .augment import CaptionAugmenter, ImagePolicy

    policy = {k: tuple(v) if isinstance(v, list) else v for k, v in (config.image_policy or {}).items()}
    return ImagePolicy(**policy), CaptionAugmenter(seed=seed, resample=config.caption_resample)


def augment_modules(section: dict) -> tuple[str, ...]:
    """The modules an objective spec runs for augmentation (for the run key): the augment package when on."""
    return ("clipguard.augment",) if section.get("augment") else ()


@register_objective("clip", uses=augment_modules)
def _clip_objective(spec: dict, train_data, info: dict) -> ClipObjective:
    config = config_from_spec(AugmentConfig, spec, "objective 'clip'")
    return ClipObjective(*augmentation_hooks(config, info.get("seed", 0)))


def make_objective(spec: dict, prepared: Prepared):
    objective = dict(spec.get("objective") or {"name": "clip"})
    name = objective.get("name", "clip")
    load_plugins()
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; registered: {sorted(OBJECTIVES)}")
    return OBJECTIVES[name](objective, prepared.train_data, {**prepared.info, "seed": spec["train"]["seed"]})


@register_evaluator("zeroshot")
def _eval_zeroshot(model: CLIPModel, spec: dict, prepared: Prepared) -> dict:
    return {f"zeroshot_{k}": v for k, v in zero_shot_accuracy(model, prepared.test).items()}


def _probe_features(model: CLIPModel, prepared: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
    return (image_embeddings(model, prepared.probe_train, normalize=False),
            image_embeddings(model, prepared.test, normalize=False))


@register_evaluator("linear_probe")
def _eval_probe(model: CLIPModel, spec: dict, prepared: Prepared) -> dict:
    """The papers' torch probe (the book's linear-probe column)."""
    if prepared.probe_train is None:
        return {}
    train_x, test_x = _probe_features(model, prepared)
    return {"linear_probe_torch": linear_probe_torch(train_x, prepared.probe_train.labels, test_x,
                                                     prepared.test.labels, seed=spec.get("model_seed", 0))}


@register_evaluator("linear_probe_sklearn")
def _eval_probe_sklearn(model: CLIPModel, spec: dict, prepared: Prepared) -> dict:
    """The CLIP paper's L-BFGS probe: about 3 s a run at ``cpu``, so only the foundations chapter's run asks for it
    (attacked and defended runs report the torch probe)."""
    if prepared.probe_train is None:
        return {}
    train_x, test_x = _probe_features(model, prepared)
    return {"linear_probe_sklearn": linear_probe_sklearn(train_x, prepared.probe_train.labels, test_x,
                                                         prepared.test.labels, seed=spec.get("model_seed", 0))}


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


@dataclass
class EpochEvaluator:
    """Epoch callback: a registered evaluator (e.g. ``backdoor_asr``) after every epoch, its ASR values in the
    run's history, so a fine-tune shows when the backdoor goes (the evaluators draw from their own seeded
    generators: training is unchanged)."""

    name: str
    spec: dict
    prepared: Prepared
    last: tuple[int, dict] | None = field(default=None, init=False, repr=False)  # (epoch, every metric)

    def __call__(self, ctx, model: CLIPModel) -> dict[str, float]:
        load_plugins()
        metrics = EVALUATORS[self.name](model, self.spec, self.prepared)
        self.last = (ctx.epoch, metrics)
        return {k: v for k, v in metrics.items() if k.endswith("asr")}


def finetune_spec(parent: dict, data: dict | None = None, objective: dict | None = None, train: dict | None = None,
                  n: int | None = None, seed_offset: int = 3000, evaluate_each_epoch: bool = True,
                  **overrides) -> dict:
    """A spec that starts from the stored run of ``parent`` (its ``init``) and trains on clean ``data``: by default
    ``n`` rows (default: a fifth of the parent's) of the parent's dataset split that share no image with the
    parent's training set (``disjoint_from``), seeded ``parent seed + seed_offset``. ``train`` updates the parent's
    optimisation settings; ``objective`` defaults to plain CLIP; the evaluators are the parent's, and attack
    success is measured against the parent's attack (:func:`attack_of`). ``evaluate_each_epoch``: zero-shot
    accuracy (and the backdoor ASR, when evaluated) after every epoch, in the run's history; False evaluates the
    final model only (a fine-tuning epoch is short, so the two evaluations cost about a fifth of it)."""
    parent = copy.deepcopy(parent)
    if data is None:
        source = parent["data"]
        data = {"name": source["name"], "split": source.get("split", "train"),
                "n": n or max(1, (source.get("n") or 10000) // 5), "seed": source.get("seed", 0) + seed_offset,
                "image_size": source.get("image_size", 32), "disjoint_from": source}
    spec = {**parent, "init": parent, "data": data, "poison": None, "objective": objective or {"name": "clip"},
            "train": {**parent["train"], **(train or {})}, "track_per_sample": False,
            "evaluate_each_epoch": bool(evaluate_each_epoch)}
    for key, value in overrides.items():
        if key not in spec:
            raise ValueError(f"unknown spec key {key!r}; known: {sorted(spec)}")
        spec[key] = value
    TrainConfig(**spec["train"])  # fail now on a bad optimisation field
    return spec


def _backend(spec: dict) -> dict:
    """What changes numbers beyond the spec: the device type (autocast is on for CUDA only)."""
    device = spec["train"].get("device", "auto")
    kind = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else torch.device(device).type
    return {"device": kind}


def execute(spec: dict, prepared: Prepared, work: Path | None, parent: Run | None = None, progress: bool = True,
            device: str | None = None) -> tuple[CLIPModel, dict]:
    """Train and evaluate one spec (what :func:`run` stores; ``python -m clipguard.train_cli`` calls it under
    ``torchrun``): the model (fresh, or the ``parent`` run's weights), objective, per-epoch zero-shot and per-pair
    tracking, then the evaluators against the spec's attack (on the first process only). On the CPU all of it runs
    on the spec's ``train.threads`` threads when set, so a run gives the same numbers whatever the process's own
    thread count (a book lane's one thread, or every core for a notebook run alone)."""
    from .train import _pick_device

    config = TrainConfig(**{**spec["train"], **({"device": device} if device else {})}, progress=progress)
    with cpu_threads(config.threads if _pick_device(config.device).type == "cpu" else None):
        return _execute(spec, prepared, work, parent, config)


def _execute(spec: dict, prepared: Prepared, work: Path | None, parent: Run | None, config: TrainConfig
             ) -> tuple[CLIPModel, dict]:
    from .train import _distributed

    rank = _distributed()[0]
    model = parent.load_model().train() if parent is not None else build_model(spec["model"],
                                                                                seed=spec.get("model_seed", 0))
    objective = make_objective(spec, prepared)
    evaluation = prepared.for_evaluation()
    eval_spec = {**spec, "poison": attack_of(spec)}
    # evaluators an epoch callback also runs, on the same inputs: the last epoch's result is the final model's
    evaluated_each_epoch = {}
    if spec.get("evaluate_each_epoch", True):  # a spec without the key (pre-training) tracks zero-shot per epoch
        evaluated_each_epoch["zeroshot"] = ZeroShotEval(prepared.test)
        if spec.get("init") and "backdoor_asr" in spec.get("evaluate", []):  # a fine-tune: its ASR after every epoch
            evaluated_each_epoch["backdoor_asr"] = EpochEvaluator("backdoor_asr", eval_spec, evaluation)
    callbacks = list(evaluated_each_epoch.values())
    tracker = None
    if spec.get("track_per_sample"):
        groups = {}
        if "is_poison" in prepared.info:
            groups = {"clean": ~prepared.info["is_poison"], "poison": prepared.info["is_poison"]}
        tracker = PerSampleTracker(prepared.train_data, groups)
        callbacks.append(tracker)
    result = train(model, prepared.train_data, objective, config, run_dir=work, callbacks=callbacks)
    if tracker is not None and work is not None and rank == 0:
        tracker.save(work / "per_sample.npz")
    metrics = {"train_seconds": result.seconds, "pairs_per_second": result.pairs_per_second,
               "n_train": len(prepared.train_data)}
    for k, value in prepared.info.items():
        if isinstance(value, (int, float, str)):
            metrics[f"poison_{k}"] = value
    metrics.update(prepared.filter_info)
    if rank != 0:  # under torchrun only the first process evaluates
        return model, metrics
    for entry in spec.get("evaluate", []):
        name, options = _evaluator_name(entry)
        callback = evaluated_each_epoch.get(name)
        if not options and callback is not None and callback.last is not None and callback.last[0] == config.epochs:
            metrics.update(callback.last[1])  # computed on the final weights after the last epoch
            continue
        metrics.update(EVALUATORS[name](model, {**eval_spec, **options}, evaluation))
    for saver in prepared.info.get("savers", []) if work is not None else []:
        saver(work)
    return model, metrics


#: (store folder, spec as JSON) -> run id, for runs keyed in this process. A chapter asks for the same run many times
#: (a grid's parents, its reference rows); its key needs the data built (about a second), so it is built once.
_RUN_IDS: dict[tuple[str, str], str] = {}


def run(spec: dict, store: RunStore | None = None, force: bool = False, progress: bool = True) -> Run:
    """Get the stored run of ``spec`` or train it: build data (and poisons), model, objective; train with
    per-epoch zero-shot tracking; evaluate; store weights, history and metrics.

    A spec with ``init`` (see :func:`finetune_spec`) first gets its parent run (trained once, shared) and starts
    from the parent's weights; its key holds the parent's run id in place of the parent spec."""
    spec = copy.deepcopy(spec)
    store = store or RunStore(spec.get("profile", "cpu"))
    started = time.perf_counter()
    show = progress and not progress_log.under_runner()
    known = (str(store.dir), json.dumps(spec, sort_keys=True, default=str))
    stored = None if force or known not in _RUN_IDS else store.get(_RUN_IDS[known])
    if stored is not None:  # keyed earlier in this process: skip building its data again
        progress_log.report_run(describe(spec), "reused", time.perf_counter() - started, stored.id,
                                stored.provenance.get("wall_seconds"))
        return stored
    parent = run(spec["init"], store, progress=progress) if spec.get("init") else None
    scored = run(spec["filter"]["by"], store, progress=progress) if spec.get("filter") else None
    prepared = _prepared(spec, scored, store)
    load_plugins()
    for entry in spec.get("evaluate", []):
        name, _ = _evaluator_name(entry)
        if name not in EVALUATORS:
            raise ValueError(f"unknown evaluator {name!r}; registered: {sorted(EVALUATORS)}")

    def train_fn(work: Path):
        return execute(spec, prepared, work, parent, progress=show)

    result = store.get_or_train(train_fn=train_fn, force=force, **_key(spec, prepared, parent, scored))
    _RUN_IDS[known] = result.id
    seconds = time.perf_counter() - started
    progress_log.report_run(describe(spec), "trained" if result.trained_since(seconds) else "reused", seconds,
                            result.id, result.provenance.get("wall_seconds"))
    return result


def stored(spec: dict, store: RunStore | None = None) -> Run | None:
    """The stored run of ``spec``, or None when it is not stored (or a run it starts from is not); trains nothing.
    It keys the spec as :func:`run` does (building its data, and a filter's detector scores, which are part of a
    filtered run's key) and remembers the id, so a :func:`run` call that follows is quick."""
    spec = copy.deepcopy(spec)
    store = store or RunStore(spec.get("profile", "cpu"))
    known = (str(store.dir), json.dumps(spec, sort_keys=True, default=str))
    if known in _RUN_IDS:
        return store.get(_RUN_IDS[known])
    parent = stored(spec["init"], store) if spec.get("init") else None
    scored = stored(spec["filter"]["by"], store) if spec.get("filter") else None
    if (spec.get("init") and parent is None) or (spec.get("filter") and scored is None):
        return None
    found = store.find(**_key(spec, _prepared(spec, scored, store), parent, scored))
    if found is not None:
        _RUN_IDS[known] = found.id
    return found


def _prepared(spec: dict, scored: Run | None, store: RunStore) -> Prepared:
    """The spec's data, filtered by its scoring run's detector when it has a filter."""
    prepared = Prepared(spec)
    if scored is not None:
        load_plugins()
        name = spec["filter"]["name"]
        if name not in FILTERS:
            raise ValueError(f"unknown filter {name!r}; registered: {sorted(FILTERS)}")
        prepared.apply_filter(*FILTERS[name](prepared, spec["filter"], scored, store))
    return prepared


def describe(spec: dict) -> str:
    """A short human label of a spec: objective, attack, seed (and the parent's, for a fine-tuning spec)."""
    poison = spec.get("poison") or {}
    attack = poison.get("kind", "clean")
    if attack == "backdoor":
        attack = f"backdoor {(poison.get('trigger') or {}).get('name', '')}".strip()
    objective = spec.get("objective") or {}
    name = objective.get("name", "clip")
    name += " + augmentation" if name == "clip" and objective.get("augment") else ""  # CLIP w/ Aug vs CLIP
    label = f"{name}, {attack}, seed {spec.get('model_seed', 0)}"
    if spec.get("filter"):
        label += f", {spec['filter'].get('detector', spec['filter']['name'])} filter {spec['filter'].get('fraction', '')}"
    return f"{label} <- {describe(spec['init'])}" if spec.get("init") else label


def _key(spec: dict, prepared: Prepared, parent: Run | None, scored: Run | None = None) -> dict:
    """The run store key: the spec with its parent run (``init``) and scoring run (``filter.by``) named by id."""
    config = {**spec, "init": {"run": parent.id}} if parent is not None else spec
    if scored is not None:
        config = {**config, "filter": {**spec["filter"], "by": {"run": scored.id}}}
    return {"config": config, "data": prepared.fingerprints(), "code": code_key(spec), "environment": _backend(spec)}


def runs_over_seeds(profile: str, seeds: int | None = None, **overrides) -> list[Run]:
    """The same spec trained for each of the profile's seeds (``seeds`` overrides the count)."""
    p = resolve(profile)
    return [run(clip_spec(p, seed=s, **overrides)) for s in range(seeds or p.seeds)]


def mean_std(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0
