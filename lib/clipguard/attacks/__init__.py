"""Attacks on CLIP: backdoor triggers, poisoned training sets with manifests, attack-success metrics.

See attacks.md and evaluation.md Section 4 of the reference. Modules: :mod:`.triggers`, :mod:`.poison`,
:mod:`.metrics`.
"""

from .triggers import *  # noqa: F401,F403
from .triggers import __all__ as _triggers_all

__all__ = list(_triggers_all)
