"""The detection chapters' helpers (clipguard.book.detection): the vectorised bootstrap equals the library's
reference, the regime numbers, crossings, stored timings, and the attack families are the other chapters' specs."""

from types import SimpleNamespace

import numpy as np
import pytest

from clipguard import detect, scenarios
from clipguard.book import detection


def _data(seed, n_pos=30, n_neg=400, ties=True):
    rng = np.random.default_rng(seed)
    scores = np.r_[rng.normal(1.0, 1.0, n_pos), rng.normal(0.0, 1.0, n_neg)]
    if ties:
        scores = np.round(scores, 1)          # many tied scores, across the classes too
    labels = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    order = rng.permutation(len(labels))
    return labels[order], scores[order]


@pytest.mark.parametrize("seed,ties", [(0, True), (1, False), (2, True)])
def test_auroc_interval_equals_the_library_bootstrap(seed, ties):
    labels, scores = _data(seed, ties=ties)
    reference = detect.bootstrap_interval(detect.auroc, labels, scores, n_boot=60, seed=seed + 10)
    ours = detection.auroc_interval(labels, scores, n_boot=60, seed=seed + 10, chunk=7)
    assert ours == pytest.approx(reference, abs=1e-12)


def test_weighted_auroc_with_unit_weights_is_the_auroc():
    labels, scores = _data(3)
    pos, neg = scores[labels == 1], np.sort(scores[labels == 0])
    value = detection._weighted_auroc(pos, neg, np.ones((1, len(pos))), np.ones((1, len(neg))))[0]
    assert value == pytest.approx(detect.auroc(labels, scores), abs=1e-12)


def test_auroc_frame_and_interval_text():
    labels, scores = _data(4)
    frame = detection.auroc_frame(labels, {"a": scores, "b": -scores}, n_boot=40, seed=1)
    assert list(frame.key) == ["a", "b"]
    assert frame.auroc.iloc[0] == pytest.approx(1 - frame.auroc.iloc[1])
    assert (frame.low <= frame.auroc).all() and (frame.auroc <= frame.high).all()
    assert detection.interval_text(0.9731, 0.9512, 0.9890) == "97.3 (95–99)"
    assert detection.interval_text(1.0, 1.0, 1.0) == "100.0 (100–100)"
    with pytest.raises(ValueError):
        detection.interval_text(0.5, 0.6, 0.4)
    with pytest.raises(ValueError, match="both classes"):
        detection.auroc_interval(np.zeros(5, int), np.arange(5.0))
    with pytest.raises(ValueError, match="NaN"):
        detection.auroc_interval(np.r_[0, 1], np.r_[0.0, np.nan])


def test_regime_numbers():
    # 200 poisons in 10,200 pairs: about 5 per batch of 256
    assert detection.poisons_per_reference(200, 10_200, 256) == pytest.approx(200 * 256 / 10_200)
    assert detection.poisons_per_reference(200, 10_200, None) == 200
    # 17 copies per poison: all 16 others are in a global reference, few in a batch
    assert detection.expected_copies(17, None, 10_200) == 16
    assert detection.expected_copies(17, 256, 10_200) == pytest.approx(16 * 255 / 10_199)
    assert detection.expected_copies(1, 256, 10_200) == 0
    with pytest.raises(ValueError):
        detection.poisons_per_reference(5, 10, 11)
    with pytest.raises(ValueError):
        detection.expected_copies(0, 5, 10)


def test_first_crossing():
    assert detection.first_crossing([1, 2, 4], [0.9, 0.8, 0.6], 0.7) == pytest.approx(3.0)
    assert detection.first_crossing([1, 2], [0.6, 0.9], 0.7) == 1.0
    assert detection.first_crossing([1, 2], [0.9, 0.8], 0.7) is None
    assert detection.first_crossing([1, 2, 3, 4], [0.9, 0.6, 0.9, 0.5], 0.7) == pytest.approx(1 + 0.2 / 0.3)
    with pytest.raises(ValueError, match="increase"):
        detection.first_crossing([2, 1], [0.9, 0.5], 0.7)


def test_median_seconds_and_stored_timings(store):
    calls = []
    median, times = detection.median_seconds(lambda: calls.append(1), repeats=3)
    assert len(calls) == 3 and len(times) == 3 and median == sorted(times)[1]
    with pytest.raises(ValueError):
        detection.median_seconds(lambda: None, repeats=0)

    measured = []

    def measure():
        measured.append(1)
        return {"k_distance": 0.5}

    first, load = detection.stored_timings(store, {"what": "test"}, measure)
    again, _ = detection.stored_timings(store, {"what": "test"}, measure)
    assert first == again == {"k_distance": 0.5} and len(measured) == 1
    assert {"load_1min", "cores", "torch_threads"} <= set(load["before"])


def test_attack_families_are_the_standard_specs():
    families = detection.attack_families("smoke")
    assert list(families) == list(detection.FAMILY_LABELS)
    assert families["patch"] == scenarios.backdoor_poison("smoke")
    assert families["sig"] == scenarios.backdoor_poison("smoke", trigger="sig")
    assert families["targeted"] == scenarios.targeted_poison("smoke")
    assert families["label_consistent"]["caption_source"] == "keep"
    target = families["multi_target"]
    assert [c["target_class"] for c in target["components"]] == list(detection.MULTI_TARGETS)
    assert target["count"] == 3 * families["patch"]["count"]
    from clipguard.attacks import poison_spec

    for spec in families.values():
        poison_spec(spec)   # every family is a valid poison spec


