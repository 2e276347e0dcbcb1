"""Former home of poison specs, building and manifests, now :mod:`.specs`, :mod:`.build` and :mod:`.manifest`;
kept as a re-export for ``from clipguard.attacks.poison import ...`` (use ``clipguard.attacks`` instead)."""

from ..data import class_synonyms as default_synonyms  # noqa: F401
from .build import *  # noqa: F401,F403
from .build import __all__ as _build_all
from .manifest import *  # noqa: F401,F403
from .manifest import __all__ as _manifest_all
from .specs import *  # noqa: F401,F403
from .specs import __all__ as _specs_all

__all__ = list(_specs_all) + list(_build_all) + list(_manifest_all) + ["default_synonyms"]
