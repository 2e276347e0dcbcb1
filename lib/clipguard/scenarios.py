"""The book's standard attack scenarios, shared by every chapter so that the same poisoned baseline is trained once
(the run store keys runs by their spec) and every defence faces the same attack.

Counts scale with the profile's training-set size; the chosen strengths and the measurements behind them are
stated below and in the threat-models chapter (notebooks/02_threat_models/how_few_poisons).
"""

from __future__ import annotations

from .profiles import Profile, resolve

__all__ = ["backdoor_poison", "targeted_poison", "attack_spec", "ASR_EVALUATORS"]

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
    for utility and both ASRs. Per-pair cosine/loss tracking is on by default (``per_sample.npz`` in the run; the
    threat-models chapter plots it, SafeCLIP Fig. 1/4a), so every chapter shares these runs; it does not change
    training."""
    from .experiments import clip_spec

    overrides.setdefault("evaluate", ASR_EVALUATORS)
    overrides.setdefault("track_per_sample", True)
    return clip_spec(profile, seed=seed, poison=poison, **overrides)
