import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from clipguard import data, experiments, models, scenarios
from clipguard.defenses import cleanclip
from clipguard.defenses.cleanclip import (CleanCLIPConfig, CleanCLIPObjective, SuFiObjective, cleanclip_loss,
                                          embedding_shift)
from clipguard.losses import clip_loss
from clipguard.train import TrainConfig, train


def _unit(n, d, generator):
    return F.normalize(torch.randn(n, d, generator=generator), dim=1)


def _naive_ce(queries, keys, scale):
    """-mean_i log softmax_j(s <q_i, k_j>)[i], written out with explicit sums."""
    total = 0.0
    for i in range(len(queries)):
        logits = [float(scale * queries[i] @ keys[j]) for j in range(len(keys))]
        top = max(logits)
        log_normaliser = top + math.log(sum(math.exp(v - top) for v in logits))
        total += log_normaliser - logits[i]
    return total / len(queries)


# ---- the loss -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.0, 0.0), (0.0, 1.0), (0.7, 3.0)])
def test_loss_equals_a_naive_per_term_computation(weights):
    g = torch.Generator().manual_seed(0)
    image, text, image_view, text_view = (_unit(12, 8, g) for _ in range(4))
    scale = torch.tensor(14.0)
    mmcl = 0.5 * (_naive_ce(image, text, 14.0) + _naive_ce(text, image, 14.0))
    ss_image, ss_text = _naive_ce(image, image_view, 14.0), _naive_ce(text, text_view, 14.0)
    expected = weights[0] * mmcl + weights[1] * 0.5 * (ss_image + ss_text)
    loss, parts = cleanclip_loss(image, text, image_view, text_view, scale, *weights)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    if weights[1]:
        assert float(parts["ss_image"]) == pytest.approx(ss_image, rel=1e-5)
        assert float(parts["ss_text"]) == pytest.approx(ss_text, rel=1e-5)
    if weights[0]:
        assert float(parts["mmcl"]) == pytest.approx(mmcl, rel=1e-5)


def test_without_self_supervision_the_loss_is_the_clip_loss():
    g = torch.Generator().manual_seed(1)
    image, text = _unit(16, 8, g), _unit(16, 8, g)
    scale = torch.tensor(30.0)
    loss, parts = cleanclip_loss(image, text, None, None, scale, 1.0, 0.0)
    assert torch.equal(loss, clip_loss(image, text, scale)) and set(parts) == {"mmcl"}


def test_bad_weights_are_rejected():
    g = torch.Generator().manual_seed(2)
    x = _unit(4, 3, g)
    with pytest.raises(ValueError, match="not both 0"):
        cleanclip_loss(x, x, x, x, torch.tensor(1.0), 0.0, 0.0)
    with pytest.raises(ValueError, match="needs the augmented views"):
        cleanclip_loss(x, x, None, None, torch.tensor(1.0), 1.0, 1.0)
    with pytest.raises(ValueError, match="not both 0"):
        CleanCLIPConfig(mmcl_weight=0, ss_weight=0)
    with pytest.raises(ValueError, match="ss_wieght"):
        cleanclip.spec(ss_wieght=2)
    with pytest.raises(ValueError, match="head"):
        cleanclip.sufi_spec(head="linear")


# ---- the objective ------------------------------------------------------------------------------------------------

class _Ctx:
    """The parts of train.Context the objective reads."""

    def __init__(self, dataset, model):
        self.data, self.model, self.device = dataset, model, torch.device("cpu")
        self.epoch, self.step, self.rank = 1, 0, 0

    def generator(self, *purpose):
        return torch.Generator().manual_seed(5)

    def tokens(self, indices, captions):
        return self.model.tokenize(list(captions))

    def images(self, indices):
        return self.data.float_images(indices)


