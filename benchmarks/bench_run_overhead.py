"""What a run spends outside its training steps, before and after two changes that keep every result: checkpoints by
elapsed time instead of after every epoch, and fine-tunes evaluated after every epoch only when their history is read
(prints; asserts nothing but identical weights).

Both variants of each pair run in this process, interleaved, ``--repeats`` times on one thread (what a book lane
runs on); the medians and their ratio are printed. At ``cpu``: a plain-CLIP pre-training run (10,000 pairs, 8
epochs, per-epoch zero-shot, as every pre-training run) written to a run folder with a checkpoint after every epoch
(``checkpoint_seconds=0``, the old behaviour) or by time (the default, 60 s: none in a run this short), and the
CleanCLIP fine-tune of a poisoned seed-1 parent (2,000 clean pairs, 10 epochs) with zero-shot accuracy and backdoor
ASR after every epoch (the old behaviour) or on the final model only (the default for parents of another seed than 0).

    python benchmarks/bench_run_overhead.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def pretraining(repeats: int) -> tuple[list[float], list[float], bool]:
    from clipguard import experiments, models, scenarios
    from clipguard.evaluate import ZeroShotEval
    from clipguard.train import TrainConfig, train

    spec = scenarios.attack_spec("cpu", scenarios.backdoor_poison("cpu"), seed=1)
    prepared = experiments.prepare(spec)
    seconds = {0.0: [], 60.0: []}
    models_of = {}
    for _ in range(repeats):
        for every in seconds:
            config = TrainConfig(**spec["train"], progress=False, checkpoint_seconds=every)
            model = models.build_model(spec["model"], seed=spec["model_seed"])
            with tempfile.TemporaryDirectory() as work:
                started = time.perf_counter()
                train(model, prepared.train_data, experiments.make_objective(spec, prepared), config, run_dir=work,
                      callbacks=[ZeroShotEval(prepared.test)])
                seconds[every].append(time.perf_counter() - started)
            models_of[every] = model
    return seconds[0.0], seconds[60.0], _weights_equal(models_of[0.0], models_of[60.0])


def finetuning(repeats: int) -> tuple[list[float], list[float], bool]:
    from clipguard import experiments, scenarios
    from clipguard.defenses import cleanclip
    from clipguard.runs import RunStore

    store = RunStore("cpu", root=tempfile.mkdtemp(prefix="bench_run_overhead_"))
    parent_spec = scenarios.attack_spec("cpu", scenarios.backdoor_poison("cpu"), seed=1)
    parent = experiments.run(parent_spec, store, progress=False)
    specs = {each: cleanclip.main_table_spec(parent_spec, "CleanCLIP", each_epoch=each) for each in (True, False)}
    seconds = {True: [], False: []}
    models_of = {}
    for _ in range(repeats):
        for each, spec in specs.items():
            prepared = experiments.prepare(spec)
            with tempfile.TemporaryDirectory() as work:  # execute pins the spec's one thread
                started = time.perf_counter()
                models_of[each], _ = experiments.execute(spec, prepared, Path(work), parent, progress=False)
                seconds[each].append(time.perf_counter() - started)
    return seconds[True], seconds[False], _weights_equal(models_of[True], models_of[False])


def report(what: str, before_name: str, before: list[float], after_name: str, after: list[float], same: bool) -> None:
    b, a = statistics.median(before), statistics.median(after)
    print(f"{what}: {before_name} {b:.2f} s, {after_name} {a:.2f} s (medians of {len(before)}); "
          f"{b / a:.3f}x, {b - a:.2f} s a run saved; identical weights: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    before, after, same = pretraining(args.repeats)
    report("CLIP pre-training (cpu, 8 epochs)", "checkpoint every epoch", before, "checkpoint by time", after, same)
    before, after, same = finetuning(args.repeats)
    report("CleanCLIP fine-tune (cpu, 10 epochs)", "evaluated every epoch", before, "evaluated at the end", after,
           same)


if __name__ == "__main__":
    main()
