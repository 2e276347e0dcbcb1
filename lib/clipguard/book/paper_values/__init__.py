"""The papers' published numbers, as data: one module per paper (``roclip``, ``safeclip``, ``cleanclip``,
``detection``, ``threat_models``). Chapters read their "paper" columns from here; no notebook types a paper number.
"""

from . import detection, roclip, threat_models  # noqa: F401
from .roclip import ROCLIP, ROCLIP_ABLATION_SETTING, ROCLIP_SETTING  # noqa: F401
