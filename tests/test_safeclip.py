import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipguard import data, experiments, models, scenarios
from clipguard.defenses import safeclip
from clipguard.defenses.safeclip import (SafeCLIPConfig, SafeCLIPObjective, clean_order, cross_modal_loss, gmm_split,
                                         rank_percentiles, safe_counts, safe_rows, unimodal_loss)
from clipguard.losses import clip_loss
from clipguard.train import TrainConfig, cosine_lr, train


def _planted_cosines(n_clean=900, n_poison=100, seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0.45, 0.08, n_clean), rng.normal(0.0, 0.05, n_poison)])


# -- the split -------------------------------------------------------------------------------------------------------

def test_gmm_split_equals_scikit_learn_posterior_on_planted_data():
    from sklearn.mixture import GaussianMixture

    cosine = _planted_cosines()
    split = gmm_split(cosine, seed=3, threshold=0.9)
    reference = GaussianMixture(2, random_state=3).fit(np.sort(cosine)[:, None])
    clean = int(np.argmax(reference.means_[:, 0]))
    np.testing.assert_allclose(split.p_clean, reference.predict_proba(cosine[:, None])[:, clean], rtol=0, atol=1e-12)
    np.testing.assert_allclose(split.means, reference.means_[:, 0])
    np.testing.assert_allclose(split.weights, reference.weights_)
    # the planted groups are found: clean (900 rows ~ N(0.45, 0.08^2)) and poisons (100 rows ~ N(0, 0.05^2))
    assert split.component("clean")["mean"] == pytest.approx(cosine[:900].mean(), abs=0.003)
    assert split.component("risky")["mean"] == pytest.approx(cosine[900:].mean(), abs=0.003)
    assert split.component("clean")["weight"] == pytest.approx(0.9, abs=0.005)
    assert split.component("clean")["variance"] == pytest.approx(cosine[:900].var(), rel=0.05)
    assert not split.safe[900:].any() and split.safe[:900].mean() > 0.95
    np.testing.assert_array_equal(split.score, -split.p_clean)


def test_gmm_split_does_not_depend_on_row_order():
    cosine = _planted_cosines(seed=1)
    perm = np.random.default_rng(0).permutation(len(cosine))
    np.testing.assert_allclose(gmm_split(cosine[perm]).p_clean, gmm_split(cosine).p_clean[perm], atol=1e-12)


def test_gmm_split_rejects_bad_input():
    with pytest.raises(ValueError, match="row 2"):
        gmm_split(np.array([0.1, 0.2, np.nan, 0.3]))
    with pytest.raises(ValueError, match="threshold"):
        gmm_split(_planted_cosines(), threshold=1.5)


def test_clean_order_breaks_ties_by_cosine_then_row_and_ranks_as_percentiles():
    p_clean = np.array([1.0, 0.5, 1.0, 1.0, 0.2])
    cosine = np.array([0.3, 0.9, 0.5, 0.3, 0.1])
    naive = sorted(range(5), key=lambda i: (-p_clean[i], -cosine[i], i))
    order = clean_order(p_clean, cosine)
    assert order.tolist() == naive == [2, 0, 3, 1, 4]
    np.testing.assert_allclose(rank_percentiles(order, np.array([4, 2, 1])), [80.0, 0.0, 60.0])
    split = gmm_split(_planted_cosines())
    top = safe_rows(split, 100)
    assert top.sum() == 100 and split.p_clean[top].min() >= split.p_clean[~top].max()


def test_safe_set_grows_by_the_step_up_to_the_cap_and_never_below_the_first_split():
    assert safe_counts(1000, 300, 0.05, 0.45, 5) == [300, 350, 400, 450, 450]
    assert safe_counts(1000, 0, 0.01, 0.85, 3) == [0, 10, 20]            # an empty first split still grows
    assert safe_counts(1000, 900, 0.01, 0.85, 3) == [900, 900, 900]      # r0 above the cap: no shrinking
    assert safe_counts(10000, 3000, 0.01, 0.85, 3) == [3000, 3100, 3200]  # floor(r n) without float drift
    with pytest.raises(ValueError, match="first_count"):
        safe_counts(10, 11, 0.01, 0.85, 2)