def test_objective_batches_originals_and_views_in_one_pass_and_matches_separate_passes():
    dataset = data.fashion_mnist("train", n=16, seed=0)
    model = models.build_model("clipguard-tiny", seed=0).eval()
    flip = lambda images, generator: images.flip(-1)  # noqa: E731  deterministic stand-ins for the views
    reverse = lambda captions, epoch, indices: [" ".join(c.split()[::-1]) for c in captions]  # noqa: E731
    objective = CleanCLIPObjective(CleanCLIPConfig(ss_weight=2.0), image_view=flip, text_view=reverse)
    indices = torch.arange(16)
    loss, extra = objective.loss(_Ctx(dataset, model), "cleanclip", model, indices)
    images, captions = dataset.float_images(indices), list(dataset.captions)
    with torch.no_grad():
        expected, _ = cleanclip_loss(model.encode_image(images), model.encode_text(captions),
                                     model.encode_image(images.flip(-1)), model.encode_text(reverse(captions, 1, None)),
                                     model.logit_scale.exp(), 1.0, 2.0)
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-4)
    assert set(extra) == {"mmcl", "ss", "ss_image", "ss_text"}


def test_registered_objectives_use_autoaugment_and_a_fixed_eda_view():
    from clipguard.augment import AutoAugmentImages, CaptionAugmenter

    dataset = data.shapes(n=20, seed=0, image_size=16)
    objective = experiments.OBJECTIVES["cleanclip"](cleanclip.spec(), dataset, {"seed": 4})
    assert isinstance(objective.image_view, AutoAugmentImages) and objective.image_view.policy == "imagenet"
    assert isinstance(objective.text_view, CaptionAugmenter)
    assert objective.text_view.resample is False and objective.text_view.seed == 4
    mmcl_only = experiments.OBJECTIVES["cleanclip"](cleanclip.spec(ss_weight=0.0), dataset, {})
    assert mmcl_only.image_view is None and mmcl_only.text_view is None
    resampled = experiments.OBJECTIVES["cleanclip"](cleanclip.spec(caption_resample=True), dataset, {})
    assert resampled.text_view.resample is True
    # the augmentation code is part of a run's key only when the views are used
    assert "clipguard.augment" in experiments.spec_modules({**scenarios.attack_spec("smoke", None),
                                                           "objective": cleanclip.spec()})
    assert "clipguard.augment" not in experiments.spec_modules({**scenarios.attack_spec("smoke", None),
                                                               "objective": cleanclip.spec(ss_weight=0.0)})