def test_multi_target_family_builds(tiny_fashion):
    from clipguard import attacks

    spec = {**detection.attack_families("smoke")["multi_target"], "count": 6}
    poisoned = attacks.build_poisoned(tiny_fashion, spec, seed=0)
    assert poisoned.n_poison == 6
    assert set(poisoned.manifest["target"]) == set(detection.MULTI_TARGETS)


def test_attack_families_match_the_comparison_chapter():
    comparison = pytest.importorskip("clipguard.comparison")
    ours = detection.attack_families("cpu")
    for name, spec in comparison.standard_poisons("cpu").items():
        assert ours[name] == spec, name


def test_family_asr():
    def run(kind, **metrics):
        return SimpleNamespace(id="r", config={"poison": {"kind": kind}}, metrics=metrics)

    assert detection.family_asr(run("backdoor", backdoor_asr=0.9)) == 0.9
    assert detection.family_asr(run("targeted", targeted_top1_asr=0.5)) == 0.5
    assert detection.family_asr(run("backdoor", backdoor0_asr=0.2, backdoor1_asr=0.6, backdoor0_total=5)) == \
        pytest.approx(0.4)
    with pytest.raises(ValueError, match="no attack success"):
        detection.family_asr(run("backdoor", zeroshot_top1=0.8))
    # a multi-target attack takes only if each of its triggers does
    multi = run("backdoor", backdoor0_asr=0.0, backdoor1_asr=0.99, backdoor2_asr=0.01)
    assert detection.component_asrs(multi) == [0.0, 0.99, 0.01]
    assert detection.family_asr(multi) == pytest.approx(1.0 / 3) and not detection.family_took(multi)
    assert detection.family_took(run("backdoor", backdoor0_asr=0.3, backdoor1_asr=0.9))
    assert detection.family_took(run("backdoor", backdoor_asr=0.3)) and not detection.family_took(run(
        "targeted", targeted_top1_asr=0.2))
    assert detection.component_asrs(run("backdoor", backdoor_asr=0.3)) == []


def test_cell_table_and_auroc_range():
    import pandas as pd

    results = pd.DataFrame({"family": ["patch", "patch", "sig", "sig"], "variant": ["b", "b", "b", "g"],
                            "detector": ["dao", "slof", "dao", "dao"], "cell": ["99.0", "98.0", "50.0", "10.0"],
                            "auroc": [0.99, 0.98, 0.50, 0.10]})
    table = detection.cell_table(results, "b", ["dao", "slof"], ["sig", "patch"], {"sig": "SIG", "patch": "P"})
    assert list(table.columns) == ["attack", "DAO", "SLOF"]
    assert table.values.tolist()[0][:2] == ["SIG", "50.0"] and pd.isna(table.values[0][2])
    assert table.values.tolist()[1] == ["P", "99.0", "98.0"]
    assert detection.auroc_range(results, "b", "dao") == {"text": "50.0%–99.0%", "above": 1, "total": 2}
    assert detection.auroc_range(results, "x", "dao")["text"] == "—"
    with pytest.raises(KeyError, match="auroc_x"):
        detection.cell_table(results, "b", ["dao"], ["sig"], {"sig": "SIG"}, value="auroc_x")


def test_neighbour_poison_share():
    rng = np.random.default_rng(0)
    clean = rng.normal(size=(300, 4))
    tight = 10 + 0.01 * rng.normal(size=(20, 4))          # 20 poisons far away, in one tight cluster
    x, y = np.r_[clean, tight], np.r_[np.zeros(300, int), np.ones(20, int)]
    # globally a poison's 5 neighbours are all poisons; with 20 poisons in a batch of 320, too
    assert detection.neighbour_poison_share(x, y, k=5) == 1.0
    assert detection.neighbour_poison_share(x, y, k=5, reference_size=320) == 1.0
    # 30 neighbours cannot all be poisons: 19 of them at most
    assert detection.neighbour_poison_share(x, y, k=30) == pytest.approx(19 / 30)
    # in batches of 40, a poison has about 20 * 39 / 319 other poisons: far fewer than k = 10
    share = detection.neighbour_poison_share(x, y, k=10, reference_size=40, seed=1)
    assert share < 0.5
    with pytest.raises(ValueError, match="no poisoned"):
        detection.neighbour_poison_share(x, np.zeros(320, int))


def test_time_detectors_times_every_step(tiny_fashion):
    from clipguard.models import build_model

    model = build_model("clipguard-tiny", seed=0)
    data = tiny_fashion.subset(np.arange(40))
    losses = np.random.default_rng(0).random((3, len(data)))
    seconds = detection.time_detectors(model, data, losses, k=4, batch=16, repeats=1, loss_epochs=2, cd_images=2,
                                       cd_options={"steps": 2})
    assert set(seconds) == {"embed", "k_distance", "lid", "slof", "dao", "lof", "isolation_forest", "dao (global)",
                            "clip_score", "abl", "abl loss pass", "cognitive_distillation"}
    assert all(v > 0 for v in seconds.values())
    with pytest.raises(ValueError, match="repeats"):
        detection.time_detectors(model, data, losses, repeats=0)