# -- losses ------------------------------------------------------------------------------------------------------------

def _naive_ce(rows, columns, scale):
    """Mean over rows of -log softmax(scale * <row_i, column_j>)_j=i, with explicit loops."""
    total = 0.0
    for i in range(len(rows)):
        logits = [float(scale * rows[i] @ columns[j]) for j in range(len(columns))]
        top = max(logits)
        total -= logits[i] - (top + math.log(sum(math.exp(v - top) for v in logits)))
    return total / len(rows)


def test_losses_match_a_naive_reference_and_reduce_to_clip_with_one_view():
    g = torch.Generator().manual_seed(0)
    i1, i2, t1, t2 = (F.normalize(torch.randn(6, 5, generator=g, dtype=torch.float64), dim=1) for _ in range(4))
    scale = torch.tensor(7.0, dtype=torch.float64)
    assert float(unimodal_loss(i1, i2, t1, t2, scale)) == pytest.approx(
        0.5 * (_naive_ce(i2, i1, 7.0) + _naive_ce(t2, t1, 7.0)), rel=1e-12)
    assert float(cross_modal_loss(i1, i2, t1, t2, scale)) == pytest.approx(
        0.5 * (_naive_ce(i1, t2, 7.0) + _naive_ce(t1, i2, 7.0)), rel=1e-12)
    assert float(cross_modal_loss(i1, i1, t1, t1, scale)) == pytest.approx(float(clip_loss(i1, t1, scale)), rel=1e-12)


def test_memory_bank_returns_the_nearest_past_view_queried_before_insert():
    objective = SafeCLIPObjective(SafeCLIPConfig(memory_bank_size=8), lambda x, g: x, [lambda c, e, i: c] * 2)
    g = torch.Generator().manual_seed(0)
    first = F.normalize(torch.randn(4, 3, generator=g), dim=1)
    assert torch.equal(objective._nearest(first, "image"), first)  # empty bank: the batch's own view
    second = F.normalize(torch.randn(4, 3, generator=g), dim=1)
    brute = first[[max(range(4), key=lambda j: float(q @ first[j])) for q in second]]
    assert torch.allclose(objective._nearest(second, "image"), brute)  # only the earlier batch is searched
    assert objective.banks["image"].filled == 8 and objective.banks["text"].filled == 0


# -- training ----------------------------------------------------------------------------------------------------------

def _identity_views():
    """Cheap stand-ins for the augmentations: a mirrored image, captions with a word appended."""
    return (lambda images, generator: images.flip(-1),
            [lambda captions, epoch, indices: [c + " here" for c in captions],
             lambda captions, epoch, indices: [c + " there" for c in captions]])


def _small_set(n=160):
    return data.fashion_mnist("train", n=n, seed=0)


class PlantedScores(SafeCLIPObjective):
    """SafeCLIP whose pair embeddings are planted: 40% clearly clean pairs (cosine ~0.8), the other clean pairs
    middling (~0.4), the poisoned ones unrelated (~0)."""

    def pair_embeddings(self, ctx):
        n = len(ctx.data)
        target = torch.full((n,), 0.4)
        target[:int(0.4 * n)] = 0.8
        target[self.poison_mask] = 0.0
        angle = target.acos() + 0.05 * torch.randn(n, generator=torch.Generator().manual_seed(ctx.epoch))
        image = torch.tensor([1.0, 0.0]).expand(n, 2)
        return image, torch.stack([angle.cos(), angle.sin()], 1)


