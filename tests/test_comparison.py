"""The comparison chapter's library: attacks and grid specs, intervals, cost accounting, recommendations and the
pool-matching diagnostic, each on planted answers."""

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from clipguard import comparison, experiments, scenarios
from clipguard.attacks import poison_spec
from clipguard.data import ImageCaptionSet
from clipguard.runs import RunStore


def test_standard_poisons_are_the_other_chapters_specs():
    poisons = comparison.standard_poisons("smoke")
    assert list(poisons) == list(comparison.STANDARD_ATTACKS)
    assert poisons["targeted"] == scenarios.targeted_poison("smoke")
    assert poisons["patch"] == scenarios.backdoor_poison("smoke")
    # the RoCLIP chapter's Table 6 builds these the same way (at the strengths that took there)
    assert poisons["blended"] == scenarios.backdoor_poison("smoke", trigger="blended")
    assert poisons["wanet"] == scenarios.backdoor_poison("smoke", trigger={"name": "wanet", "s": 2})
    assert poisons["label_consistent"] == scenarios.backdoor_poison(
        "smoke", trigger={"name": "badnet_htba", "patch_fraction": 0.25}, caption_source="keep", rate=0.05)
    assert poisons["label_consistent"]["count"] == round(0.05 * 1024)
    for name, poison in poisons.items():
        poison_spec({k: v for k, v in poison.items()})  # every spec parses


def test_adaptive_poisons_carry_their_options():
    poisons = comparison.adaptive_poisons("smoke")
    assert "badclip" not in poisons and set(poisons) <= set(comparison.ADAPTIVE_ATTACKS)
    assert poisons["safeclip_aware"]["caption_style"] == "true_and_target"
    assert poisons["roclip_pool_aware"]["distinct_captions"] == 1
    assert poisons["dense_cluster"]["duplicates_per_poison"] == 17
    assert poisons["roclip_similar"]["similar_pairs"] == comparison.SIMILAR_PAIRS
    assert set(comparison.ADAPTIVE_TARGETS) == set(comparison.ADAPTIVE_ATTACKS)
    with_badclip = comparison.adaptive_poisons("smoke", badclip={"kind": "backdoor"})
    assert list(with_badclip) == list(comparison.ADAPTIVE_ATTACKS)


def test_plan_grid_gives_all_seeds_to_the_multi_seed_attacks_only():
    plan = comparison.plan_grid(["targeted", "sig"], ["clip", "roclip"], [3, 4, 5],
                                defences_for={"sig": ["clip"]})
    assert plan == {"targeted": {"clip": [3, 4, 5], "roclip": [3, 4, 5]}, "sig": {"clip": [3]}}
    with pytest.raises(ValueError, match="not in the grid"):
        comparison.plan_grid(["targeted"], ["clip"], [0], defences_for={"wanet": ["clip"]})
    with pytest.raises(ValueError, match="at least one seed"):
        comparison.plan_grid(["targeted"], ["clip"], [])


def test_grid_specs_are_the_defended_standard_specs_and_name_missing_defences():
    poisons = comparison.standard_poisons("smoke")
    plan = {"patch": {"clip": [0, 1], "roclip": [0], "not_built": [0]}}
    specs, missing = comparison.grid_specs("smoke", poisons, plan)
    assert missing == [("not_built", "patch")]
    assert set(specs) == {("clip", "patch", 0), ("clip", "patch", 1), ("roclip", "patch", 0)}
    assert specs[("roclip", "patch", 0)] == scenarios.defended(
        scenarios.attack_spec("smoke", poisons["patch"], seed=0), "roclip")
    assert specs[("clip", "patch", 1)]["model_seed"] == 1
    with pytest.raises(ValueError, match="without a poison spec"):
        comparison.grid_specs("smoke", {}, plan)


