"""Attacks on CLIP: backdoor triggers, poisoned training sets with manifests, attack-success metrics.

See attacks.md and evaluation.md Section 4 of the reference. Modules: :mod:`.triggers` (trigger registry),
:mod:`.specs` (poison specs), :mod:`.build` (:func:`build_poisoned`, :func:`rebuild_from_manifest`),
:mod:`.manifest` (poison manifests), :mod:`.metrics` (ASR), :mod:`.adaptive` (attacks aimed at one defence each).
Importing the package also registers the ``backdoor``/``targeted`` poisoners and the ``targeted_asr``/
``backdoor_asr`` evaluators with :mod:`clipguard.experiments` (:mod:`.hooks`).
"""

from . import adaptive, build, hooks, manifest, metrics, specs, triggers  # noqa: F401
from .adaptive import *  # noqa: F401,F403
from .build import *  # noqa: F401,F403
from .manifest import *  # noqa: F401,F403
from .metrics import *  # noqa: F401,F403
from .specs import *  # noqa: F401,F403
from .triggers import *  # noqa: F401,F403

__all__ = (list(triggers.__all__) + list(specs.__all__) + list(build.__all__) + list(manifest.__all__)
           + list(metrics.__all__) + list(adaptive.__all__))
