import pytest
import torch
from safetensors.torch import load_file

from clipguard import experiments, parallel, scenarios
from clipguard.book import tables
from clipguard.defenses import cleanclip
from clipguard.runs import RunStore


def _tiny(spec):
    spec["data"]["n"], spec["test"]["n"], spec["probe_train"] = 192, 100, None
    spec["train"].update(batch_size=64, epochs=1)
    spec["evaluate"] = ["zeroshot", "backdoor_asr"]
    spec["track_per_sample"] = False
    return spec


def _grid():
    """Two poisoned parents and a fine-tune of each: the fine-tunes' parents must train first."""
    parents = [_tiny(scenarios.attack_spec("smoke", scenarios.backdoor_poison("smoke"), seed=s)) for s in (0, 1)]
    children = [cleanclip.main_table_spec(p, "MMCL only", n=64, epochs=1, batch_size=32) for p in parents]
    return {("child", 0): children[0], ("parent", 1): parents[1], ("child", 1): children[1]}


def test_grid_workers_follow_the_environment_then_the_cores(monkeypatch):
    monkeypatch.delenv(parallel.WORKERS_VARIABLE, raising=False)
    monkeypatch.setattr(parallel.os, "cpu_count", lambda: 4)
    assert parallel.grid_workers(1) == 4 and parallel.grid_workers(2) == 2 and parallel.grid_workers(8) == 1
    assert parallel.grid_workers(None) == 1  # a run on every core (or the GPU profile): one at a time
    monkeypatch.setenv(parallel.WORKERS_VARIABLE, "3")
    assert parallel.grid_workers(1) == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(parallel.WORKERS_VARIABLE, bad)
        with pytest.raises(ValueError, match=parallel.WORKERS_VARIABLE):
            parallel.grid_workers(1)


@pytest.mark.slow
def test_a_grid_trained_in_two_processes_gives_the_runs_of_one(tmp_path):
    """Known answer: the same grid trained in this process (one worker) and in two spawned workers (parents
    first) gives the same run ids and bit-identical weights and metrics (but the measured seconds); a second call
    trains nothing."""
    grid = _grid()
    one = RunStore("smoke", root=tmp_path / "one")
    two = RunStore("smoke", root=tmp_path / "two")
    sequential = tables.run_grid(grid, one, workers=1)
    assert all(experiments.stored(spec, two) is None for spec in grid.values())
    assert parallel.train_missing(list(grid.values()), two, workers=2) == 4  # parent 0, then three runs
    assert all(experiments.stored(spec, two) is not None for spec in grid.values())
    spawned = tables.run_grid(grid, two, workers=2)
    assert parallel.train_missing(list(grid.values()), two, workers=2) == 0
    for key, run in sequential.items():
        other = spawned[key]
        assert run.id == other.id, key
        timing = ("train_seconds", "pairs_per_second")  # measured, not computed
        assert {k: v for k, v in run.metrics.items() if k not in timing} == \
            {k: v for k, v in other.metrics.items() if k not in timing}, key
        a, b = load_file(run.path / "model.safetensors"), load_file(other.path / "model.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), key


def test_stored_trains_nothing_and_knows_a_missing_parent(tmp_path):
    store = RunStore("smoke", root=tmp_path)
    grid = _grid()
    assert experiments.stored(grid[("child", 0)], store) is None  # its parent is not stored either
    assert not (tmp_path / "smoke").exists() or not any((tmp_path / "smoke").glob("*/provenance.json"))


@pytest.mark.slow
def test_a_run_the_workers_cannot_train_is_left_to_the_calling_process(tmp_path, monkeypatch):
    """A dataset registered only in this process is unknown to a spawned worker: the grid warns and trains those
    runs here instead."""
    from clipguard import data

    monkeypatch.setitem(experiments.DATASETS, "shapes-here",
                        lambda split, n, seed, image_size: data.shapes(n=n, seed=seed, image_size=image_size))
    monkeypatch.setitem(experiments._MODULES, ("dataset", "shapes-here"), ("clipguard.experiments", ()))
    specs = {}
    for s in (0, 1):
        specs[s] = _tiny(scenarios.attack_spec("smoke", None, seed=s))
        specs[s]["data"] = {"name": "shapes-here", "split": "train", "n": 192, "seed": s, "image_size": 32}
        specs[s]["evaluate"] = ["zeroshot"]
    store = RunStore("smoke", root=tmp_path)
    with pytest.warns(RuntimeWarning, match="left to this process"):
        runs = tables.run_grid(specs, store, workers=2)
    assert all(run.config["data"]["name"] == "shapes-here" for run in runs.values())


@pytest.mark.slow
def test_workers_import_the_module_that_registered_an_objective(tmp_path):
    """``roclip_distinct`` is registered by ``clipguard.utility_probes``, which ``load_plugins`` does not import:
    the workers import the modules a spec's plugins came from, so they train such runs themselves (no warning)."""
    import warnings

    from clipguard import utility_probes

    specs = {s: utility_probes.distinct_spec(scenarios.defended(
        _tiny(scenarios.attack_spec("smoke", scenarios.backdoor_poison("smoke"), seed=s)), "roclip"))
        for s in (0, 1)}
    store = RunStore("smoke", root=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert parallel.train_missing(list(specs.values()), store, workers=2) == 2
    assert all(experiments.stored(spec, store).config["objective"]["name"] == "roclip_distinct"
               for spec in specs.values())
