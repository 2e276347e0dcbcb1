"""A grid of runs trained one by one against the same grid trained one run per core (``clipguard.parallel``), as a
page run alone trains it; side by side in one run, with the stored results compared.

    .venv/bin/python benchmarks/bench_grid.py [--runs 6] [--repeats 1]

The grid: ``--runs`` CleanCLIP fine-tunes (seeds 0, 1, ... of the fine-tuning data, ``cpu`` profile settings) of
one poisoned ``cpu`` parent (the book's standard backdoor at seed 0), trained first and shared, as in the chapter.
Each timing starts from an empty store holding only the parent; wall seconds of ``book.run_grid``, including
spawning the worker processes. Prints the ratio and whether every run (id, weights, metrics) is the same.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from clipguard import experiments, parallel, scenarios
from clipguard.book import tables
from clipguard.defenses import cleanclip
from clipguard.runs import RunStore


def grid(runs: int) -> tuple[dict, dict]:
    parent = scenarios.attack_spec("cpu", scenarios.backdoor_poison("cpu"), seed=0, track_per_sample=False)
    specs = {s: cleanclip.main_table_spec(parent, "CleanCLIP") for s in range(runs)}
    for s, spec in specs.items():
        spec["data"] = {**spec["data"], "seed": spec["data"]["seed"] + 100 * s}  # distinct clean sets
    return parent, specs


def timed(specs: dict, parent_store: Path, folder: Path, workers: int) -> tuple[float, dict]:
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(parent_store, folder)
    store = RunStore("cpu", root=folder)
    started = time.perf_counter()
    runs = tables.run_grid(specs, store, desc=f"{workers} worker(s)", workers=workers)
    return time.perf_counter() - started, runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_grid_"))
    parent, specs = grid(args.runs)
    start = root / "parent"
    experiments.run(parent, RunStore("cpu", root=start), progress=False)
    workers = parallel.grid_workers(parent["train"]["threads"])
    best: dict[int, tuple[float, dict]] = {}
    for _ in range(args.repeats):
        for n in (1, workers):
            seconds, runs = timed(specs, start, root / f"w{n}", n)
            if n not in best or seconds < best[n][0]:
                best[n] = (seconds, runs)
    (one, one_runs), (many, many_runs) = best[1], best[workers]
    timing = ("train_seconds", "pairs_per_second")
    same = all(one_runs[k].id == many_runs[k].id
               and all(value == many_runs[k].metrics[m] for m, value in one_runs[k].metrics.items() if m not in timing)
               and all(torch.equal(a, b) for a, b in zip(load_file(one_runs[k].path / "model.safetensors").values(),
                                                         load_file(many_runs[k].path / "model.safetensors").values()))
               for k in specs)
    print(f"grid: {args.runs} CleanCLIP fine-tunes of one stored cpu parent (2,000 clean pairs, 10 epochs), "
          f"{os.cpu_count()} cores, runs pinned to {parent['train']['threads']} thread(s); best of {args.repeats}")
    print(f"  one by one (1 process)        {one:6.1f} s")
    print(f"  {workers} worker processes            {many:6.1f} s   {one / many:.2f}x one by one "
          f"(runs {'identical: ids, weights, metrics' if same else 'DIFFER'})")
    print(f"  target: a page run alone uses every core: about {workers}x on {workers} cores")
    shutil.rmtree(root)
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
