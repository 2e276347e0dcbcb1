"""The structure the defences build on: run keys that follow the code a run executes, a defence as one plug-in,
fine-tuning from a stored run."""

import shutil

import pytest
import torch

from clipguard import experiments, runs, scenarios
from clipguard.train import ClipObjective


@pytest.fixture
def package_copy(tmp_path):
    copy = tmp_path / "clipguard"
    shutil.copytree(runs.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def _edit(path, old, new):
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def _attack_keys(package_dir):
    specs = [scenarios.attack_spec("smoke", scenarios.backdoor_poison("smoke")),
             scenarios.attack_spec("smoke", scenarios.targeted_poison("smoke")),
             scenarios.attack_spec("smoke", None)]
    return [experiments.code_key(spec, package_dir) for spec in specs]


def test_docstrings_comments_and_new_defences_keep_run_keys(package_copy):
    before = _attack_keys(package_copy)
    _edit(package_copy / "losses.py", '"""Symmetric CLIP loss', '"""The symmetric CLIP loss, reworded')
    _edit(package_copy / "train.py", "import json\n", "import json  # a new comment\n")
    (package_copy / "defenses" / "another_defence.py").write_text("def objective():\n    return 1\n")
    assert _attack_keys(package_copy) == before


def test_changing_the_loss_or_the_poisoner_changes_run_keys(package_copy):
    before = _attack_keys(package_copy)
    plain = experiments.clip_spec("smoke")  # no attack, no ASR evaluators
    plain_before = experiments.code_key(plain, package_copy)
    _edit(package_copy / "losses.py", "return 0.5 * (F.cross_entropy(logits, targets) +",
          "return 0.25 * (F.cross_entropy(logits, targets) +")
    after_loss = _attack_keys(package_copy)
    assert all(a != b for a, b in zip(before, after_loss))
    trigger_file = next(p for p in (package_copy / "attacks").glob("*.py") if "def badnet_htba" in p.read_text())
    trigger_file.write_text(trigger_file.read_text() + "\nHTBA_GRID = 5\n")
    after_poisoner = _attack_keys(package_copy)
    assert after_poisoner[0] != after_loss[0] and after_poisoner[1] != after_loss[1]
    assert after_poisoner[2] != after_loss[2]  # the clean baseline still runs the ASR evaluators
    assert experiments.code_key(plain, package_copy) != plain_before  # the loss changed ...
    plain_after_loss = experiments.code_key(plain, package_copy)
    trigger_file.write_text(trigger_file.read_text() + "\nHTBA_GRID = 6\n")
    assert experiments.code_key(plain, package_copy) == plain_after_loss  # ... but it runs no attack code


def test_detector_code_is_not_part_of_training_keys(package_copy):
    before = _attack_keys(package_copy)
    (package_copy / "detect" / "knn.py").write_text((package_copy / "detect" / "knn.py").read_text() + "\nX = 2\n")
    assert _attack_keys(package_copy) == before


def test_run_key_includes_the_device_type():
    spec = scenarios.attack_spec("smoke", None)
    assert experiments._backend(spec) == {"device": "cuda" if torch.cuda.is_available() else "cpu"}
    store = runs.RunStore("smoke", root="/nonexistent")
    assert store.run_id(spec, environment={"device": "cpu"}) != store.run_id(spec, environment={"device": "cuda"})


# ---- a defence is one plug-in: ten lines, no edit to any other defence or central table ----------------------

class HalfLossObjective(ClipObjective):
    name = "half_loss"

    def loss(self, ctx, pass_name, model, indices):
        loss, extra = super().loss(ctx, pass_name, model, indices)
        return 0.5 * loss, extra


experiments.register_objective("half_loss")(lambda spec, data, info: HalfLossObjective())
scenarios.register_defence("half_loss")(lambda attacked: {**attacked, "objective": {"name": "half_loss"}})


def _tiny(spec):
    spec["data"]["n"], spec["test"]["n"], spec["probe_train"] = 256, 200, None
    spec["train"]["batch_size"] = 64
    spec["evaluate"] = ["zeroshot"]
    return spec


def test_a_ten_line_defence_plugs_in(store):
    attacked = _tiny(scenarios.attack_spec("smoke", None, track_per_sample=False))
    spec = scenarios.defended(attacked, "half_loss")
    assert spec["objective"] == {"name": "half_loss"}
    assert "test_architecture" in experiments.spec_modules(spec)
    run = experiments.run(spec, store, progress=False)
    assert run.epochs()[0]["loss"] < experiments.run(attacked, store, progress=False).epochs()[0]["loss"]
    with pytest.raises(ValueError, match="unknown defence"):
        scenarios.defended(attacked, "no_such_defence")


# ---- fine-tuning from a stored run -------------------------------------------------------------------------------

def test_disjoint_sets_share_no_image_and_are_the_same_when_cached():
    from clipguard import data

    pretrain = {"name": "fashion-mnist", "split": "train", "n": 500, "seed": 0, "image_size": 32}
    spec = {"name": "fashion-mnist", "split": "train", "n": 300, "seed": 7, "image_size": 32, "disjoint_from": pretrain}
    experiments._disjoint_candidates.cache_clear()
    first = experiments.load_dataset(spec)
    again = experiments.load_dataset(spec)  # from the cache
    larger = experiments.load_dataset({**spec, "n": 400})  # same split and seed, another size: same cache entry
    assert experiments._disjoint_candidates.cache_info().hits == 2
    assert len(first) == 300 and len(larger) == 400 and first.fingerprint() == again.fingerprint()
    taken = set(data.image_keys(experiments.load_dataset(pretrain)))
    assert not taken & set(data.image_keys(first)) and not taken & set(data.image_keys(larger))


def test_finetune_starts_from_the_parents_weights_on_disjoint_data(store, monkeypatch):
    parent = _tiny(scenarios.attack_spec("smoke", None, track_per_sample=False))
    child = experiments.finetune_spec(parent, n=128, train={"lr": 1e-4, "epochs": 1})
    assert child["init"] == parent and child["poison"] is None
    assert child["data"]["disjoint_from"] == parent["data"]
    parent_run = experiments.run(parent, store, progress=False)

    started_from = {}
    real_train = experiments.train

    def spy(model, *args, **kwargs):
        started_from.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real_train(model, *args, **kwargs)

    monkeypatch.setattr(experiments, "train", spy)
    child_run = experiments.run(child, store, progress=False)
    parent_state = parent_run.load_model().state_dict()
    assert all(torch.equal(started_from[k], parent_state[k]) for k in parent_state)
    assert child_run.config["init"] == {"run": parent_run.id}  # traced to the parent by its id
    assert child_run.id != parent_run.id

    fine = experiments.load_dataset(child["data"])
    pre = experiments.load_dataset(parent["data"])
    from clipguard.data import image_keys

    assert not set(image_keys(fine)) & set(image_keys(pre)) and len(fine) == 128


def test_finetuned_run_is_evaluated_against_the_parents_attack(store):
    parent = _tiny(scenarios.attack_spec("smoke", scenarios.backdoor_poison("smoke"), track_per_sample=False))
    parent["evaluate"] = ["zeroshot", "backdoor_asr"]
    child = experiments.finetune_spec(parent, n=128, train={"epochs": 1})
    assert experiments.attack_of(child) == parent["poison"]
    run = experiments.run(child, store, progress=False)
    assert "backdoor_asr" in run.metrics and run.metrics["n_train"] == 128
    with pytest.raises(ValueError, match="unknown spec key"):
        experiments.finetune_spec(parent, no_such_key=1)


def test_every_profile_leaves_held_out_test_images():
    from clipguard import profiles

    for profile in profiles.PROFILES.values():
        if profile.dataset == "fashion-mnist":
            assert profile.n_test < 10000 and profile.n_train < 60000, profile.name
    with pytest.raises(ValueError, match="held-out"):
        profiles.Profile("x", "fashion-mnist", 100, 10000, 10, 1, 8, 1e-3, 1, "clipguard-tiny", 32, 1)
