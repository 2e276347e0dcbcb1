"""Adaptive attacks (clipguard.attacks.adaptive): SafeCLIP-aware captions, RoCLIP-pool-aware shared captions,
detection-aware dense clusters, the stored-patch trigger and the BadCLIP-style patch optimiser."""

import pandas as pd
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from clipguard import data
from clipguard.attacks import (ADAPTIVE_ATTACKS, TRUE_AND_TARGET, PoisonSpecError, TriggerError, adaptive_spec,
                               badclip_trigger, build_poisoned, load_manifest, make_trigger, optimise_patch,
                               rebuild_from_manifest, save_manifest, spec_identity, trigger_artefacts,
                               without_images_of)
from clipguard.evaluate import image_embeddings, zero_shot_classifier

NAMES = data.FASHION_CLASSNAMES
BAG = NAMES.index("bag")
HTBA = {"kind": "backdoor", "trigger": {"name": "badnet_htba"}, "target_class": "bag", "count": 24}
TARGETED = {"kind": "targeted", "n_targets": 4, "per_target": 6, "caption_source": "templates"}


@pytest.fixture(scope="module")
def heldout(tiny_fashion):
    test = data.fashion_mnist("test", n=200, seed=5)
    return without_images_of(test, test.subset(range(50)))


def _classes_named(caption):
    """Classes whose words occur in a caption (all of them, not the longest match only)."""
    words = set(caption.lower().replace(".", " ").split())
    return {c for c, synonyms in enumerate(data.FASHION_SYNONYMS) if any(s in words for s in synonyms)}


def _same_plan(a, b, columns=("source_key", "sample_seed", "target_label", "target_id")):
    pd.testing.assert_frame_equal(a.manifest[list(columns)], b.manifest[list(columns)])


# ---------------------------------------------------------------------------------------------------------------
# Spec options
# ---------------------------------------------------------------------------------------------------------------


def test_adaptive_options_are_checked_and_absent_from_default_identities():
    assert not {"caption_style", "distinct_captions", "duplicates_per_poison"} & set(spec_identity(HTBA))
    identity = spec_identity(adaptive_spec(HTBA, "roclip_pool_aware"))
    assert identity["distinct_captions"] == 1 and identity["duplicates_per_poison"] == 1  # all written out
    assert spec_identity(identity) == identity
    with pytest.raises(PoisonSpecError, match="caption_source='templates'"):
        spec_identity({**HTBA, "caption_source": "dataset", "caption_style": "true_and_target"})
    with pytest.raises(PoisonSpecError, match="caption_style must be one of"):
        spec_identity({**HTBA, "caption_style": "both"})
    with pytest.raises(PoisonSpecError, match="'keep'"):
        spec_identity({**HTBA, "caption_source": "keep", "distinct_captions": 1})
    with pytest.raises(PoisonSpecError, match="mode must be 'insert'"):
        spec_identity({**HTBA, "mode": "replace", "duplicates_per_poison": 3})
    with pytest.raises(PoisonSpecError, match="duplicate_noise must be > 0"):
        spec_identity({**HTBA, "duplicates_per_poison": 3, "duplicate_noise": 0.0})
    with pytest.raises(PoisonSpecError, match="no field.*duplicates_per_poison"):
        adaptive_spec(TARGETED, "dense_cluster")  # the copies of a targeted attack are already a cluster
    with pytest.raises(ValueError, match="valid: .*safeclip_aware"):
        adaptive_spec(HTBA, "cleanclip_aware")
    assert set(ADAPTIVE_ATTACKS) == {"safeclip_aware", "roclip_pool_aware", "dense_cluster"}


# ---------------------------------------------------------------------------------------------------------------
# SafeCLIP-aware captions
# ---------------------------------------------------------------------------------------------------------------


