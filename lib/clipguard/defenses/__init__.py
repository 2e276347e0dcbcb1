"""Defences, one module each: its config (parsing its own spec), its objective, ``spec()`` and its registration
with :mod:`clipguard.experiments` (objective) and :mod:`clipguard.scenarios` (the book's defence entry).

Adding a defence is one module here plus its import below; no other defence and no central table changes.
"""

from . import roclip  # noqa: F401
from .roclip import *  # noqa: F401,F403
from .roclip import spec as roclip_spec  # noqa: F401
from . import safeclip  # noqa: F401
from .safeclip import *  # noqa: F401,F403
from .safeclip import spec as safeclip_spec  # noqa: F401
from . import cleanclip  # noqa: F401
from .cleanclip import *  # noqa: F401,F403
from .cleanclip import spec as cleanclip_spec  # noqa: F401
from . import detect_retrain  # noqa: F401
from ..scenarios import SMALL_IMAGE_POLICY, augmented_clip_spec  # noqa: F401