def test_planted_low_cosine_poisons_never_enter_the_safe_set_as_it_grows_to_the_cap():
    dataset = _small_set()
    poison = torch.zeros(len(dataset), dtype=torch.bool)
    poison[-12:] = True
    config = SafeCLIPConfig(unimodal_epochs=1, clip_warmup_epochs=1, step=0.2, cap=0.85)
    objective = PlantedScores(config, *_identity_views(), poison_mask=poison)
    result = train(models.build_model("clipguard-tiny", seed=0), dataset, objective,
                   TrainConfig(epochs=6, batch_size=32, lr=1e-3, warmup_steps=2, progress=False, log_every=1))
    main = [e for e in result.epochs() if e["phase_id"] == 2]
    assert len(main) == 4 and all(e["split_poisons_in_safe"] == 0 for e in main)
    assert main[-1]["split_safe_poison_rate"] == 0.0
    # first split: p(clean) >= 0.9 is the clearly clean 40%; then +20% per epoch up to the cap of 85%
    sizes = [int(e["split_safe_size"]) for e in main]
    assert sizes[0] == main[0]["split_above_threshold"] and abs(sizes[0] - 64) <= 3
    assert sizes == safe_counts(len(dataset), sizes[0], 0.2, 0.85, 4)
    assert sizes[-1] == math.floor(0.85 * len(dataset)) and sizes[2] > sizes[1] > sizes[0]
    assert all(e["poison_rank_percentile_min"] >= 100 * (1 - 12 / len(dataset)) - 1e-9 for e in main)
    assert set(objective.splits) == {3, 4, 5, 6}
    passes = {(h["epoch"], h["pass"]) for h in result.steps()}
    assert {(1, "unimodal"), (2, "clip_warmup"), (3, "risky"), (3, "safe")} <= passes


def _short_run(tmp_path=None, stop=None, sparse_embedding=True, **fields):
    dataset = _small_set()
    poison = torch.zeros(len(dataset), dtype=torch.bool)
    poison[:8] = True
    config = SafeCLIPConfig(unimodal_epochs=1, clip_warmup_epochs=1, memory_bank_size=48, step=0.1,
                            image_policy=dict(scenarios.SMALL_IMAGE_POLICY), **fields)
    from clipguard.augment import CaptionAugmenter, EDA, ImagePolicy

    eda = EDA(operations=("rs", "rd"))  # no WordNet needed: swaps and deletions only
    objective = SafeCLIPObjective(config, ImagePolicy(**{k: tuple(v) if isinstance(v, list) else v
                                                         for k, v in config.image_policy.items()}),
                                  [CaptionAugmenter(1, False, eda), CaptionAugmenter(2, False, eda)], poison)
    result = train(models.build_model("clipguard-tiny", seed=0), dataset, objective,
                   TrainConfig(epochs=4, batch_size=32, lr=1e-3, warmup_steps=3, progress=False, log_every=1,
                               sparse_embedding=sparse_embedding), run_dir=tmp_path, stop_after_epoch=stop)
    return result, objective


@pytest.fixture(scope="module")
def short_run():
    """One uninterrupted 4-epoch run (1 unimodal, 1 CLIP warm-up, 2 main), shared by the tests below."""
    return _short_run()


def test_row_sparse_embedding_updates_give_the_dense_weights(short_run):
    """Two views of each image and caption in one forward pass, every phase: the row-sparse token-embedding update
    (clipguard.optim) ends bit for bit where dense fused AdamW does."""
    dense, _ = _short_run(sparse_embedding=False)
    for (name, a), b in zip(dense.model.state_dict().items(), short_run[0].model.state_dict().values()):
        assert torch.equal(a, b), name


def test_resume_in_the_main_phase_gives_identical_weights_and_splits(tmp_path, short_run):
    full, full_objective = short_run
    _short_run(tmp_path, stop=3)  # stops after the first main epoch (mid-phase: the bank and r0 are in the state)
    resumed, resumed_objective = _short_run(tmp_path)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert set(resumed_objective.splits) == {3, 4}
    for epoch, arrays in full_objective.splits.items():
        for key, value in arrays.items():
            np.testing.assert_array_equal(resumed_objective.splits[epoch][key], value, err_msg=f"{epoch} {key}")
    assert [h["lr"] for h in full.steps()] == [h["lr"] for h in resumed.steps()]


