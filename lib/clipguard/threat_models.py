"""Helpers of the threat-models chapter (notebooks/02_threat_models).

* :func:`supervised_attack_run`: the dirty-label **supervised analogue** of a poisoned CLIP spec (SafeCLIP's claim
  that CLIP needs orders of magnitude fewer poisons than supervised learning): an
  :class:`~clipguard.supervised.ImageClassifier` trained on exactly the same poisoned training images, each labelled
  with the class its caption names, scored with the same clean accuracy / backdoor ASR / targeted ASR definitions.
  Stored in the run store, so a notebook never retrains it.
* :func:`tracked_pairs`: the per-pair cosine/loss records of a run trained with ``track_per_sample`` as a long table
  with each row marked clean or poisoned (SafeCLIP Fig. 1 and 4a).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import experiments
from .runs import Run, RunStore
from .supervised import SupervisedConfig, predict, train_classifier

__all__ = ["supervised_config_for", "supervised_attack_run", "tracked_pairs"]


def supervised_config_for(spec: dict, **overrides) -> SupervisedConfig:
    """The supervised recipe matching a CLIP spec's optimisation (epochs, batch size, lr, warm-up, seed)."""
    train = spec["train"]
    values = {"epochs": train["epochs"], "batch_size": train["batch_size"], "lr": train["lr"],
              "warmup_steps": train["warmup_steps"], "seed": train["seed"], "progress": False}
    return SupervisedConfig(**{**values, **overrides})


def _evaluate_classifier(model, prepared: experiments.Prepared, seed: int) -> dict:
    from .attacks import backdoor_success, make_trigger, poison_spec, targeted_success, triggered_test_images

    test = prepared.test
    out = {"accuracy": float(predict(model, test.float_images()).argmax(1).eq(test.labels).float().mean())}
    poison = prepared.spec.get("poison") or {}
    poisoned = prepared.info.get("poisoned")
    if poison.get("kind") == "backdoor":
        parsed = poison_spec({k: v for k, v in poison.items() if k not in ("seed", "heldout")})
        if len(parsed.components) != 1:
            raise ValueError("supervised_attack_run scores single-target backdoors only")
        component = parsed.components[0]
        trigger = make_trigger(component["trigger"])
        target = list(test.classnames).index(component["target_class"])
        triggered = triggered_test_images(test.float_images(), trigger, torch.Generator().manual_seed(seed),
                                          parsed.overflow)
        result = backdoor_success(predict(model, triggered), test.labels, target)
        out.update({"backdoor_successes": result.successes, "backdoor_total": result.total,
                    "backdoor_asr": result.rate, "backdoor_target": component["target_class"]})
    if poisoned is not None and poisoned.targets is not None:
        targets = poisoned.targets
        result = targeted_success(predict(model, targets.float_images()), targets.adversarial, k=1)
        out.update({"targeted_top1_successes": result.successes, "targeted_n_targets": result.total,
                    "targeted_top1_asr": result.rate})
    return out


def supervised_attack_run(spec: dict, store: RunStore | None = None, config: SupervisedConfig | None = None,
                          force: bool = False) -> Run:
    """Train (or fetch) the supervised analogue of the CLIP experiment ``spec`` and return the stored run.

    The training set is the spec's poisoned training set (:func:`clipguard.experiments.prepare`); labels are the
    class each caption names (:func:`clipguard.data.caption_categories`; rows naming no class are skipped), so
    a backdoor poison is a dirty-label poison (triggered image labelled as the target) and a targeted poison is the
    target image labelled as its adversarial class. ``config`` defaults to the spec's optimisation
    (:func:`supervised_config_for`). Metrics: ``accuracy`` on the clean test images; for a backdoor,
    ``backdoor_asr`` (evaluation.md 4.2: triggered test images of other classes predicted as the target, trigger at
    its training placement, random triggers seeded with the model seed); for a targeted attack,
    ``targeted_top1_asr``; plus ``n_labelled``, ``n_poison``, ``poison_labelled_as_target`` and ``train_seconds``.
    """
    import time

    from .data import caption_categories

    spec = copy.deepcopy(spec)
    store = store or RunStore(spec.get("profile", "cpu"))
    config = config or supervised_config_for(spec)
    prepared = experiments.prepare(spec)
    recipe = {k: v for k, v in dataclasses.asdict(config).items() if k != "progress"}
    key = {"kind": "supervised_analogue", "clip_spec": spec, "supervised": recipe}

    def compute(work: Path) -> dict:
        data = prepared.train_data
        labels = caption_categories(data)
        started = time.perf_counter()
        model = train_classifier(data.images, labels, len(data.classnames), spec["model"], config)
        seconds = time.perf_counter() - started
        is_poison = prepared.info.get("is_poison", torch.zeros(len(data), dtype=torch.bool))
        metrics = {"n_train": len(data), "n_labelled": int((labels >= 0).sum()), "n_poison": int(is_poison.sum()),
                   "train_seconds": seconds}
        poisoned = prepared.info.get("poisoned")
        if poisoned is not None and len(poisoned.manifest):
            rows = torch.tensor(poisoned.manifest["row"].tolist(), dtype=torch.long)
            wanted = torch.tensor(poisoned.manifest["target_label"].tolist(), dtype=torch.long)
            metrics["poison_labelled_as_target"] = float(labels[rows].eq(wanted).float().mean())
        metrics.update(_evaluate_classifier(model, prepared, int(spec.get("model_seed", 0))))
        return metrics

    return store.get_or_compute(key, compute, data=prepared.fingerprints(), force=force)


def tracked_pairs(run: Run) -> pd.DataFrame:
    """Per-pair records of a run trained with ``track_per_sample``: one row per (epoch, training pair) with
    ``epoch``, ``row``, ``cosine`` (image–caption cosine similarity), ``loss`` (per-pair CLIP loss), ``poison``
    (bool, from the run's poison manifest) and ``target_id`` (targeted attacks: the target image; else -1)."""
    path = run.artifact("per_sample.npz")
    if not path.exists():
        raise FileNotFoundError(f"run {run.id} has no per-pair records: train it with track_per_sample=True")
    records = np.load(path)
    epochs, cosine, loss = records["epochs"], records["cosine"], records["loss"]
    n = cosine.shape[1]
    poison = np.zeros(n, dtype=bool)
    target_id = np.full(n, -1, dtype=np.int64)
    manifest_path = run.artifact("poison_manifest.csv")
    if manifest_path.exists():
        from .attacks import load_manifest

        manifest = load_manifest(manifest_path)
        poison[manifest["row"].to_numpy()] = True
        target_id[manifest["row"].to_numpy()] = manifest["target_id"].to_numpy()
    return pd.DataFrame({"epoch": np.repeat(epochs, n), "row": np.tile(np.arange(n), len(epochs)),
                         "cosine": cosine.reshape(-1), "loss": loss.reshape(-1),
                         "poison": np.tile(poison, len(epochs)), "target_id": np.tile(target_id, len(epochs))})
