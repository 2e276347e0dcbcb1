"""The presentation tier: tables (:mod:`.tables`), figures (:mod:`.plots`) and the papers' values
(:mod:`.paper_values`). Nothing here changes what a run computes, so editing it never retrains."""

from . import paper_values, plots, tables  # noqa: F401
from .plots import setup_style  # noqa: F401
from .tables import *  # noqa: F401,F403
