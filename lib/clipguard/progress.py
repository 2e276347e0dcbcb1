"""Progress of long work reported to the person running the book, not to the page.

Under the book's runner (:mod:`clipguard.notebooks`) the environment names a log file (``CLIPGUARD_PROGRESS_LOG``);
each finished unit of work (a run trained or reused) appends one JSON line there, and the runner prints it in the
terminal. Executed pages then carry no progress-bar residue. Outside the runner nothing is written.
"""

from __future__ import annotations

import json
import os
import time

__all__ = ["LOG_VARIABLE", "under_runner", "report_run", "step", "end_group"]

LOG_VARIABLE = "CLIPGUARD_PROGRESS_LOG"


def under_runner() -> bool:
    return bool(os.environ.get(LOG_VARIABLE))


def _append(record: dict) -> None:
    path = os.environ.get(LOG_VARIABLE)
    if path:
        with open(path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


_context: dict = {"group": "", "step": None, "total": None}


def report_run(what: str, status: str, seconds: float, run: str | None = None, cost: float | None = None) -> None:
    """One unit of work finished: ``status`` is ``"trained"`` or ``"reused"``; numbered within the current
    :func:`step` of a group, if any. ``run``: the run's id; ``cost``: the seconds it took when it was trained
    (whoever trained it), so the runner can say what a notebook's runs cost even when another trained them."""
    record = {**_context, "what": what, "status": status, "seconds": round(seconds, 1), "time": time.time()}
    if run is not None:
        record.update(run=run, cost=None if cost is None else round(float(cost), 1))
    _append(record)


def step(group: str, number: int, total: int) -> None:
    """The next reports belong to unit ``number`` of ``total`` of ``group`` (e.g. a grid of runs)."""
    _context.update(group=group, step=number, total=total)


def end_group() -> None:
    _context.update(group="", step=None, total=None)
