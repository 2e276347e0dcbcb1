import json

import pytest
import torch

from clipguard import runs
from clipguard.runs import RunStore, config_hash


def _trainer(calls, value=1.0):
    def train_fn(work):
        calls.append(work)
        (work / "extra.txt").write_text("kept")
        return torch.nn.Linear(2, 2), {"accuracy": value}
    return train_fn


def test_hash_is_order_independent_and_sensitive():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    with pytest.raises(ValueError, match="non-finite"):
        config_hash({"lr": float("nan")})
    with pytest.raises(TypeError, match="cannot hash"):
        config_hash({"x": object()})


def test_hash_takes_an_integral_float_for_the_integer():
    """A WaNet strength written ``2`` in one chapter and ``2.0`` in another is one stored run, not two."""
    assert config_hash({"trigger": {"s": 2}, "rates": [1.0, 0.5]}) == config_hash({"trigger": {"s": 2.0}, "rates": [1, 0.5]})
    assert config_hash({"s": 2.5}) != config_hash({"s": 2})
    assert config_hash({"flag": True}) != config_hash({"flag": 1.0})


def test_get_or_train_trains_once_and_reuses(store):
    calls = []
    first = store.get_or_train({"lr": 0.1}, _trainer(calls), data={"train": "abc"})
    second = store.get_or_train({"lr": 0.1}, _trainer(calls), data={"train": "abc"})
    assert len(calls) == 1 and first.id == second.id
    assert second.metrics == {"accuracy": 1.0}
    assert (second.path / "extra.txt").read_text() == "kept"
    assert second.provenance["versions"]["torch"] == torch.__version__.split("+")[0] or second.provenance["versions"]["torch"]
    assert "commit" in second.provenance and "device" in second.provenance
    assert (second.path / "model.safetensors").exists()


def test_changed_config_or_data_never_reuses(store):
    calls = []
    store.get_or_train({"lr": 0.1}, _trainer(calls), data={"train": "abc"})
    store.get_or_train({"lr": 0.2}, _trainer(calls), data={"train": "abc"})
    store.get_or_train({"lr": 0.1}, _trainer(calls), data={"train": "abd"})
    assert len(calls) == 3


def test_changed_code_never_reuses(store, monkeypatch):
    calls = []
    store.get_or_train({"lr": 0.1}, _trainer(calls))
    monkeypatch.setattr(runs, "code_identity", lambda *args, **kwargs: "something-else")
    store.get_or_train({"lr": 0.1}, _trainer(calls))
    assert len(calls) == 2


def test_code_identity_follows_the_syntax_of_the_named_modules(tmp_path):
    package = tmp_path / "pkg"
    (package / "detect").mkdir(parents=True)
    for name in ("train.py", "book.py", "detect/knn.py"):
        (package / name).write_text('"""Docstring."""\nx = 1  # comment\n')
    default = runs.code_identity(package_dir=package)  # every module but presentation and consumers
    train_only = runs.code_identity(["clipguard.train"], package)
    (package / "book.py").write_text("x = 2\n")
    (package / "detect" / "knn.py").write_text("x = 2\n")
    assert runs.code_identity(package_dir=package) == default
    (package / "train.py").write_text('"""Reworded."""\n\nx = 1  # another comment\n')
    assert runs.code_identity(["clipguard.train"], package) == train_only
    (package / "train.py").write_text("x = 3\n")
    assert runs.code_identity(["clipguard.train"], package) != train_only
    assert runs.code_identity(package_dir=package) != default
    with pytest.raises(ValueError, match="no module"):
        runs.code_identity(["clipguard.missing"], package)


def test_failed_training_leaves_no_complete_run(store):
    def broken(work):
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        store.get_or_train({"lr": 0.3}, broken)
    assert store.find({"lr": 0.3}) is None
    assert store.runs() == []


def test_stored_files_are_json(store):
    run = store.get_or_compute({"what": "scores"}, lambda work: {"auroc": 0.9})
    assert json.loads((run.path / "metrics.json").read_text()) == {"auroc": 0.9}
    assert not run.has_model()


def test_stored_computations_run_on_the_profiles_thread_count(tmp_path):
    """A result without a model (detector scores, an optimised trigger) is computed on the profile's CPU threads,
    as runs train on theirs, whatever the process's count; the count is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = {}
        for profile in ("smoke", "cpu", "gpu"):
            RunStore(profile, root=tmp_path).get_or_compute(
                {"kind": "threads"}, lambda work, p=profile: seen.setdefault(p, torch.get_num_threads()) and {})
        assert seen == {"smoke": 1, "cpu": 1, "gpu": 2}  # the gpu profile pins nothing
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
