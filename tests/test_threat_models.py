"""The threat-models chapter's helpers: the supervised analogue of a poisoned run and per-pair records."""

import numpy as np
import pytest
import torch

from clipguard import experiments
from clipguard.supervised import SupervisedConfig
from clipguard.threat_models import supervised_attack_run, supervised_config_for, tracked_pairs

FAST = SupervisedConfig(epochs=1, batch_size=64, warmup_steps=2, progress=False)


def test_supervised_config_follows_the_clip_spec():
    spec = experiments.clip_spec("cpu", seed=3)
    config = supervised_config_for(spec, epochs=2)
    assert (config.epochs, config.batch_size, config.seed) == (2, spec["train"]["batch_size"], 3)
    assert config.lr == spec["train"]["lr"] and config.progress is False


def test_supervised_analogue_of_a_backdoor_is_dirty_label_and_stored(store):
    spec = experiments.clip_spec("smoke", poison={"kind": "backdoor", "trigger": {"name": "badnet_htba"},
                                                  "target_class": "bag", "count": 20}, data__n=256)
    run = supervised_attack_run(spec, store, FAST)
    m = run.metrics
    assert m["n_poison"] == 20 and m["poison_labelled_as_target"] == 1.0
    assert m["n_labelled"] == m["n_train"] == 256 + 20  # generated captions all name their class
    assert 0 <= m["backdoor_asr"] <= 1 and m["backdoor_target"] == "bag"
    assert m["backdoor_total"] == int((experiments.prepare(spec).test.labels != 8).sum())
    assert 0 <= m["accuracy"] <= 1
    again = supervised_attack_run(spec, store, FAST)
    assert again.id == run.id and again.provenance["created"] == run.provenance["created"]  # not retrained


def test_supervised_analogue_trains_on_the_clip_specs_thread_count(store, monkeypatch):
    """Like the CLIP run it mirrors, it trains on the profile's pinned threads (the smoke profile: one; the store's
    ``get_or_compute`` pins them), whatever the process's own count, so a page run alone stores what a lane would."""
    from clipguard import threat_models

    spec = experiments.clip_spec("smoke", data__n=256)
    assert spec["train"]["threads"] == 1
    seen, real = [], threat_models.train_classifier
    monkeypatch.setattr(threat_models, "train_classifier",
                        lambda *args, **kw: seen.append(torch.get_num_threads()) or real(*args, **kw))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        supervised_attack_run(spec, store, FAST)
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_supervised_analogue_of_a_targeted_attack(store):
    spec = experiments.clip_spec("smoke", poison={"kind": "targeted", "n_targets": 3, "per_target": 2},
                               data__n=256)
    m = supervised_attack_run(spec, store, FAST).metrics
    assert m["targeted_n_targets"] == 3 and m["n_poison"] == 6 and m["poison_labelled_as_target"] == 1.0
    assert "backdoor_asr" not in m


def test_tracked_pairs_marks_poisons(store):
    spec = experiments.clip_spec("smoke", poison={"kind": "backdoor", "trigger": {"name": "badnet_htba"},
                                                  "target_class": "bag", "count": 12},
                                 data__n=256, train__epochs=2, evaluate=[], track_per_sample=True,
                                 train__batch_size=64)
    run = experiments.run(spec, store, progress=False)
    frame = tracked_pairs(run)
    assert sorted(frame["epoch"].unique()) == [1, 2]
    per_epoch = frame[frame["epoch"] == 1]
    assert len(per_epoch) == 256 + 12 and per_epoch["poison"].sum() == 12
    assert per_epoch["poison"].to_numpy()[-12:].all()  # inserted poisons follow the clean rows
    assert (per_epoch["target_id"] == -1).all()
    stored = np.load(run.artifact("per_sample.npz"))
    np.testing.assert_allclose(frame["cosine"].to_numpy(), stored["cosine"].reshape(-1))
    assert frame["cosine"].between(-1.0001, 1.0001).all()

    untracked = experiments.run(experiments.clip_spec("smoke", data__n=256, train__epochs=1, evaluate=[]), store,
                                progress=False)
    with pytest.raises(FileNotFoundError, match="track_per_sample"):
        tracked_pairs(untracked)