def _wilson(k, n, z):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_asr_interval_one_seed_is_wilson_and_several_are_student_t():
    mean, low, high, what = comparison.asr_interval([13], [16])
    ref = _wilson(13, 16, stats.norm.ppf(0.975))
    assert mean == 13 / 16 and low == pytest.approx(ref[0]) and high == pytest.approx(ref[1])
    assert what.startswith("Wilson")
    rates = [13 / 16, 14 / 16, 10 / 16]
    mean, low, high, what = comparison.asr_interval([13, 14, 10], [16, 16, 16])
    half = stats.t.ppf(0.975, 2) * np.std(rates, ddof=1) / math.sqrt(3)
    assert mean == pytest.approx(np.mean(rates))
    assert low == pytest.approx(np.mean(rates) - half) and high == pytest.approx(min(1.0, np.mean(rates) + half))
    assert what == "t over 3 seeds"
    _, low, high, _ = comparison.asr_interval([0, 0, 1], [100, 100, 100])
    assert low == 0.0 and high < 0.05  # clipped to [0, 1]
    with pytest.raises(ValueError, match="0..trials"):
        comparison.asr_interval([5], [4])


def _cells():
    rows = []
    for seed, clip_s in ((0, 10.0), (1, 20.0)):
        rows.append({"defence": "clip", "attack": "patch", "seed": seed, "train_s": clip_s, "parent_s": 0.0,
                     "detect_s": 0.0})
        rows.append({"defence": "roclip", "attack": "patch", "seed": seed, "train_s": 1.5 * clip_s,
                     "parent_s": 0.0, "detect_s": 0.0})
        rows.append({"defence": "cleanclip", "attack": "patch", "seed": seed, "train_s": 0.2 * clip_s,
                     "parent_s": clip_s, "detect_s": 0.0})
        rows.append({"defence": "dao_filter", "attack": "patch", "seed": seed, "train_s": clip_s, "parent_s": clip_s,
                     "detect_s": float("nan") if seed else 0.5 * clip_s})
    return pd.DataFrame(rows)


def test_relative_cost_divides_the_defenders_time_by_plain_clip_of_the_same_cell():
    out = comparison.relative_cost(_cells())
    cost = out.set_index(["defence", "seed"])["cost"]
    assert cost[("clip", 0)] == 1.0 and cost[("roclip", 1)] == pytest.approx(1.5)
    assert cost[("cleanclip", 0)] == pytest.approx(1.2)
    assert cost[("dao_filter", 0)] == pytest.approx(2.5)
    assert cost[("dao_filter", 1)] == pytest.approx(2.0)  # detection time unknown: counted as 0
    with pytest.raises(KeyError, match="parent_s"):
        comparison.relative_cost(_cells().drop(columns="parent_s"))


def test_train_seconds_is_the_median_epoch_times_the_epochs():
    history = [{"kind": "epoch", "seconds": s} for s in (2.0, 9.0, 3.0, 2.5)] + [{"kind": "step", "seconds": 99}]
    run = SimpleNamespace(history=history, metrics={"train_seconds": 16.5})
    assert comparison.train_seconds(run) == pytest.approx(2.75 * 4)
    assert comparison.train_seconds(SimpleNamespace(history=[], metrics={"train_seconds": 7.0})) == 7.0


def test_summarise_cells_pools_seeds():
    frame = pd.DataFrame([
        {"defence": "clip", "attack": "targeted", "seed": s, "kind": "none", "asr": k / 16, "successes": k,
         "trials": 16, "zeroshot": z, "linear_probe": 0.8, "cost": 1.0}
        for s, k, z in ((0, 13, 0.80), (1, 14, 0.82), (2, 10, 0.84))]
        + [{"defence": "sufi", "attack": "targeted", "seed": 0, "kind": "fine-tuning", "asr": 0.0, "successes": 0,
            "trials": 16, "zeroshot": 0.7, "linear_probe": float("nan"), "cost": 1.3}])
    summary = comparison.summarise_cells(frame).set_index("defence")
    assert summary.loc["clip", "n"] == 3 and summary.loc["clip", "asr"] == pytest.approx(37 / 48)
    assert summary.loc["clip", "zeroshot"] == pytest.approx(0.82)
    assert summary.loc["clip", "asr_sd"] == pytest.approx(np.std([13 / 16, 14 / 16, 10 / 16], ddof=1))
    assert summary.loc["sufi", "interval"].startswith("Wilson") and summary.loc["sufi", "asr_low"] == 0.0
    assert math.isnan(summary.loc["sufi", "linear_probe"])


