"""The book's standard attack scenarios, shared by every chapter so that the same poisoned baseline is trained once
(the run store keys runs by their spec) and every defence faces the same attack.

Counts scale with the profile's training-set size; the chosen strengths and the measurements behind them are
stated below and in the threat-models chapter (notebooks/02_threat_models/how_few_poisons).
"""

from __future__ import annotations

from typing import Callable

from .profiles import PROFILES, Profile, resolve

__all__ = ["backdoor_poison", "targeted_poison", "attack_spec", "ASR_EVALUATORS", "SMALL_IMAGE_POLICY",
           "augmented_clip_spec", "recorded_poisons", "DEFENCES", "register_defence", "defended"]

#: Evaluators every attacked run reports (clean utility plus both ASRs; each ASR is empty for the other attack).
ASR_EVALUATORS = ["zeroshot", "linear_probe", "targeted_asr", "backdoor_asr"]

#: Poison rate of the standard backdoor (fraction of the training set added as triggered pairs). Tuned at ``cpu``
#: (plain CLIP, 10,000 pairs, 8 epochs, HTBA patch top-left, target "bag"): 200 pairs (2%) give 99.4% backdoor ASR
#: (seed 0) at 82.2% zero-shot (clean model 80.8%); 100 pairs (1%) give 1.2% and 50 pairs 1.1%: the backdoor
#: switches on between 1% and 2%. ``smoke`` (20 pairs) and ``gpu`` (1,200 pairs) use the same rate, untuned.
BACKDOOR_RATE = 0.02
#: Poisoned pairs per target image of the standard targeted attack (16 targets, as the papers). Tuned at ``cpu``:
#: 16 per target gave 13/16 (seed 0), 14/16 (seed 1) and 14/16 (seed 2) at 80-82% zero-shot; 12 per target gave
#: 13/16 and 11/16 (seeds 0, 1), 8 per target 7/16 (seed 0); 16 is the standard. ``smoke`` keeps about the same
#: share of its 1,024 pairs; ``gpu`` is untuned.
TARGETED_PER_TARGET = {"smoke": 2, "cpu": 16, "gpu": 25}


def _profile(profile: str | Profile) -> Profile:
    return resolve(profile) if isinstance(profile, str) else profile


def backdoor_poison(profile: str | Profile, trigger: str | dict = "badnet_htba", target_class: str = "bag",
                    rate: float | None = None, **extra) -> dict:
    """BadNet-style backdoor: triggered training images paired with template captions naming ``target_class``."""
    p = _profile(profile)
    trigger_spec = {"name": trigger} if isinstance(trigger, str) else dict(trigger)
    count = max(1, round((BACKDOOR_RATE if rate is None else rate) * p.n_train))
    return {"kind": "backdoor", "trigger": trigger_spec, "target_class": target_class, "count": count, **extra}


def targeted_poison(profile: str | Profile, per_target: int | None = None, n_targets: int = 16, **extra) -> dict:
    """Carlini–Terzis targeted poisoning: ``n_targets`` held-out images, each paired with ``per_target`` captions
    naming a random other class."""
    p = _profile(profile)
    return {"kind": "targeted", "n_targets": n_targets,
            "per_target": per_target if per_target is not None else TARGETED_PER_TARGET[p.name], **extra}


def attack_spec(profile: str | Profile, poison: dict | None, seed: int = 0, **overrides) -> dict:
    """The standard CLIP spec of a profile under ``poison`` (None: the clean baseline of the same spec), evaluated
    for utility and both ASRs. Per-pair cosine/loss tracking (``per_sample.npz`` in the run) is on by default only
    for the runs whose records the chapters read: plain CLIP of the profile's model and data set at seed 0 under
    one of :func:`recorded_poisons`. So every chapter that uses those attacks shares one run, and no other run pays
    the extra pass over the training pairs after each epoch (about a sixth of a run). A chapter that reads other
    records asks for them (``track_per_sample=True``), e.g. at another seed. Tracking never changes training."""
    from .experiments import clip_spec

    overrides.setdefault("evaluate", ASR_EVALUATORS)
    p = _profile(profile)
    named = PROFILES.get(p.name, p)
    standard = overrides.get("model", p.model) == p.model and p.dataset == named.dataset
    overrides.setdefault("track_per_sample", _plain_clip(overrides.get("objective")) and seed == 0
                         and poison is not None and standard and _records_read(p, poison))
    return clip_spec(profile, seed=seed, poison=poison, **overrides)


