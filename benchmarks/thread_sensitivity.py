"""How much a result moves when the same run trains on another number of CPU threads (prints; asserts nothing).

A run's key is its spec, data and code, not the thread count: the book's lanes train on one thread each, a notebook
run alone (``--only``, one notebook at a time) on every core. The float sums then add up in another order, the
weights differ in the last digits, and a result that sits on a knife edge can move far. This script trains one spec
and its CleanCLIP fine-tune at each thread count in a fresh process and a temporary run store, and prints the
poisoned model's and the fine-tune's backdoor ASR and zero-shot accuracy. Default: the CleanCLIP ablation page's
800-poison cell (the book's HTBA patch at four times the standard count, seed 0), where it matters most.

The runs train on the process's threads (``train.threads`` unset); ``--pinned`` keeps the profile's
``cpu_threads`` (one), as the book does since 2026-12-02: then every process gives the same numbers.

    python benchmarks/thread_sensitivity.py [--threads 1 2] [--count-factor 4] [--seed 0] [--pinned]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile


def one(threads: int, count_factor: int, seed: int, pinned: bool) -> dict:
    import torch

    torch.set_num_threads(threads)
    from clipguard import experiments, profiles, scenarios
    from clipguard.defenses import cleanclip
    from clipguard.runs import RunStore

    experiments.load_plugins()
    config = profiles.resolve("cpu")
    patch = cleanclip.main_table_attacks(config)["BadNet (HTBA patch)"]
    parent = scenarios.attack_spec(config, {**patch, "count": patch["count"] * count_factor}, seed=seed)
    if not pinned:
        parent["train"]["threads"] = None  # the fine-tune inherits it
    store = RunStore("cpu", root=tempfile.mkdtemp(prefix="thread_sensitivity_"))
    poisoned = experiments.run(parent, store, progress=False)
    tuned = experiments.run(cleanclip.main_table_spec(parent, "CleanCLIP"), store, progress=False)
    return {"threads": torch.get_num_threads(), "trained on": parent["train"]["threads"] or torch.get_num_threads(),
            "poisons": parent["poison"]["count"],
            "poisoned ASR": poisoned.metrics["backdoor_asr"], "poisoned zero-shot": poisoned.metrics["zeroshot_top1"],
            "CleanCLIP ASR": tuned.metrics["backdoor_asr"], "CleanCLIP zero-shot": tuned.metrics["zeroshot_top1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--count-factor", type=int, default=4, help="poisons as a multiple of the standard count")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pinned", action="store_true", help="keep the profile's thread count for the runs")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(one(args.worker, args.count_factor, args.seed, args.pinned)))
        return
    for threads in args.threads:  # a fresh process each: the thread count is fixed before torch starts
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        out = subprocess.run([sys.executable, __file__, "--worker", str(threads), "--count-factor",
                              str(args.count_factor), "--seed", str(args.seed)] + (["--pinned"] if args.pinned else []),
                             env=env, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"process threads {r['threads']}, trained on {r['trained on']}: {r['poisons']} poisons, poisoned ASR {r['poisoned ASR']:.1%} (zero-shot "
              f"{r['poisoned zero-shot']:.1%}); after CleanCLIP ASR {r['CleanCLIP ASR']:.1%} (zero-shot "
              f"{r['CleanCLIP zero-shot']:.1%})", flush=True)


if __name__ == "__main__":
    main()