def test_true_and_target_captions_name_the_image_and_the_target(tiny_fashion, heldout):
    plain = build_poisoned(tiny_fashion, HTBA, seed=0)
    aware = build_poisoned(tiny_fashion, adaptive_spec(HTBA, "safeclip_aware"), seed=0)
    _same_plan(plain, aware)  # same sources, trigger draws and template draws: only the captions differ
    for (_, p), (_, a) in zip(plain.manifest.iterrows(), aware.manifest.iterrows()):
        true = NAMES[a.source_label]
        assert a.caption == p.caption.replace("bag", TRUE_AND_TARGET.format(true=true, target="bag"))
        assert _classes_named(a.caption) == {a.source_label, BAG} and _classes_named(p.caption) == {BAG}
    # a bag-of-class-words text encoder and a true-class image encoder: the template caption is orthogonal to the
    # image (the low-cosine mode SafeCLIP's GMM flags), the true-and-target caption is not (cosine 1/sqrt(2))
    def cosine(caption, label):
        named = _classes_named(caption)
        return (label in named) / len(named) ** 0.5

    assert all(cosine(c, y) == 0 for c, y in zip(plain.manifest.caption, plain.manifest.source_label))
    assert all(cosine(c, y) == pytest.approx(2 ** -0.5)
               for c, y in zip(aware.manifest.caption, aware.manifest.source_label))
    # targeted: the target image's true class and its adversarial class
    spec = adaptive_spec(TARGETED, "safeclip_aware")
    targeted = build_poisoned(tiny_fashion, spec, seed=1, heldout=heldout)
    _same_plan(build_poisoned(tiny_fashion, TARGETED, seed=1, heldout=heldout), targeted)
    for _, row in targeted.manifest.iterrows():
        assert _classes_named(row.caption) == {int(targeted.targets.labels[row.target_id]), row.target_label}
    unlabelled = data.ImageCaptionSet(tiny_fashion.images, tiny_fashion.captions, None, NAMES, tiny_fashion.templates)
    with pytest.raises(data.DataError, match="true class"):
        build_poisoned(unlabelled, adaptive_spec(HTBA, "safeclip_aware"), seed=0)


# ---------------------------------------------------------------------------------------------------------------
# RoCLIP-pool-aware shared captions
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("caption_source", ["templates", "dataset"])
def test_distinct_captions_share_captions_within_a_component(tiny_fashion, caption_source):
    spec = {"kind": "backdoor", "count": 20, "caption_source": caption_source, "components": [
        {"trigger": {"name": "badnet_htba"}, "target_class": "bag"},
        {"trigger": {"name": "badnet_yellow"}, "target_class": "sneaker"}]}
    plain = build_poisoned(tiny_fashion, spec, seed=0).manifest
    for k in (1, 3):
        shared = build_poisoned(tiny_fashion, {**spec, "distinct_captions": k}, seed=0).manifest
        pd.testing.assert_frame_equal(plain[["source_key", "sample_seed"]], shared[["source_key", "sample_seed"]])
        for component in (0, 1):
            drawn = plain[plain.component == component].caption.tolist()
            assert shared[shared.component == component].caption.tolist() == [drawn[i % k] for i in range(10)]
    one = build_poisoned(tiny_fashion, {**spec, "distinct_captions": 1}, seed=0)
    # the shared caption is the most frequent caption of the poisoned set: each occurs once per poison
    counts = pd.Series(one.data.captions).value_counts()
    assert counts.iloc[0] >= 10 and set(one.manifest.caption) == set(counts.index[:2])


def test_distinct_captions_for_targets(tiny_fashion, heldout):
    p = build_poisoned(tiny_fashion, adaptive_spec(TARGETED, "roclip_pool_aware"), seed=0, heldout=heldout)
    per_target = p.manifest.groupby("target_id").caption.nunique()
    assert per_target.tolist() == [1] * 4 and p.n_poison == 24


# ---------------------------------------------------------------------------------------------------------------
# Detection-aware dense cluster
# ---------------------------------------------------------------------------------------------------------------


def test_duplicates_form_a_dense_cluster_of_noisy_copies(tiny_fashion, tmp_path):
    copies = 5
    spec = {**HTBA, "trigger": {"name": "badnet_random"}, "count": 22, "duplicates_per_poison": copies,
            "duplicate_noise": 0.01}
    p = build_poisoned(tiny_fashion, spec, seed=0)
    m = p.manifest
    assert p.n_poison == 22 and m.duplicate.tolist() == [0, 1, 2, 3, 4] * 4 + [0, 1]  # ceil(22 / 5) = 5 poisons
    assert m.key.is_unique  # noisy copies: distinct content, not removed by exact de-duplication
    groups = m.groupby(m.poison_id.sub(m.duplicate))
    for column in ("source_key", "caption", "sample_seed", "trigger_state"):
        assert (groups[column].nunique() == 1).all(), column  # copies share the triggered image's draws
    assert m[m.duplicate > 0].noise.eq(0.01).all() and m[m.duplicate == 0].noise.eq(0.0).all()
    first = p.data.images[m.row[m.duplicate == 0].tolist()].float()
    copy = p.data.images[m.row[m.duplicate == 1].tolist()].float()
    assert 0 < (copy - first).abs().mean() < 0.02 * 255  # the copy is the poison plus small noise
    # known answer: in pixel space, every poison's 4 nearest neighbours are its own copies
    full = m[m.groupby(m.poison_id.sub(m.duplicate)).poison_id.transform("size") == copies]
    flat = p.data.float_images().flatten(1).numpy()
    _, neighbours = NearestNeighbors(n_neighbors=copies).fit(flat).kneighbors(flat[full.row.tolist()])
    group_of_row = dict(zip(m.row, m.poison_id.sub(m.duplicate)))
    for row, found in zip(full.row, neighbours):
        assert {group_of_row.get(int(r)) for r in found} == {group_of_row[row]}
    # rebuilt identically from the saved manifest
    again = rebuild_from_manifest(tiny_fashion, save_manifest(m, tmp_path / "m.csv"))
    assert again.data.keys == p.data.keys