def test_learning_rate_is_one_schedule_per_phase_without_a_restart(short_run):
    result, objective = short_run
    steps = result.steps()
    base, warmup, per_epoch = 1e-3, 3, 160 // 32
    unimodal = [h["lr"] for h in steps if h["pass"] == "unimodal"]
    assert unimodal == [cosine_lr(t, base, warmup, per_epoch) for t in range(per_epoch)]
    assert {h["lr"] for h in steps if h["pass"] == "clip_warmup"} == {0.01 * base}  # constant low lr
    main = [h for h in steps if h["epoch"] >= 3]
    assert len(main) == objective.main_steps  # planned at the first split = steps taken
    lrs = [h["lr"] for h in main]
    assert lrs == [cosine_lr(t, base, warmup, len(main)) for t in range(len(main))]
    assert lrs[:warmup] == sorted(lrs[:warmup]) and lrs[warmup - 1:] == sorted(lrs[warmup - 1:], reverse=True)
    assert lrs[-1] == min(lrs) < 0.15 * base  # ends at its lowest (one step before 0), never rises again


def test_scoring_uses_evaluation_images_and_original_captions_unless_released_behaviour_is_asked():
    from clipguard.evaluate import pair_statistics
    from clipguard.train import Context

    dataset = _small_set(64)
    model = models.build_model("clipguard-tiny", seed=0)
    ctx = Context(dataset, model, TrainConfig(epochs=4, batch_size=32), torch.device("cpu"), epoch=3)
    plain = SafeCLIPObjective(SafeCLIPConfig(score_batch_size=20), *_identity_views())
    image, text = plain.pair_embeddings(ctx)
    expected, _ = pair_statistics(model, dataset)
    torch.testing.assert_close((image * text).sum(1), expected, atol=1e-5, rtol=0)
    released = SafeCLIPObjective(SafeCLIPConfig(score_augmented=True), *_identity_views())
    image_aug, text_aug = released.pair_embeddings(ctx)
    assert not torch.allclose((image_aug * text_aug).sum(1), expected, atol=1e-4)


# -- specs and registration ------------------------------------------------------------------------------------------

def test_spec_writes_the_released_defaults_out_and_rejects_bad_fields():
    written = safeclip.spec()
    assert written["name"] == "safeclip"
    assert (written["unimodal_epochs"], written["clip_warmup_epochs"], written["threshold"], written["step"],
            written["cap"], written["memory_bank_size"]) == (5, 1, 0.9, 0.01, 0.85, 256)
    assert safeclip.spec(step=0.05) != written
    with pytest.raises(ValueError, match="allowed"):
        safeclip.spec(thresold=0.8)
    with pytest.raises(ValueError, match="augment"):
        safeclip.spec(augment=False)
    with pytest.raises(ValueError, match="cap"):
        SafeCLIPConfig(cap=0.0)


def test_defence_keeps_the_attacked_budget_and_builds_the_objective():
    attacked = scenarios.attack_spec("cpu", scenarios.backdoor_poison("cpu"), seed=0)
    spec = scenarios.defended(attacked, "safeclip")
    assert spec["train"]["epochs"] == attacked["train"]["epochs"] == 8
    assert (spec["objective"]["unimodal_epochs"], spec["objective"]["clip_warmup_epochs"]) == (1, 1)
    assert spec["objective"]["low_lr"] == pytest.approx(0.02 / (10000 // 128))  # lr x steps of the released epoch
    assert spec["poison"] == attacked["poison"]
    smoke = scenarios.defended(scenarios.attack_spec("smoke", scenarios.backdoor_poison("smoke")), "safeclip")
    assert smoke["train"]["epochs"] == 3  # 1 unimodal + 1 CLIP warm-up + 1 main
    prepared = experiments.prepare(smoke)
    objective = experiments.make_objective(smoke, prepared)
    assert isinstance(objective, SafeCLIPObjective)
    assert torch.equal(objective.poison_mask, prepared.info["is_poison"])
    assert len(prepared.info["savers"]) == 2  # the manifest and the split log
    assert "clipguard.defenses.safeclip" in experiments.spec_modules(smoke)


def test_plan_fails_clearly_without_a_main_epoch():
    objective = SafeCLIPObjective(SafeCLIPConfig(unimodal_epochs=2, clip_warmup_epochs=1), *_identity_views())
    with pytest.raises(ValueError, match="more epochs"):
        train(models.build_model("clipguard-tiny", seed=0), _small_set(64), objective,
              TrainConfig(epochs=3, batch_size=32, progress=False))
