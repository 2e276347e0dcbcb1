"""The presentation tier: tables (:mod:`.tables`), figures (:mod:`.plots`), the papers' values
(:mod:`.paper_values`), the checks behind the book's statements (:mod:`.checks`: one poison rate, attacks that did
not take, collapsed defences), robust timings (:mod:`.timing`), table formats (:mod:`.formatting`) and the
reproduction scorecard (:mod:`.scorecard`). Nothing here changes what a run computes, so editing it never
retrains."""

from . import checks, formatting, paper_values, plots, scorecard, tables, timing  # noqa: F401
from .plots import setup_style  # noqa: F401
from .tables import *  # noqa: F401,F403