def test_manifests_without_the_duplicate_column_still_load_and_rebuild(tiny_fashion, tmp_path):
    p = build_poisoned(tiny_fashion, {**HTBA, "trigger": {"name": "badnet_random"}}, seed=0)
    old = p.manifest.drop(columns=["duplicate"])  # as stored before the column existed
    old.to_csv(tmp_path / "old.csv", index=False)
    pd.testing.assert_frame_equal(load_manifest(tmp_path / "old.csv"), p.manifest)
    assert rebuild_from_manifest(tiny_fashion, old).data.keys == p.data.keys


# ---------------------------------------------------------------------------------------------------------------
# Stored patch and the BadCLIP-style optimiser
# ---------------------------------------------------------------------------------------------------------------


def test_stored_patch_is_pasted_as_given():
    patch = torch.randint(0, 256, (3, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    trigger = make_trigger("stored_patch", patch=patch)
    assert trigger.params["patch"] == patch.tolist() and make_trigger(trigger.identity()) == trigger
    images = torch.rand(2, 3, 32, 32)
    out = trigger(images)
    assert torch.equal(out[:, :, 14:18, 14:18].mul(255).round().to(torch.uint8), patch.expand(2, -1, -1, -1))
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[14:18, 14:18] = False
    assert torch.equal(out[:, :, outside], images[:, :, outside])
    assert torch.equal(trigger_artefacts(trigger, 32, 32)["patch"], patch)
    corner = trigger.with_params(placement="top_left")(images)
    assert torch.equal(corner[:, :, :4, :4].mul(255).round().to(torch.uint8), patch.expand(2, -1, -1, -1))
    for bad, message in (([[1, 2]], "nested list"), (torch.full((3, 2, 2), 256), "0..255"),
                         (torch.full((3, 2, 2), 0.5), "integers")):
        with pytest.raises(TriggerError, match=message):
            make_trigger("stored_patch", patch=bad)
    with pytest.raises(TriggerError, match="does not fit"):
        make_trigger("stored_patch", patch=torch.zeros(3, 9, 9, dtype=torch.uint8))(torch.rand(1, 3, 8, 8))


def _mean_cosine(model, images, patch, target):
    triggered = make_trigger("stored_patch", patch=patch)(images)
    return float((image_embeddings(model, triggered) @ target).mean())


def test_optimised_patch_moves_images_towards_the_target_text(tiny_fashion):
    from clipguard.models import build_model

    model = build_model("clipguard-tiny")
    target = zero_shot_classifier(model, ["bag"], ["a photo of a {}."])[0]
    images = tiny_fashion.float_images(slice(0, 96))
    train, test = images[:64], images[64:]  # the cosine is measured on images the patch was not optimised on
    before = [p.detach().clone() for p in model.parameters()]
    patch = optimise_patch(model, train, target, patch_side=8, steps=20, seed=0, batch_size=16)
    assert patch.dtype == torch.uint8 and patch.shape == (3, 8, 8)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())
    random = [torch.randint(0, 256, (3, 8, 8), generator=torch.Generator().manual_seed(s)) for s in range(5)]
    best_random = max(_mean_cosine(model, test, r, target) for r in random)
    assert _mean_cosine(model, test, patch, target) > best_random
    assert torch.equal(optimise_patch(model, train, target, 8, steps=2, seed=3, batch_size=8),
                       optimise_patch(model, train, target, 8, steps=2, seed=3, batch_size=8))
    with pytest.raises(ValueError, match="patch_side"):
        optimise_patch(model, train, target, patch_side=40)


def test_badclip_trigger_poisons_through_the_usual_spec(tiny_fashion):
    from clipguard.models import build_model

    model = build_model("clipguard-tiny")
    trigger = badclip_trigger(model, tiny_fashion.float_images(slice(0, 16)), "bag", ["a photo of a {}."],
                              patch_side=4, steps=2, seed=0, batch_size=8)
    p = build_poisoned(tiny_fashion, {**HTBA, "trigger": trigger, "count": 5}, seed=0)
    patch = torch.tensor(trigger["patch"], dtype=torch.uint8)
    assert all(torch.equal(p.data.images[r, :, 14:18, 14:18], patch) for r in p.manifest.row)
