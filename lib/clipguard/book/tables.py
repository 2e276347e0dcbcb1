"""Tables the chapters share: run a grid of specs with one progress bar, one canonical results frame, summaries over
seeds, paper values beside ours, the scale sentence.

Presentation only: nothing here changes what a run computes, so it is outside the run store's code identity.
"""

from __future__ import annotations

import math
from typing import Hashable, Iterable

import pandas as pd
from tqdm import tqdm

from .. import experiments, parallel, progress
from ..profiles import Profile, resolve
from ..runs import Run, RunStore

__all__ = ["run_grid", "mean_spread", "summarise", "scale_note", "history_frame", "attack_success", "results_frame",
           "beside_paper", "paper_vs_ours", "METRIC_COLUMNS"]


def run_grid(specs: dict[Hashable, dict], store: RunStore, desc: str = "runs",
             workers: int | None = None) -> dict[Hashable, Run]:
    """Get or train every spec (stored runs return at once). The missing ones train ``workers`` processes at a
    time when the cores are free (:func:`clipguard.parallel.train_missing`: a page run alone on two cores trains
    two one-thread runs at once; in the book's lanes one). Under the book's runner, progress goes to the runner's
    terminal (which run of how many, trained or reused, seconds) and nothing to the page; elsewhere one bar."""
    parallel.train_missing(list(specs.values()), store, workers, desc)
    done = {}
    bar = tqdm(specs.items(), desc=desc, total=len(specs), mininterval=5, disable=progress.under_runner())
    try:
        for number, (key, spec) in enumerate(bar, 1):
            bar.set_postfix_str(str(key)[:60])
            progress.step(desc, number, len(specs))
            done[key] = experiments.run(spec, store, progress=False)
    finally:
        progress.end_group()
    return done


def mean_spread(values: Iterable[float], scale: float = 100.0, digits: int = 1) -> str:
    """``"m ± s"`` (sample standard deviation; no ± for a single value) of finite values, times ``scale``."""
    values = [float(v) * scale for v in values if v is not None and math.isfinite(float(v))]
    if not values:
        return "–"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    spread = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def summarise(frame: pd.DataFrame, by: list[str], columns: list[str], scale: float = 100.0,
              digits: int = 1) -> pd.DataFrame:
    """One row per group: ``mean ± std`` over the group's rows (seeds) of each column, and the count ``n``."""
    grouped = frame.groupby(by, sort=False)
    out = grouped[columns].agg(lambda s: mean_spread(s, scale, digits))
    out["n"] = grouped.size()
    return out.reset_index()


def scale_note(profile: str | Profile, paper: str) -> str:
    """One sentence stating our scale against the paper's."""
    p = resolve(profile) if isinstance(profile, str) else profile
    return (f"Scale: ours is `{p.model}` trained on {p.n_train:,} {p.dataset} pairs for {p.epochs} epochs "
            f"(batch {p.batch_size}, profile `{p.name}`); the paper's is {paper}.")


def history_frame(run: Run, kind: str = "epoch") -> pd.DataFrame:
    """A run's training history (``metrics.jsonl``) of one record kind as a data frame."""
    return pd.DataFrame([r for r in run.history if r.get("kind") == kind])


def attack_success(run: Run) -> float | None:
    """A run's attack success: targeted top-1 ASR for a targeted attack, backdoor ASR for a backdoor, else None."""
    kind = (run.config.get("poison") or {}).get("kind")
    key = {"targeted": "targeted_top1_asr", "backdoor": "backdoor_asr"}.get(kind)
    return run.metrics.get(key) if key else None


#: Canonical metric columns of :func:`results_frame` -> the run metric each comes from (fractions in [0, 1]).
METRIC_COLUMNS = {"zeroshot": "zeroshot_top1", "linear_probe": "linear_probe_torch", "poisons": "poison_count",
                  "poison_rate": "poison_rate", "train_seconds": "train_seconds"}


def _attack_name(config: dict) -> str:
    poison = experiments.attack_of(config) if not (config.get("init") or {}).get("run") else None
    poison = poison or config.get("poison") or {}
    if not poison:
        return "none"
    if poison.get("kind") == "backdoor":
        trigger = (poison.get("trigger") or {}).get("name", "backdoor")
        return f"backdoor: {trigger}"
    return poison.get("kind", "none")


def results_frame(runs: dict[Hashable, Run] | list[Run], key_names: list[str] | None = None) -> pd.DataFrame:
    """One row per run with the canonical columns every chapter uses: the grid key (split into ``key_names`` when
    the keys are tuples), ``run``, ``seed``, ``asr`` (:func:`attack_success`), the :data:`METRIC_COLUMNS`."""
    items = runs.items() if isinstance(runs, dict) else enumerate(runs)
    rows = []
    for key, run in items:
        row = {}
        if key_names:
            row.update(dict(zip(key_names, key if isinstance(key, tuple) else (key,))))
        row.update({"run": run.id, "seed": run.config.get("model_seed"), "asr": attack_success(run)})
        row.update({column: run.metrics.get(metric) for column, metric in METRIC_COLUMNS.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def beside_paper(ours: pd.DataFrame, paper: dict, on: list[str], column: str = "paper") -> pd.DataFrame:
    """``ours`` with a ``column`` of the paper's values looked up by the tuple of ``on`` columns ("—" where the
    paper has no such cell)."""
    out = ours.copy()
    keys = [tuple(r) if len(on) > 1 else r[0] for r in out[on].itertuples(index=False)]
    out[column] = [paper.get(k, "—") for k in keys]
    return out


def paper_vs_ours(rows: list[dict], columns=("paper", "ours")) -> pd.DataFrame:
    """A table with the paper's value beside ours (rows: dicts with a ``what`` key and one key per column)."""
    frame = pd.DataFrame(rows).set_index("what")
    return frame[[c for c in frame.columns if c in columns] + [c for c in frame.columns if c not in columns]]
