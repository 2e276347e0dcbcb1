"""The book's standard attack scenarios (clipguard.scenarios)."""

import json

import torch

from clipguard import experiments, profiles, scenarios


def test_standard_scenarios_scale_with_the_profile_and_track_pairs():
    for profile in ("smoke", "cpu", "gpu"):
        backdoor = scenarios.backdoor_poison(profile)
        n_train = experiments.clip_spec(profile)["data"]["n"]
        assert backdoor["count"] == max(1, round(scenarios.BACKDOOR_RATE * n_train))
        assert backdoor["trigger"] == {"name": "badnet_htba"} and backdoor["target_class"] == "bag"
        targeted = scenarios.targeted_poison(profile)
        assert targeted["per_target"] == scenarios.TARGETED_PER_TARGET[profile] and targeted["n_targets"] == 16
    assert scenarios.backdoor_poison("cpu", rate=0.001)["count"] == 10
    assert scenarios.targeted_poison("cpu", per_target=3)["per_target"] == 3
    spec = scenarios.attack_spec("smoke", scenarios.backdoor_poison("smoke"))
    assert spec["track_per_sample"] is True and "backdoor_asr" in spec["evaluate"]
    assert scenarios.attack_spec("smoke", None, track_per_sample=False)["track_per_sample"] is False
    assert all(isinstance(v, int) and v >= 1 for v in scenarios.TARGETED_PER_TARGET.values())
    assert 0 < scenarios.BACKDOOR_RATE <= 0.05


def test_only_plain_clip_runs_track_pairs():
    attacked = scenarios.attack_spec("smoke", scenarios.backdoor_poison("smoke"))
    assert scenarios.defended(attacked, "clip") == attacked  # the undefended cell shares the tracked run
    for defence in ("clip_aug", "roclip", "safeclip"):
        assert scenarios.defended(attacked, defence)["track_per_sample"] is False, defence
    roclip = scenarios.defended(attacked, "roclip")["objective"]
    backdoor = scenarios.backdoor_poison("smoke")
    assert scenarios.attack_spec("smoke", backdoor, objective=roclip)["track_per_sample"] is False
    assert scenarios.attack_spec("smoke", backdoor, objective={"name": "clip"})["track_per_sample"] is True
    # only seed 0's records of the attacked standard model are read by the chapters; a chapter reading others asks
    assert scenarios.attack_spec("smoke", backdoor, seed=1)["track_per_sample"] is False
    assert scenarios.attack_spec("smoke", backdoor, seed=1, track_per_sample=True)["track_per_sample"] is True
    assert scenarios.attack_spec("smoke", None)["track_per_sample"] is False  # the clean baseline
    assert scenarios.attack_spec("smoke", backdoor, model="clipguard-tiny-wide")["track_per_sample"] is False
    assert scenarios.attack_spec("smoke", backdoor, model=attacked["model"])["track_per_sample"] is True


def test_only_the_attacks_whose_records_are_read_track_pairs():
    from clipguard import comparison

    for name, poison in comparison.standard_poisons("cpu").items():
        assert scenarios.attack_spec("cpu", poison)["track_per_sample"] is True, name
    # the same poison spelt with lists for tuples is the same run (the same key), so it tracks too
    multi = json.loads(json.dumps(comparison.standard_poisons("cpu")["multi_trigger"]))
    assert scenarios.attack_spec("cpu", multi)["track_per_sample"] is True
    # and so is a strength of 2 for 2.0 (the RoCLIP chapter's WaNet is the comparison's)
    wanet = scenarios.backdoor_poison("cpu", trigger={"name": "wanet", "s": int(comparison.WANET_STRENGTH)})
    assert comparison.WANET_STRENGTH == 2.0 and scenarios.attack_spec("cpu", wanet)["track_per_sample"] is True
    # sweeps and other attacks (no chapter reads their records) do not, unless asked
    for poison in (scenarios.backdoor_poison("cpu", rate=0.01), scenarios.targeted_poison("cpu", per_target=8),
                   scenarios.backdoor_poison("cpu", trigger="badnet_random")):
        assert scenarios.attack_spec("cpu", poison)["track_per_sample"] is False, poison
        assert scenarios.attack_spec("cpu", poison, track_per_sample=True)["track_per_sample"] is True
    # nor the standard attack on another data set
    shapes = profiles.resolve("cpu", dataset="shapes")
    assert scenarios.attack_spec(shapes, scenarios.targeted_poison(shapes))["track_per_sample"] is False


def test_tracking_does_not_change_training(store):
    from safetensors.torch import load_file

    base = dict(data__n=256, train__epochs=2, evaluate=[])
    plain = experiments.run(experiments.clip_spec("smoke", **base), store, progress=False)
    tracked = experiments.run(experiments.clip_spec("smoke", track_per_sample=True, **base), store, progress=False)
    assert plain.id != tracked.id
    a, b = load_file(plain.path / "model.safetensors"), load_file(tracked.path / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_runs_report_their_id_and_training_seconds_to_the_runner(store, tmp_path, monkeypatch):
    import json

    from clipguard import progress

    log = tmp_path / "progress.jsonl"
    monkeypatch.setenv(progress.LOG_VARIABLE, str(log))
    spec = experiments.clip_spec("smoke", data__n=256, train__epochs=1, evaluate=[])
    trained = experiments.run(spec, store, progress=False)
    experiments.run(spec, store, progress=False)  # reused (keyed once in this process)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["status"] for r in records] == ["trained", "reused"]
    assert {r["run"] for r in records} == {trained.id}
    assert records[0]["cost"] == records[1]["cost"] == round(trained.provenance["wall_seconds"], 1) > 0


def test_run_labels_name_the_defence_the_attack_the_seed_and_the_parent():
    attacked = scenarios.attack_spec("cpu", scenarios.backdoor_poison("cpu"), seed=2)
    labels = {d: experiments.describe(scenarios.defended(attacked, d)) for d in ("clip", "clip_aug", "roclip", "cleanclip")}
    assert labels == {"clip": "clip, backdoor badnet_htba, seed 2",
                      "clip_aug": "clip + augmentation, backdoor badnet_htba, seed 2",  # not the same as plain CLIP
                      "roclip": "roclip, backdoor badnet_htba, seed 2",
                      "cleanclip": "cleanclip, clean, seed 2 <- clip, backdoor badnet_htba, seed 2"}
