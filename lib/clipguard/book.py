"""Helpers the chapters share: run a grid of specs with one progress bar, summarise over seeds, state the scale.

Presentation only: nothing here changes what a run computes, so it is outside the run store's code identity.
"""

from __future__ import annotations

import math
from typing import Hashable, Iterable

import pandas as pd
from tqdm import tqdm

from . import experiments
from .profiles import Profile, resolve
from .runs import Run, RunStore

__all__ = ["run_grid", "mean_spread", "summarise", "scale_note", "history_frame", "attack_success"]


def run_grid(specs: dict[Hashable, dict], store: RunStore, desc: str = "runs") -> dict[Hashable, Run]:
    """Get or train every spec (stored runs return at once); one bar over the grid, none per run."""
    done = {}
    bar = tqdm(specs.items(), desc=desc, total=len(specs), mininterval=5)
    for key, spec in bar:
        bar.set_postfix_str(str(key)[:60])
        done[key] = experiments.run(spec, store, progress=False)
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