@pytest.mark.slow
def test_cleanclip_resumes_to_identical_weights(tmp_path):
    dataset = data.fashion_mnist("train", n=96, seed=3)
    config = TrainConfig(epochs=2, batch_size=32, lr=1e-3, warmup_steps=1, progress=False)

    def fresh():
        return CleanCLIPObjective(CleanCLIPConfig(), seed=0)

    full = train(models.build_model("clipguard-tiny", seed=0), dataset, fresh(), config)
    assert {"mmcl", "ss_image", "ss_text"} <= set(full.steps()[-1])
    train(models.build_model("clipguard-tiny", seed=0), dataset, fresh(), config, run_dir=tmp_path,
          stop_after_epoch=1)
    resumed = train(models.build_model("clipguard-tiny", seed=0), dataset, fresh(), config, run_dir=tmp_path)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    # originals and views in one forward pass: the row-sparse embedding update gives the dense AdamW weights
    dense = train(models.build_model("clipguard-tiny", seed=0), dataset, fresh(),
                  dataclasses.replace(config, sparse_embedding=False))
    for (name, a), b in zip(full.model.state_dict().items(), dense.model.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_sufi_trains_the_image_tower_only_and_resumes(tmp_path):
    dataset = data.fashion_mnist("train", n=96, seed=4)
    config = TrainConfig(epochs=2, batch_size=32, lr=2e-3, warmup_steps=1, progress=False)
    start = models.build_model("clipguard-tiny", seed=1).state_dict()
    result = train(models.build_model("clipguard-tiny", seed=1), dataset, SuFiObjective(), config)
    end = result.model.state_dict()
    visual = [k for k in start if k.startswith("clip.visual.")]
    assert visual and len(visual) < len(start)
    assert all(torch.equal(start[k], end[k]) for k in start if k not in visual)  # text tower, temperature
    assert sum(not torch.equal(start[k], end[k]) for k in visual) > len(visual) // 2
    train(models.build_model("clipguard-tiny", seed=1), dataset, SuFiObjective(), config, run_dir=tmp_path,
          stop_after_epoch=1)
    resumed = train(models.build_model("clipguard-tiny", seed=1), dataset, SuFiObjective(), config, run_dir=tmp_path)
    assert all(torch.equal(end[k], v) for k, v in resumed.model.state_dict().items())


def test_sufi_loss_is_cross_entropy_over_the_zero_shot_classifier():
    from clipguard.evaluate import zero_shot_classifier

    dataset = data.fashion_mnist("train", n=24, seed=5)
    model = models.build_model("clipguard-tiny", seed=2).eval()
    objective = SuFiObjective()
    objective.plan_epoch(_Ctx(dataset, model))
    loss, _ = objective.loss(_Ctx(dataset, model), "sufi", model, torch.arange(24))
    with torch.no_grad():
        head = zero_shot_classifier(model, dataset.classnames, dataset.templates)
        logits = model.logit_scale.exp() * model.encode_image(dataset.float_images()) @ head.T
    assert float(loss.detach()) == pytest.approx(float(F.cross_entropy(logits, dataset.labels)), rel=1e-4)


# ---- specs and stored runs ------------------------------------------------------------------------------------------

def _tiny(spec):
    spec["data"]["n"], spec["test"]["n"], spec["probe_train"] = 256, 200, None
    spec["train"]["batch_size"] = 64
    spec["evaluate"] = ["zeroshot", "backdoor_asr"]
    return spec


def test_main_table_rows_are_specs_of_one_objective():
    attacked = scenarios.attack_spec("cpu", scenarios.backdoor_poison("cpu", trigger="blended"), seed=1)
    rows = {row: cleanclip.main_table_spec(attacked, row) for row in cleanclip.MAIN_TABLE_ROWS}
    assert rows["no defence"] == attacked
    weights = {row: (s["objective"].get("mmcl_weight"), s["objective"].get("ss_weight")) for row, s in rows.items()}
    assert weights["MMCL only"] == (1.0, 0.0) and weights["SSL only"] == (0.0, 1.0)
    assert weights["CleanCLIP"] == (1.0, 1.0) and rows["SuFi"]["objective"]["name"] == "sufi"
    for row in ("MMCL only", "SSL only", "CleanCLIP", "SuFi"):
        child = rows[row]
        assert child["init"] == attacked and child["poison"] is None and experiments.attack_of(child) == attacked["poison"]
        assert child["data"]["disjoint_from"] == attacked["data"] and child["data"]["n"] == 2000
        assert child["train"]["shifted_schedule"] is False
    assert rows["SuFi"]["train"]["lr"] == pytest.approx(cleanclip.SUFI_LR_FACTOR * rows["CleanCLIP"]["train"]["lr"])
    assert scenarios.defended(attacked, "cleanclip", ss_weight=0.0) == rows["MMCL only"]
    custom = scenarios.defended(attacked, "cleanclip", n=500, epochs=3, lr=1e-4, caption_resample=True)
    assert (custom["data"]["n"], custom["train"]["epochs"], custom["train"]["lr"]) == (500, 3, 1e-4)
    assert custom["objective"]["caption_resample"] is True
    with pytest.raises(ValueError, match="unknown row"):
        cleanclip.main_table_spec(attacked, "RoCLIP")
    with pytest.raises(ValueError, match="fine-tuning settings"):
        scenarios.defended(attacked, "cleanclip", epocs=3)


@pytest.mark.slow
def test_finetuning_starts_from_the_parents_weights_and_analysis_matches_the_evaluator(store, monkeypatch):
    poison = scenarios.backdoor_poison("smoke", trigger="badnet_random")  # stochastic: tests the seeding
    parent = _tiny(scenarios.attack_spec("smoke", poison, track_per_sample=False))
    child = cleanclip.main_table_spec(parent, "CleanCLIP", n=64, epochs=1, batch_size=32, each_epoch=True)
    parent_run = experiments.run(parent, store, progress=False)
    started_from = {}
    real_train = experiments.train

    def spy(model, *args, **kwargs):
        started_from.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real_train(model, *args, **kwargs)

    monkeypatch.setattr(experiments, "train", spy)
    child_run = experiments.run(child, store, progress=False)
    parent_state = parent_run.load_model().state_dict()
    assert started_from.keys() == parent_state.keys()
    assert all(torch.equal(started_from[k], parent_state[k]) for k in parent_state)
    assert child_run.config["init"] == {"run": parent_run.id} and "backdoor_asr" in child_run.metrics
    # the ASR after every epoch is in the history; the last epoch's is the run's
    assert [e["backdoor_asr"] for e in child_run.epochs()][-1] == pytest.approx(child_run.metrics["backdoor_asr"])

    assert cleanclip.stored_attack(child_run, store) == parent["poison"]  # the child's stored config names its parent
    metrics, arrays = cleanclip.backdoor_analysis(child_run, store, n_embed=40, tsne=True)
    assert metrics["asr"] == pytest.approx(child_run.metrics["backdoor_asr"])
    assert metrics["total"] == child_run.metrics["backdoor_total"]
    assert metrics["clean_top1"] == pytest.approx(child_run.metrics["zeroshot_top1"])
    assert arrays["tsne"].shape == (80, 2) and arrays["clean"].shape == arrays["triggered"].shape
    assert metrics["d"] == pytest.approx(embedding_shift(torch.from_numpy(arrays["clean"]),
                                                         torch.from_numpy(arrays["triggered"])))
    assert cleanclip.backdoor_analysis(child_run, store, n_embed=40, tsne=True)[0] == metrics  # stored, not recomputed

    from clipguard import attacks, evaluate  # the ASR without colour, by hand (200 test images: one batch)
    model, test = child_run.load_model(), experiments.load_dataset(child["test"])
    triggered = attacks.triggered_test_images(test.float_images(), attacks.make_trigger(poison["trigger"]),
                                              torch.Generator().manual_seed(child["model_seed"]))
    gray = triggered.mean(1, keepdim=True).expand(-1, 3, -1, -1)
    classifier = evaluate.zero_shot_classifier(model, test.classnames, test.templates)
    expected = attacks.backdoor_success(evaluate.zero_shot_logits(model, gray, classifier), test.labels,
                                        test.classnames.index(poison["target_class"]))
    assert metrics["gray_asr"] == pytest.approx(expected.rate)


def test_embedding_shift_is_the_mean_distance_of_unit_embeddings():
    clean = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    triggered = torch.tensor([[0.0, 3.0], [0.0, 1.0]])  # distances sqrt(2) and 0 after normalising
    assert embedding_shift(clean, triggered) == pytest.approx(math.sqrt(2) / 2)
    with pytest.raises(ValueError, match="shapes differ"):
        embedding_shift(clean, triggered[:1])


def test_the_per_epoch_asr_of_a_fine_tune_does_not_change_its_training(store):
    from safetensors.torch import load_file

    parent = _tiny(scenarios.attack_spec("smoke", scenarios.backdoor_poison("smoke"), track_per_sample=False))
    with_asr = cleanclip.main_table_spec(parent, "MMCL only", n=64, epochs=2, batch_size=32, each_epoch=True)
    without = {**with_asr, "evaluate": ["zeroshot"]}
    a, b = experiments.run(with_asr, store, progress=False), experiments.run(without, store, progress=False)
    assert [e.get("backdoor_asr") is not None for e in a.epochs()] == [True, True]
    assert all("backdoor_asr" not in e for e in b.epochs())
    wa, wb = load_file(a.path / "model.safetensors"), load_file(b.path / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _count_evaluator_calls(monkeypatch) -> tuple[list[str], dict]:
    """Record each call of the zero-shot and backdoor-ASR evaluators; returns (calls, the real evaluators)."""
    calls = []
    evaluators = dict(experiments.EVALUATORS)
    for name in ("zeroshot", "backdoor_asr"):
        monkeypatch.setitem(experiments.EVALUATORS, name,
                            lambda *args, _name=name: calls.append(_name) or evaluators[_name](*args))
    return calls, evaluators


def test_final_metrics_taken_from_the_last_epoch_equal_a_fresh_evaluation(store, monkeypatch):
    """Zero-shot and backdoor ASR of the final model come from the last epoch's callbacks (not computed twice):
    they equal the evaluators run afresh on the stored weights."""
    parent = _tiny(scenarios.attack_spec("smoke", scenarios.backdoor_poison("smoke"), track_per_sample=False))
    spec = cleanclip.main_table_spec(parent, "MMCL only", n=64, epochs=2, batch_size=32, each_epoch=True)
    experiments.run(parent, store, progress=False)
    calls, evaluators = _count_evaluator_calls(monkeypatch)
    run = experiments.run(spec, store, progress=False)
    assert calls == ["backdoor_asr", "backdoor_asr"]  # once per epoch (the callback); the final metrics reuse
    monkeypatch.setattr(experiments, "EVALUATORS", evaluators)
    evaluation = experiments.prepare(spec).for_evaluation()
    eval_spec = {**spec, "poison": experiments.attack_of(spec)}
    fresh = {}
    for name in ("zeroshot", "backdoor_asr"):
        fresh.update(experiments.EVALUATORS[name](run.load_model(), eval_spec, evaluation))
    assert "zeroshot_top1" in fresh and "backdoor_asr" in fresh
    assert {k: run.metrics[k] for k in fresh} == fresh
    assert run.epochs()[-1]["zeroshot_top1"] == run.metrics["zeroshot_top1"]


def test_a_fine_tune_evaluated_only_at_the_end_has_the_same_weights_and_final_metrics(store, monkeypatch):
    """Per-epoch evaluation is off unless a page asks for the history (whatever the parent's seed); without it the
    evaluators run once, on the final model, and nothing but the history changes."""
    from safetensors.torch import load_file

    parent = _tiny(scenarios.attack_spec("smoke", scenarios.backdoor_poison("smoke"), track_per_sample=False))
    each = cleanclip.main_table_spec(parent, "MMCL only", n=64, epochs=2, batch_size=32, each_epoch=True)
    end_only = cleanclip.main_table_spec(parent, "MMCL only", n=64, epochs=2, batch_size=32)
    assert each["evaluate_each_epoch"] is True and end_only["evaluate_each_epoch"] is False
    seed1 = _tiny(scenarios.attack_spec("smoke", scenarios.backdoor_poison("smoke"), seed=1, track_per_sample=False))
    assert cleanclip.main_table_spec(seed1, "CleanCLIP")["evaluate_each_epoch"] is False
    assert cleanclip.main_table_spec(seed1, "SuFi", each_epoch=True)["evaluate_each_epoch"] is True
    a = experiments.run(each, store, progress=False)
    calls, _ = _count_evaluator_calls(monkeypatch)
    b = experiments.run(end_only, store, progress=False)
    assert calls == ["zeroshot", "backdoor_asr"]  # once each, after training
    assert all("zeroshot_top1" in e and "backdoor_asr" in e for e in a.epochs())
    assert not any("zeroshot_top1" in e or "backdoor_asr" in e for e in b.epochs())
    wa, wb = load_file(a.path / "model.safetensors"), load_file(b.path / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    for key in ("zeroshot_top1", "backdoor_asr", "backdoor_successes"):
        assert a.metrics[key] == b.metrics[key], key
