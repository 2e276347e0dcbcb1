"""Train the missing runs of a grid in several processes at once, when the cores are free.

A ``cpu`` run trains on one thread (its spec pins ``train.threads``, so its numbers do not depend on who trains it),
and a page run alone on a two-core machine would leave a core idle while it trains its grid one run after another.
:func:`train_missing` first finds which specs are not stored (:func:`clipguard.experiments.stored`), then trains
those ``workers`` at a time in spawned processes through the same :func:`clipguard.experiments.run` and run store
(whose lock makes a run requested twice train once): the runs they start from (parents, scored runs) first, then
the rest. Every run is then returned from the store, so a run trained in a worker is the run a single process
would have trained, bit for bit.

The book's runner already fills the cores with one notebook per core, so it sets ``CLIPGUARD_GRID_WORKERS=1`` in
each lane; a page run alone (a reader's papermill command) uses :func:`grid_workers`: the cores over the threads a
run trains on.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing
import os
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from . import progress

if TYPE_CHECKING:  # the runner imports this module for WORKERS_VARIABLE, before any lane loads torch
    from .runs import RunStore

__all__ = ["WORKERS_VARIABLE", "grid_workers", "train_missing"]

WORKERS_VARIABLE = "CLIPGUARD_GRID_WORKERS"


def grid_workers(threads_per_run: int | None) -> int:
    """Processes a grid may train in at once: ``CLIPGUARD_GRID_WORKERS`` when set, else the cores over the threads
    one run trains on (one process when a run takes every core, ``None``: the GPU profile, or torch's default)."""
    value = os.environ.get(WORKERS_VARIABLE)
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{WORKERS_VARIABLE} must be a positive integer, got {value!r}")
        return int(value)
    if not threads_per_run:
        return 1
    return max(1, (os.cpu_count() or 1) // threads_per_run)


def train_missing(specs: list[dict], store: RunStore, workers: int | None = None, desc: str = "runs") -> int:
    """Train the specs that are not stored, ``workers`` processes at a time (None: :func:`grid_workers` of the
    first spec's thread count), the runs they start from first; returns how many the workers trained. With one
    worker, or at most one run missing, it does nothing: the caller's :func:`clipguard.experiments.run` trains in
    order. A worker that fails (a poisoner registered only in the calling notebook, say) is reported and its run
    left to the caller, which trains it in its own process or raises the error there."""
    if workers is None:
        workers = grid_workers(specs[0].get("train", {}).get("threads") if specs else None)
    if workers < 2:
        return 0
    from . import experiments

    missing = _distinct([spec for spec in specs if experiments.stored(spec, store) is None])
    if len(missing) < 2:
        return 0
    starts = _distinct([start for spec in missing for start in _starts(spec)
                       if experiments.stored(start, store) is None])
    started = {_text(start) for start in starts}
    missing = [spec for spec in missing if _text(spec) not in started]  # a grid cell that another one starts from
    processes = min(workers, max(len(starts), len(missing)))
    bar = tqdm(total=len(starts) + len(missing), desc=f"{desc}: training in {processes} processes", mininterval=5,
               disable=progress.under_runner())
    trained = 0
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_environment) as pool:
        for phase in (starts, missing):
            jobs = [pool.submit(_train, (spec, sorted(_modules(spec)), str(Path(store.root).resolve()), store.profile))
                    for spec in phase]
            for job in as_completed(jobs):
                try:
                    job.result()
                    trained += 1
                except Exception as error:  # noqa: BLE001 - left to the caller, which trains it or raises
                    warnings.warn(f"{error}; it is left to this process", RuntimeWarning, stacklevel=2)
                bar.update(1)
    bar.close()
    return trained


def _starts(spec: dict) -> list[dict]:
    """The runs a spec starts from: its parent (fine-tuning) and the run its filter scores."""
    return [s for s in (spec.get("init"), (spec.get("filter") or {}).get("by")) if s]


def _modules(spec: dict) -> set[str]:
    """The modules that registered what the spec and the runs it starts from use (a spawned worker imports them:
    an objective registered outside :func:`clipguard.experiments.load_plugins`' packages, such as
    ``clipguard.utility_probes``, is otherwise unknown there)."""
    from . import experiments

    return set(experiments.spec_modules(spec)).union(*(_modules(start) for start in _starts(spec)))


def _text(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True, default=str)


def _distinct(specs: list[dict]) -> list[dict]:
    seen: dict[str, dict] = {}
    for spec in specs:
        seen.setdefault(_text(spec), spec)
    return list(seen.values())


def _worker_environment() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _train(job: tuple[dict, list[str], str, str]) -> str:
    from . import experiments
    from .runs import RunStore

    spec, modules, root, profile = job
    try:
        for module in modules:
            if module != "__main__":  # what a notebook registers itself stays unknown here: left to the caller
                importlib.import_module(module)
        return experiments.run(spec, RunStore(profile, root=root), progress=False).id
    except Exception as error:  # name the run: a traceback from a worker process says little on its own
        raise RuntimeError(f"training {experiments.describe(spec)} in a worker process failed: {error}") from error
