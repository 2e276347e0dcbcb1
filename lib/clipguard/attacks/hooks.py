"""Registers the attacks with :mod:`clipguard.experiments` (imported by ``clipguard.attacks``).

Poisoners ``backdoor`` and ``targeted`` take the experiment's ``poison`` section: a poison spec
(:func:`~clipguard.attacks.build_poisoned`) plus two optional experiment-level fields:

* ``seed``: the poison seed (default: the training data's seed);
* ``heldout``: a dataset spec for the held-out split (targets, or ``source="heldout"`` backdoor images); default:
  the test split of the evaluation set's dataset, all rows, minus the images of the evaluation set.

The ``info`` they return holds ``is_poison``, ``count``, ``rate`` (effective), ``requested``, the
:class:`~clipguard.attacks.PoisonedSet` (``poisoned``) and a saver that writes ``poison_manifest.csv`` into the run.

Evaluators: ``targeted_asr`` (top-1/top-5 over the evaluation classes) and ``backdoor_asr`` (options:
``placement`` for the test-time placement, ``seed`` for random triggers; default: the training placement and the
model seed; triggered test images are converted to 8 bits with the spec's ``overflow``, as the poisons were).
Both return nothing for a run of the other attack kind or without poisons.
"""

from __future__ import annotations

import torch

from .. import experiments
from ..data import ImageCaptionSet
from .build import build_poisoned, without_images_of
from .manifest import save_manifest
from .metrics import backdoor_asr, targeted_asr
from .specs import poison_spec
from .triggers import make_trigger

__all__ = ["heldout_for", "poisoner"]

_EXPERIMENT_FIELDS = ("seed", "heldout")


def heldout_for(spec: dict, test: ImageCaptionSet, heldout_spec: dict | None = None) -> ImageCaptionSet:
    """The held-out split of an experiment: ``heldout_spec`` (a dataset spec) or the full test split of the
    evaluation dataset, minus the evaluation images."""
    heldout_spec = heldout_spec or {**spec["test"], "n": None}
    return without_images_of(experiments.load_dataset(heldout_spec), test, name="heldout")


def poisoner(clean: ImageCaptionSet, poison: dict, context: dict) -> tuple[ImageCaptionSet, dict]:
    """The experiments poisoner: build the poisoned set and the info the objectives and evaluators read."""
    spec = context["spec"]
    attack = {k: v for k, v in poison.items() if k not in _EXPERIMENT_FIELDS}
    parsed = poison_spec(attack)
    seed = int(poison.get("seed", spec.get("data", {}).get("seed", 0)))
    needs_heldout = parsed.kind == "targeted" or getattr(parsed, "source", "train") == "heldout"
    heldout = heldout_for(spec, context["test"], poison.get("heldout")) if needs_heldout else None
    poisoned = build_poisoned(clean, parsed, seed=seed, heldout=heldout)
    info = {"is_poison": poisoned.is_poison, "poisoned": poisoned, **poisoned.summary(),
            "savers": [lambda work: save_manifest(poisoned.manifest, work / "poison_manifest.csv")]}
    info.pop("n_train")
    return poisoned.data, info


experiments.register_poisoner("backdoor", uses=("clipguard.attacks",))(poisoner)
experiments.register_poisoner("targeted", uses=("clipguard.attacks",))(poisoner)


@experiments.register_evaluator("targeted_asr", uses=("clipguard.attacks",))
def _eval_targeted(model, spec: dict, prepared) -> dict:
    poisoned = prepared.info.get("poisoned")
    if poisoned is None or poisoned.targets is None:
        return {}
    test = prepared.test
    result = targeted_asr(model, poisoned.targets, test.classnames, test.templates, ks=(1, 5))
    return {f"targeted_{k}": v for k, v in result.items() if k != "definition"}


@experiments.register_evaluator("backdoor_asr", uses=("clipguard.attacks",))
def _eval_backdoor(model, spec: dict, prepared) -> dict:
    poison = spec.get("poison") or {}
    if poison.get("kind") != "backdoor":
        return {}
    parsed = poison_spec({k: v for k, v in poison.items() if k not in _EXPERIMENT_FIELDS})
    seed = int(spec.get("seed", spec.get("model_seed", 0)))
    out = {}
    for i, component in enumerate(parsed.components):
        trigger = make_trigger(component["trigger"])
        if spec.get("placement") and "placement" in trigger.params:
            trigger = trigger.with_params(placement=spec["placement"])
        result = backdoor_asr(model, prepared.test, trigger, component["target_class"],
                              torch.Generator().manual_seed(seed), overflow=parsed.overflow)
        prefix = "backdoor_" if len(parsed.components) == 1 else f"backdoor{i}_"
        out.update({f"{prefix}{k}": v for k, v in result.items() if k in ("successes", "total", "asr", "target",
                                                                         "placement", "n_excluded")})
    return out