def _summary(rows):
    return pd.DataFrame([dict(zip(("defence", "attack", "kind", "asr", "zeroshot", "cost", "attack took"), r))
                         for r in rows])


def test_recommend_prefers_a_defence_that_holds_without_weakening_the_model():
    threats = {"targeted poisoning": ("targeted", "adaptive"), "quiet": ("weak",)}
    summary = _summary([
        ("clip", "targeted", "none", 0.85, 0.82, 1.0, True),
        ("clip", "adaptive", "none", 0.60, 0.82, 1.0, True),
        ("clip", "weak", "none", 0.05, 0.82, 1.0, False),
        # holds both but costs 17 points of zero-shot: protects by weakening
        ("roclip", "targeted", "pre-training", 0.04, 0.65, 1.5, True),
        ("roclip", "adaptive", "pre-training", 0.02, 0.66, 1.5, True),
        # holds one, fails the adaptive one, keeps utility
        ("safeclip", "targeted", "pre-training", 0.06, 0.80, 2.0, True),
        ("safeclip", "adaptive", "pre-training", 0.50, 0.80, 2.0, True),
        ("cleanclip", "targeted", "fine-tuning", 0.70, 0.81, 1.2, True),
        ("dao_filter", "targeted", "detect and retrain", 0.05, 0.78, 1.4, True),
    ])
    table = comparison.recommend(summary, threats).set_index(["threat model", "budget"])
    budgets = [b.name for b in comparison.BUDGETS]
    anycost = table.loc[("targeted poisoning", budgets[2])]
    assert anycost["defence"] == "safeclip"
    assert "adaptive (50.0%)" in anycost["fails on"] and "roclip" in anycost["why"]
    assert "holds 1 of 2" in anycost["why"]
    cheap = table.loc[("targeted poisoning", budgets[1])]
    assert cheap["defence"] == "dao_filter"  # holds, within 1.5×, keeps utility; roclip weakens the model
    assert cheap["not measured"] == "adaptive" and "roclip" in cheap["why"]
    finetune = table.loc[("targeted poisoning", budgets[0])]
    assert finetune["defence"] == "—" and "cleanclip: targeted 70.0%" in finetune["why"]
    assert table.loc[("quiet", budgets[2]), "defence"] == "—"  # the attack never took: nothing to judge
    with pytest.raises(KeyError, match="attack took"):
        comparison.recommend(summary.drop(columns="attack took"), threats)


class _PlantedModel(torch.nn.Module):
    """Images embed as the one-hot of a class read from their pixels (shifted by ``shift``); captions as the
    one-hot of the class word they name."""

    def __init__(self, classnames, shift=0):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.classnames, self.shift = classnames, shift

    def encode_image(self, images, normalize=True):
        label = (images[:, 0, 0, 0] * 255 / 50).round().long()
        return torch.nn.functional.one_hot((label + self.shift) % len(self.classnames), len(self.classnames)).float()

    def encode_text(self, captions, normalize=True):
        label = torch.tensor([next(i for i, c in enumerate(self.classnames) if c in t.split()) for t in captions])
        return torch.nn.functional.one_hot(label, len(self.classnames)).float()


def _two_classes(n_per_class=50):
    labels = torch.arange(2).repeat_interleave(n_per_class)
    images = (labels * 50).to(torch.uint8)[:, None, None, None].expand(-1, 3, 4, 4).contiguous()
    classnames = ["cat", "dog"]
    return ImageCaptionSet(images, [f"a photo of a {classnames[i]}" for i in labels.tolist()], labels, classnames,
                           ["a photo of a {}."], name="planted")


