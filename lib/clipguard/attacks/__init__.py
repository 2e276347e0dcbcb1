"""Attacks on CLIP: backdoor triggers, poisoned training sets with manifests, attack-success metrics.

See attacks.md and evaluation.md Section 4 of the reference. Modules: :mod:`.triggers` (trigger registry),
:mod:`.poison` (poison specs, :func:`build_poisoned`, manifests), :mod:`.metrics` (ASR).
Importing the package also registers the ``backdoor``/``targeted`` poisoners and the ``targeted_asr``/
``backdoor_asr`` evaluators with :mod:`clipguard.experiments` (:mod:`.hooks`).
"""

from . import hooks, metrics, poison, triggers  # noqa: F401
from .metrics import *  # noqa: F401,F403
from .poison import *  # noqa: F401,F403
from .triggers import *  # noqa: F401,F403

__all__ = list(triggers.__all__) + list(poison.__all__) + list(metrics.__all__)
