"""The book's standard attack scenarios, shared by every chapter so that the same poisoned baseline is trained once
(the run store keys runs by their spec) and every defence faces the same attack.

Counts scale with the profile's training-set size; the chosen rates are stated in the threat-models chapter.
"""

from __future__ import annotations

from .profiles import Profile, resolve

__all__ = ["backdoor_poison", "targeted_poison", "attack_spec", "ASR_EVALUATORS"]

#: Evaluators every attacked run reports (clean utility plus both ASRs; each ASR is empty for the other attack).
ASR_EVALUATORS = ["zeroshot", "linear_probe", "targeted_asr", "backdoor_asr"]

#: Poison rate of the standard backdoor (fraction of the training set added as triggered pairs).
BACKDOOR_RATE = 0.02
#: Poisoned pairs per target image of the standard targeted attack (16 targets, as the papers).
TARGETED_PER_TARGET = {"smoke": 4, "cpu": 12, "gpu": 25}


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


def attack_spec(profile: str | Profile, poison: dict, seed: int = 0, **overrides) -> dict:
    """The standard CLIP spec of a profile under ``poison``, evaluated for utility and both ASRs."""
    from .experiments import clip_spec

    overrides.setdefault("evaluate", ASR_EVALUATORS)
    return clip_spec(profile, seed=seed, poison=poison, **overrides)