def recorded_poisons(profile: str | Profile) -> list[dict]:
    """The attacks whose per-pair records the chapters read (of their attacked plain-CLIP run at seed 0): the
    standard attacks of :func:`clipguard.comparison.standard_poisons`. The threat-models chapter plots the
    backdoor's and the targeted attack's records, SafeCLIP's Fig. 1 and 4a read them, and the detection chapter
    scores every one of them with ABL (its multi-target family, read there only, asks for them itself)."""
    from .comparison import standard_poisons

    return list(standard_poisons(profile).values())


def _records_read(profile: Profile, poison: dict) -> bool:
    """Whether ``poison`` is one of :func:`recorded_poisons`, compared as the run store keys it (tuples and lists
    alike, 2.0 and 2 alike), so a spec that names the same run also records."""
    from .runs import config_hash

    return config_hash(poison) in {config_hash(recorded) for recorded in recorded_poisons(profile)}


def _plain_clip(objective: dict | None) -> bool:
    return objective is None or objective == {"name": "clip"}


#: The book's image policy for 32 px images: milder crops and colour jitter than the 224 px reference. Measured on
#: 5,000 Fashion-MNIST pairs, 4 epochs, zero-shot top-1: CLIP 67.1%; with the reference-strength policy (crop scale
#: 0.5-1, jitter 0.5) and EDA 41.5%; with this policy and EDA 54.7%. A tiny model trained for a few epochs cannot
#: absorb the reference strength (the papers train RN50 for 24-30 epochs).
SMALL_IMAGE_POLICY = {"scale": [0.8, 1.0], "jitter_p": 0.5, "brightness": 0.3, "contrast": 0.3, "saturation": 0.3,
                      "hue": 0.0}


def augmented_clip_spec(**fields) -> dict:
    """Plain CLIP with the defences' augmentation (the "CLIP w/ Aug" / "Aug only" rows of RoCLIP Tables 5 and 7)."""
    from .experiments import AugmentConfig
    from .utils import config_from_spec

    config = config_from_spec(AugmentConfig, {"augment": True, "image_policy": SMALL_IMAGE_POLICY, **fields},
                              "objective 'clip'")
    return {"name": "clip", **vars(config)}


#: The book's defences: name -> ``fn(attacked_spec, **fields) -> defended spec``. Each defence module registers
#: its own entry (:func:`register_defence`); "clip" (no defence) and "clip_aug" (augmentation only) live here.
DEFENCES: dict[str, Callable[..., dict]] = {}


def register_defence(name: str):
    def decorator(fn):
        DEFENCES[name] = fn
        return fn
    return decorator


@register_defence("clip")
def _no_defence(attacked: dict) -> dict:
    return dict(attacked)


@register_defence("clip_aug")
def _augmentation_only(attacked: dict, **fields) -> dict:
    return {**attacked, "objective": augmented_clip_spec(**fields)}


def defended(attacked: dict, defence: str, **fields) -> dict:
    """The spec of ``attacked`` trained (or fine-tuned) with ``defence`` (a name of :data:`DEFENCES`)."""
    from .experiments import load_plugins

    load_plugins()
    if defence not in DEFENCES:
        raise ValueError(f"unknown defence {defence!r}; registered: {sorted(DEFENCES)}")
    spec = DEFENCES[defence](attacked, **fields)
    if defence != "clip" and spec.get("track_per_sample"):
        spec = {**spec, "track_per_sample": False}  # a defended run's per-pair records are read by no chapter
    return spec