def test_pool_matching_on_a_planted_model():
    data = _two_classes()
    right = comparison.pool_matching(_PlantedModel(data.classnames), data, 10, 40, 2, torch.Generator().manual_seed(0))
    assert right["same_category"] == 1.0
    # equal embeddings within a class: every image of a class matches the same caption (ties: the first)
    assert right["distinct_share"] == pytest.approx(2 / 40)
    assert 0.5 <= right["largest_share"] < 1 and 0 < right["pool_share_same"] < 1
    wrong = comparison.pool_matching(_PlantedModel(data.classnames, shift=1), data, 10, 40, 2,
                                     torch.Generator().manual_seed(0))
    assert wrong["same_category"] == 0.0
    with pytest.raises(ValueError, match="need 130"):
        comparison.pool_matching(_PlantedModel(data.classnames), data, 10, 40, 3, torch.Generator().manual_seed(0))


def _tiny_spec(evaluate):
    return experiments.clip_spec("smoke", seed=0, data__n=96, test__n=64, probe_train__n=64, train__epochs=1,
                                 train__batch_size=32, evaluate=evaluate)


@pytest.mark.slow
def test_stored_evaluation_equals_the_evaluator_run_in_training(tmp_path):
    store = RunStore("smoke", root=tmp_path)
    bare = experiments.run(_tiny_spec(["zeroshot"]), store, progress=False)
    full = experiments.run(_tiny_spec(["zeroshot", "linear_probe"]), store, progress=False)
    assert "linear_probe_torch" not in bare.metrics
    extra = comparison.stored_evaluation(bare, _tiny_spec(["zeroshot"]), store, ["linear_probe"])
    assert extra["linear_probe_torch"] == pytest.approx(full.metrics["linear_probe_torch"])
    again = comparison.stored_evaluation(bare, _tiny_spec(["zeroshot"]), store, ["linear_probe"])
    assert again == extra  # stored, not recomputed
    row = comparison.cell_row(bare, _tiny_spec(["zeroshot"]), store)
    assert row["linear_probe"] == pytest.approx(full.metrics["linear_probe_torch"]) and row["asr"] is None
    with pytest.raises(ValueError, match="unknown evaluator"):
        comparison.stored_evaluation(bare, _tiny_spec(["zeroshot"]), store, ["no_such"])


def test_budget_defences():
    out = comparison.budget_defences(["targeted", "sig"], ["dense_cluster", "roclip_similar"])
    assert out == {"sig": list(comparison.BUDGET_DEFENCES["sig"]), "dense_cluster": ["clip", "dao_filter"],
                   "roclip_similar": ["clip", "clip_aug", "roclip"]}  # augmentation alone beside a pre-training one
    assert comparison.budget_defences(["sig"], ["dense_cluster"], "full") == {}
    plan = comparison.plan_grid(["targeted", "sig", "dense_cluster", "roclip_similar"],
                                ["clip", "roclip", "dao_filter"], [0, 1], defences_for=out)
    assert plan["targeted"] == {"clip": [0, 1], "roclip": [0, 1], "dao_filter": [0, 1]}
    assert plan["dense_cluster"] == {"clip": [0], "dao_filter": [0]}
    with pytest.raises(ValueError, match="'budget' or 'full'"):
        comparison.budget_defences([], [], "some")


def test_matching_log_keeps_the_matching_epochs():
    history = [{"kind": "epoch", "epoch": e, "roclip_epoch": float(e % 3 == 0), "clean_matched_same_category": e / 10}
               for e in range(1, 8)] + [{"kind": "step", "epoch": 3, "roclip_epoch": 1}]
    log = comparison.matching_log(SimpleNamespace(history=history))
    assert log.epoch.tolist() == [3, 6] and log.clean_matched_same_category.tolist() == [0.3, 0.6]
    empty = comparison.matching_log(SimpleNamespace(history=[{"kind": "epoch", "epoch": 1}]))
    assert empty.empty and "clean_matched_same_category" in empty


def _grid_summary():
    rows = [("clip", "targeted", 0.85, 0.6, 1.0, 3, 0.82, 1.0, True), ("roclip", "targeted", 0.04, 0.0, 0.1, 3, 0.65, 1.5, True),
            ("clip", "sig", 0.05, 0.02, 0.1, 1, 0.82, 1.0, False), ("sufi", "sig", 0.0, 0.0, 0.02, 1, 0.80, 1.1, False)]
    names = ("defence", "attack", "asr", "asr_low", "asr_high", "n", "zeroshot", "cost", "attack took")
    return pd.DataFrame([dict(zip(names, r)) for r in rows])


