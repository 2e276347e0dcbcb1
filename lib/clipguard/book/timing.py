"""The book's one way to state how long training takes (presentation only).

Stored runs are timed wherever and whenever they were first trained, often on a shared machine: one run can be
several times slower than an identical one. So the book never quotes one run's time. :func:`epoch_timing` takes the
median epoch time of each run (robust to a slow epoch), flags runs that are markedly slower than the fastest
comparable run as timed under load, and reports the median over the other runs, with a note saying what it rests
on. Ratios between methods come from a benchmark that times them in one process, in alternation
(:func:`benchmark_ratios` reads ``benchmarks/results/*.txt``).
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

__all__ = ["SLOW_FACTOR", "EpochTiming", "epoch_timing", "BENCHMARK_DIR", "benchmark_text", "benchmark_ratios",
           "benchmark_rows"]

#: A run whose median epoch is more than this factor slower than the fastest comparable run's was timed under
#: load (other processes shared the cores); it is left out of the estimate and named in the note.
SLOW_FACTOR = 1.3

BENCHMARK_DIR = Path(__file__).resolve().parents[3] / "benchmarks" / "results"


@dataclass(frozen=True)
class EpochTiming:
    """Robust per-epoch time of a group of comparable runs (same model, batch, data size and objective)."""

    seconds: float                  # median over the kept runs of each run's median epoch seconds
    pairs_per_second: float         # median over the kept runs of each run's median epoch throughput
    runs: int                       # runs given
    epochs: int                     # epochs over all runs given
    loaded: tuple[str, ...] = field(default_factory=tuple)   # run ids left out as timed under load
    slowest_ratio: float = 1.0      # slowest run's median epoch over the fastest's

    @property
    def reliable(self) -> bool:
        """At least two comparable runs agree (within the slow factor): one run, or runs timed under different
        loads, give no trustworthy time; quote a benchmark instead."""
        return self.runs - len(self.loaded) >= 2

    @property
    def note(self) -> str:
        """What the figure rests on, for a table footnote or a sentence."""
        kept = self.runs - len(self.loaded)
        text = f"median epoch of {kept} run{'s' if kept != 1 else ''} ({self.epochs} epochs timed in all)"
        if self.loaded:
            text += (f"; {len(self.loaded)} run{'s' if len(self.loaded) != 1 else ''} timed under load (up to "
                     f"{self.slowest_ratio:.1f}× slower than the fastest) left out")
        if kept == 1:
            text += "; a single run: indicative only"
        return text


def _epoch_records(run) -> list[dict]:
    return [h for h in run.history if h.get("kind") == "epoch" and h.get("seconds")]


def epoch_timing(runs: Iterable, skip_first: bool = False, slow_factor: float = SLOW_FACTOR) -> EpochTiming:
    """Per-epoch seconds (and pairs/s) of comparable ``runs`` (stored :class:`~clipguard.runs.Run` objects with a
    training history): each run's median over its epochs (``skip_first`` drops epoch 1, which carries one-off
    start-up costs), then the median over the runs not flagged as timed under load (median epoch more than
    ``slow_factor`` times the fastest run's)."""
    runs = list(runs)
    if not runs:
        raise ValueError("epoch_timing needs at least one run")
    if slow_factor < 1:
        raise ValueError(f"slow_factor must be >= 1, got {slow_factor}")
    per_run, throughput, epochs = {}, {}, 0
    for run in runs:
        records = _epoch_records(run)[1 if skip_first else 0:]
        if not records:
            raise ValueError(f"run {run.id} has no timed epochs in its history")
        pairs = run.metrics.get("n_train")
        per_run[run.id] = statistics.median(r["seconds"] for r in records)
        if pairs:
            throughput[run.id] = statistics.median(pairs / r["seconds"] for r in records)
        epochs += len(records)
    fastest = min(per_run.values())
    loaded = tuple(i for i, s in per_run.items() if s > slow_factor * fastest)
    kept = [i for i in per_run if i not in loaded]
    return EpochTiming(seconds=statistics.median(per_run[i] for i in kept),
                       pairs_per_second=(statistics.median(throughput[i] for i in kept if i in throughput)
                                         if any(i in throughput for i in kept) else float("nan")),
                       runs=len(runs), epochs=epochs, loaded=loaded,
                       slowest_ratio=max(per_run.values()) / fastest)


def benchmark_text(name: str, directory: Path = BENCHMARK_DIR) -> str:
    """The stored output of ``benchmarks/<name>.py`` (``benchmarks/results/<name>.txt``)."""
    path = Path(directory) / f"{name}.txt"
    if not path.exists():
        raise FileNotFoundError(f"no stored benchmark output {path}; run benchmarks/{name}.py and save its output")
    return path.read_text()


def benchmark_ratios(name: str = "bench_roclip", directory: Path = BENCHMARK_DIR) -> dict[str, float | str]:
    """The ratios a stored benchmark printed: for each line ``<label> ... <ratio>x <reference>`` the first ratio
    keyed by its label, e.g. ``{"CLIP + augmentation": 1.41, ...}`` (a file holding several runs: the first
    one's); plus ``"measured"``: the header comment (when,
    where, how loaded). ``bench_roclip`` also yields ``"RoCLIP averaged over K=3 epochs, <EDA mode>"`` and ``"... over CLIP
    with the same augmentation"``."""
    text = benchmark_text(name, directory)
    out: dict[str, float | str] = {}
    header = [line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#")]
    out["measured"] = " ".join(header)
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        averaged = re.match(r"\s*(RoCLIP averaged over K=\d+ epochs(?:, [^:]+)?):\s*([\d.]+)x CLIP\b[^,]*,\s*"
                            r"([\d.]+)x CLIP with the same augmentation", line)
        if averaged:
            out.setdefault(averaged.group(1), float(averaged.group(2)))
            out.setdefault(averaged.group(1) + " over CLIP with the same augmentation", float(averaged.group(3)))
            continue
        row = re.match(r"\s*(\S.*?)\s{2,}.*?([\d.]+)x\s+\S", line)
        if row:
            out.setdefault(row.group(1).strip(), float(row.group(2)))
    if len(out) == 1:
        raise ValueError(f"benchmarks/results/{name}.txt holds no ratio lines")
    return out


def benchmark_rows(name: str, directory: Path = BENCHMARK_DIR) -> dict[str, dict[str, float]]:
    """The timed rows of a stored benchmark: ``{label: {"seconds": s/epoch, "pairs_per_second": ..., "ratio": ...}}``
    for every line ``<label>  <s> s/epoch  <n> pairs/s  <r>x <reference>``."""
    rows = {}
    for line in benchmark_text(name, directory).splitlines():
        row = re.match(r"\s*(\S.*?)\s{2,}([\d.]+) s/epoch\s+([\d.]+) pairs/s\s+([\d.]+)x", line)
        if row:
            rows[row.group(1)] = {"seconds": float(row.group(2)), "pairs_per_second": float(row.group(3)),
                                  "ratio": float(row.group(4))}
    if not rows:
        raise ValueError(f"benchmarks/results/{name}.txt holds no timed rows")
    return rows