def test_grid_table_and_cell_text():
    from clipguard.book import comparison_plots

    assert comparison_plots.cell_text(0.85, 0.6, 1.0, 3) == "85% [60–100] ×3"
    assert comparison_plots.cell_text(float("nan"), 0, 0) == "—"
    table = comparison_plots.grid_table(_grid_summary(), ["clip", "roclip", "safeclip"], ["targeted", "sig"],
                                        not_built=[("safeclip", "targeted")], untaken=["sig"])
    assert list(table.columns) == ["targeted", "sig †"]
    assert table.loc["roclip", "targeted"] == "4% [0–10] ×3"
    assert table.loc["roclip", "sig †"] == "not run" and table.loc["safeclip", "targeted"] == "not yet built"


def test_protection_frame_uses_only_attacks_that_took():
    from clipguard.book import comparison_plots

    frame = comparison_plots.protection_frame(_grid_summary()).set_index("defence")
    assert set(frame.index) == {"clip", "roclip"}  # sufi was measured only on an attack that did not take
    assert frame.loc["roclip", "asr"] == pytest.approx(0.04) and frame.loc["roclip", "held"] == 1.0
    assert frame.loc["roclip", "drop"] == pytest.approx(0.17) and frame.loc["roclip", "cost"] == 1.5


def test_comparison_figures_draw():
    import matplotlib

    matplotlib.use("Agg")
    from clipguard.book import comparison_plots

    summary = _grid_summary()
    ax = comparison_plots.asr_heatmap(summary, ["clip", "roclip", "safeclip"], ["targeted", "sig"],
                                      not_built=[("safeclip", "targeted")], untaken=["sig"],
                                      collapsed=[("roclip", "targeted")])
    texts = [t.get_text() for t in ax.texts]
    assert "85%\n×3" in texts and "not yet\nbuilt" in texts and "not run" in texts
    ax = comparison_plots.cost_vs_protection(comparison_plots.protection_frame(summary))
    assert len(ax.collections[0].get_offsets()) == 2
    runs = pd.DataFrame({"defence": ["clip", "roclip"], "attack group": ["standard"] * 2, "zeroshot": [0.8, 0.6],
                         "linear_probe": [0.8, float("nan")], "asr": [0.9, 0.0]})
    fig = comparison_plots.utility_vs_asr(runs, reference={"zeroshot": 0.81})
    assert len(fig.axes) == 2
    matplotlib.pyplot.close("all")


@pytest.mark.slow
def test_stored_evaluation_of_a_fine_tuned_run_reads_its_parents_attack(tmp_path):
    store = RunStore("smoke", root=tmp_path)
    parent = {**_tiny_spec(["zeroshot"]), "poison": scenarios.backdoor_poison("smoke", count=8)}
    child = lambda evaluate, **o: experiments.finetune_spec(parent, n=32, train={"epochs": 1}, evaluate=evaluate,  # noqa
                                                             **o)
    bare = experiments.run(child(["zeroshot"], probe_train=None), store, progress=False)  # as CleanCLIP's specs
    full = experiments.run(child(["zeroshot", "backdoor_asr", "linear_probe"]), store, progress=False)
    extra = comparison.stored_evaluation(bare, child(["zeroshot"], probe_train=None), store,
                                         ["backdoor_asr", "linear_probe"])
    for key in ("backdoor_asr", "backdoor_successes", "linear_probe_torch"):
        assert extra[key] == pytest.approx(full.metrics[key])


def test_points_in_words():
    from clipguard.book import comparison_plots

    assert comparison_plots.points(0.171) == "17.1 points below"
    assert comparison_plots.points(-0.02) == "2.0 points above"


def test_holds_text():
    from clipguard.book import comparison_plots

    assert comparison_plots.holds_text(0.05, True) == "; it still defends (threshold 10%)."
    assert comparison_plots.holds_text(0.5, True).startswith("; it no longer defends")
    assert comparison_plots.holds_text(0.0, False) == "."
