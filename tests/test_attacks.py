"""Attacks: triggers (shape, range, what changes, determinism), poisoned sets and manifests, ASR metrics."""

import json
import math
import re
import types

import pandas as pd
import pytest
import torch
from torch import nn

from clipguard import data
from clipguard.attacks import hooks
from clipguard.attacks import (PLACEMENTS, TRIGGERS, PoisonSpecError, TargetSet, TriggerError, apply_to_uint8,
                               backdoor_asr, backdoor_success, build_poisoned, captions_naming,
                               cleanclip_release_asr, load_manifest, make_trigger, mean_interval,
                               multi_target_backdoor_asr, patch_side, rebuild_from_manifest, save_manifest,
                               spec_identity, targeted_asr, targeted_success, to_uint8, trigger_artefacts,
                               triggered_test_images, wanet_displacement, wanet_grid, without_images_of)

MULTI = {"name": "multi", "triggers": [{"name": "badnet_checkerboard"}, {"name": "nashville"}, {"name": "wanet"}]}
STORED = {"name": "stored_patch", "patch": torch.randint(0, 256, (3, 3, 3), generator=torch.Generator().manual_seed(0))}


def _images(b=6, size=32, seed=0):
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _all_triggers():
    given = {"multi": MULTI, "stored_patch": STORED}
    return [make_trigger(given.get(name, name)) for name in sorted(TRIGGERS)]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------------------------
# Triggers
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [28, 32, 57])
def test_every_trigger_keeps_shape_range_and_is_deterministic(size):
    images = _images(size=size)
    for trigger in _all_triggers():
        out = trigger(images, _gen(3))
        assert out.shape == images.shape and out.dtype == images.dtype, trigger.name
        assert out.min() >= 0 and out.max() <= 1, trigger.name
        assert not torch.equal(out, images), f"{trigger.name} changed nothing"
        again, state = trigger.apply(images, _gen(3))
        assert torch.equal(out, again), f"{trigger.name} is not deterministic under a seed"
        assert all(v.shape == (len(images),) for v in state.values()), trigger.name
        # a single image [3, H, W] works too
        assert trigger(images[0], _gen(3)).shape == images[0].shape


def test_registry_errors_list_valid_names_and_parameters():
    with pytest.raises(TriggerError, match="valid names: .*badnet_htba"):
        make_trigger("badnet")
    with pytest.raises(TriggerError, match="valid: .*patch_fraction"):
        make_trigger("badnet_htba", size=16)
    with pytest.raises(TriggerError, match="placement"):
        make_trigger("badnet_random", placement="middle")
    with pytest.raises(TriggerError, match="Generator"):
        make_trigger("badnet_random")(_images())
    with pytest.raises(TriggerError, match="float"):
        make_trigger("blended")(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


def test_identity_round_trips_with_defaults_filled():
    trigger = make_trigger("badnet_htba", offset_fraction=9 / 224)
    identity = trigger.identity()
    assert identity["name"] == "badnet_htba" and identity["patch_fraction"] == 16 / 224 and identity["grid"] == 4
    assert make_trigger(identity) == trigger
    assert make_trigger({"name": "badnet_htba"}).identity() == make_trigger("badnet_htba").identity()
    multi = make_trigger(MULTI)
    assert multi.params["triggers"][2] == make_trigger("wanet").identity()
    assert trigger.with_params(placement="center").params["placement"] == "center"


def test_patch_side_scales_with_the_image():
    assert patch_side(16 / 224, 224, 224) == 16
    assert patch_side(16 / 224, 32, 32) == 2
    assert patch_side(0.25, 32, 32) == 8
    assert patch_side(0.001, 32, 32) == 1


def _changed_mask(before, after):
    return (before != after).any(1)  # [B, H, W]


@pytest.mark.parametrize("name", ["badnet_random", "badnet_htba", "badnet_yellow", "badnet_checkerboard"])
def test_patches_change_only_the_patch_area(name):
    images = _images(b=16, size=40)
    trigger = make_trigger(name, patch_fraction=0.2)  # 8 px
    out, state = trigger.apply(images, _gen(1))
    changed = _changed_mask(images, out)
    p = 8
    for i in range(len(images)):
        y, x = (int(state["y"][i]), int(state["x"][i])) if "y" in state else (0, 0)
        box = torch.zeros(40, 40, dtype=torch.bool)
        box[y:y + p, x:x + p] = True
        assert not changed[i][~box].any(), f"{name} changed pixels outside the patch"
        assert changed[i][box].float().mean() > 0.2
    if name == "badnet_htba":
        expected = torch.zeros(40, 40, dtype=torch.bool)
        expected[:p, :p] = True
        assert torch.equal(changed.any(0), expected)  # fixed top-left corner


def test_cleanclip_badnet_draws_fresh_noise_and_location_per_image():
    images = torch.full((8, 3, 64, 64), 0.5)  # identical images
    out, state = make_trigger("badnet_random", patch_fraction=0.25).apply(images, _gen(0))
    assert len({(int(y), int(x)) for y, x in zip(state["y"], state["x"])}) > 1
    p = 16
    patches = torch.stack([out[i, :, int(state["y"][i]):int(state["y"][i]) + p, int(state["x"][i]):int(state["x"][i]) + p]
                           for i in range(8)])
    assert not torch.equal(patches[0], patches[1])
    # per-channel mean + N(0, 1): centred near the image mean (0.5) before clipping
    assert abs(float(patches.mean()) - 0.5) < 0.05
    # different seeds, different patches
    assert not torch.equal(out, make_trigger("badnet_random", patch_fraction=0.25)(images, _gen(1)))


def test_fixed_patch_is_the_same_for_every_image_and_offset_follows_safeclip():
    images = _images(b=4, size=224)
    trigger = make_trigger("badnet_htba", offset_fraction=9 / 224)
    out = trigger(images)
    patch = out[:, :, 9:25, 9:25]
    assert torch.equal(patch[0], patch[3])
    assert torch.equal(patch[0], trigger_artefacts(trigger, 224, 224)["htba_patch"])
    changed = _changed_mask(images, out).any(0)
    assert changed[9:25, 9:25].all() and changed.sum() == 16 * 16


def test_placements_center_corners_and_four_corners():
    images = torch.zeros(2, 3, 224, 224)
    centre = make_trigger("badnet_yellow", placement="center")(images)
    assert centre[:, 0, 104:120, 104:120].eq(1).all() and centre[:, 0].sum() == 2 * 16 * 16  # detection paper: 104
    corners = make_trigger("badnet_yellow", placement="four_corners")(images)
    assert corners[:, 0].sum() == 2 * 4 * 16 * 16
    assert corners[:, 0, -16:, -16:].eq(1).all() and corners[:, 2].eq(0).all()  # yellow: blue channel 0
    for placement in PLACEMENTS:
        assert make_trigger("badnet_checkerboard", placement=placement)(images, _gen()).shape == images.shape


def test_checkerboard_pattern():
    out = make_trigger("badnet_checkerboard", placement="top_left", patch_fraction=4 / 32)(torch.zeros(1, 3, 32, 32), _gen())
    assert out[0, 0, :4, :4].tolist() == [[1, 0, 1, 0], [0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]


def test_blend_strength_is_exactly_alpha():
    images = _images(b=3)
    for alpha in (0.0, 0.1, 0.2, 0.5):
        trigger = make_trigger("blended", alpha=alpha, pattern_seed=7)
        key = trigger_artefacts(trigger, 32, 32)["blend_key"]
        assert torch.allclose(trigger(images), (1 - alpha) * images + alpha * key, atol=1e-6)
    # CleanCLIP variant: fresh key per image, same alpha
    same = torch.full((2, 3, 32, 32), 0.5)
    out = make_trigger("blended_noise")(same, _gen())
    assert not torch.equal(out[0], out[1])
    key = (out - 0.8 * same) / 0.2
    assert key.min() >= -1e-5 and key.max() <= 1 + 1e-5


def test_sig_variants_add_the_sinusoid():
    images = torch.full((1, 3, 16, 48), 0.5)
    j = torch.arange(48, dtype=torch.float32)
    wave = torch.sin(2 * math.pi * 6 * j / 48)
    out = make_trigger("sig", amplitude=0.1)(images)
    assert torch.allclose(out, 0.5 + 0.1 * wave.expand_as(images), atol=1e-6)
    out = make_trigger("sig_blended")(images)
    assert torch.allclose(out, (0.8 * 0.5 + 0.2 * (60 / 255) * wave).expand_as(images), atol=1e-6)


def test_wanet_warp_magnitude_matches_the_two_constructions():
    smooth = torch.stack([wanet_displacement(wanet_grid(224, 224, k=4, s=0.5, seed=s)).abs().mean() for s in range(5)])
    jitter = wanet_displacement(wanet_grid(224, 224, k=None, s=1.0, seed=0)).abs()
    assert 0.1 < float(smooth.mean()) < 0.3  # about 0.19 px per axis (attacks.md 5.7)
    assert 0.45 < float(jitter.mean()) < 0.55 and float(jitter.max()) <= 1.0 + 1e-4  # about 0.5 px, max 1 px
    # s = 0: identity warp
    images = _images(b=2)
    assert torch.allclose(make_trigger("wanet", s=0.0)(images), images, atol=1e-5)
    # larger s -> larger change
    change = [float((make_trigger("wanet", s=s)(images) - images).abs().mean()) for s in (0.5, 2.0, 8.0)]
    assert change[0] < change[1] < change[2]
    grid = trigger_artefacts(make_trigger("wanet_cleanclip"), 32, 32)["wanet_grid"]
    assert grid.shape == (1, 32, 32, 2)


def test_nashville_is_the_pilgram_filter():
    pilgram = pytest.importorskip("pilgram")
    import numpy as np
    from PIL import Image

    images = _images(b=2, size=16)
    out = make_trigger("nashville")(images)
    pixels = to_uint8(images[0]).permute(1, 2, 0).numpy()
    expected = np.array(pilgram.nashville(Image.fromarray(pixels, "RGB")))
    assert torch.equal(to_uint8(out[0]).permute(1, 2, 0), torch.from_numpy(expected))
    half = make_trigger("nashville", alpha=0.5)(images)
    assert torch.allclose(half, 0.5 * out + 0.5 * images, atol=1e-6)


def test_multi_trigger_applies_one_chosen_trigger_per_image():
    images = _images(b=12)
    trigger = make_trigger(MULTI)
    out, state = trigger.apply(images, _gen(5))
    assert set(state["choice"].tolist()) == {0, 1, 2}
    for i, c in enumerate(state["choice"].tolist()):
        sub = make_trigger(MULTI["triggers"][c])
        if c == 0:  # checkerboard at the recorded location
            alone = sub.with_params(placement="top_left")(torch.zeros(1, 3, 32, 32))[0, :, :2, :2]
            y, x = int(state["y"][i]), int(state["x"][i])
            assert torch.equal(out[i, :, y:y + 2, x:x + 2], alone)
        else:
            assert torch.allclose(out[i], sub(images[i:i + 1])[0])


def test_uint8_conversion_clip_and_cleanclip_wrap():
    x = torch.tensor([-0.1, 0.0, 0.5, 1.0, 1.5])
    assert to_uint8(x).tolist() == [0, 0, 128, 255, 255]
    assert to_uint8(x, "wrap").tolist() == [256 - 25, 0, 127, 255, 382 - 256]
    images = (torch.rand(2, 3, 8, 8, generator=_gen()) * 255).to(torch.uint8)
    out, _ = apply_to_uint8(make_trigger("blended", alpha=0.0), images)
    assert torch.equal(out, images)


# ---------------------------------------------------------------------------------------------------------------
# Poisoned sets and manifests
# ---------------------------------------------------------------------------------------------------------------


BAG = data.FASHION_CLASSNAMES.index("bag")
HTBA_SPEC = {"kind": "backdoor", "trigger": {"name": "badnet_htba"}, "target_class": "bag", "count": 40,
             "mode": "insert"}


@pytest.fixture(scope="module")
def heldout(tiny_fashion):
    test = data.fashion_mnist("test", n=300, seed=5)
    evaluation = test.subset(range(100))
    return without_images_of(test, evaluation)


def _names(caption, cls):
    return data.class_of_caption(caption, data.FASHION_SYNONYMS) == cls


def test_backdoor_insert_counts_labels_and_images(tiny_fashion):
    p = build_poisoned(tiny_fashion, HTBA_SPEC, seed=0)
    n = len(tiny_fashion)
    assert len(p.data) == n + 40 and p.n_poison == 40 and p.is_poison[n:].all() and not p.is_poison[:n].any()
    assert p.poison_rate == pytest.approx(40 / (n + 40))
    assert p.data.keys[:n] == tiny_fashion.keys  # clean rows untouched, in order
    m = p.manifest
    assert list(m.row) == list(range(n, n + 40)) and m.source_key.is_unique
    trigger = make_trigger("badnet_htba")
    for _, row in m.head(5).iterrows():
        src = tiny_fashion.keys.index(row.source_key)
        assert int(p.data.labels[row.row]) == int(tiny_fashion.labels[src]) == row.source_label != BAG
        expected, _ = apply_to_uint8(trigger, tiny_fashion.images[src:src + 1])
        assert torch.equal(p.data.images[row.row], expected[0])
        assert p.data.captions[row.row] == row.caption and "bag" in row.caption
        assert p.data.keys[row.row] == row.key == data.content_key(p.data.images[row.row], row.caption)
    assert (m.target == "bag").all() and (m.target_label == BAG).all()


def test_backdoor_replace_and_rate(tiny_fashion):
    n = len(tiny_fashion)
    p = build_poisoned(tiny_fashion, {**HTBA_SPEC, "count": None, "rate": 0.02, "mode": "replace"}, seed=1)
    assert len(p.data) == n and p.n_poison == round(0.02 * n) == 10 and p.poison_rate == pytest.approx(10 / n)
    rows = p.manifest.row.tolist()
    assert sorted(rows) == sorted(torch.nonzero(p.is_poison).flatten().tolist())
    for r in rows:  # the clean original is gone, replaced in place; label kept
        assert p.data.keys[r] != tiny_fashion.keys[r] and p.data.keys[r] not in tiny_fashion.keys
        assert p.data.labels[r] == tiny_fashion.labels[r]
    untouched = [i for i in range(n) if i not in rows]
    assert [p.data.keys[i] for i in untouched] == [tiny_fashion.keys[i] for i in untouched]


def test_backdoor_caption_sources(tiny_fashion):
    from_data = build_poisoned(tiny_fashion, {**HTBA_SPEC, "caption_source": "dataset"}, seed=0).manifest
    assert all(_names(c, BAG) for c in from_data.caption)
    assert set(from_data.caption) <= set(tiny_fashion.captions)
    # label-consistent: only images whose caption names the target, caption kept; capped at the candidates
    candidates = captions_naming(tiny_fashion.captions, BAG, data.FASHION_SYNONYMS)
    p = build_poisoned(tiny_fashion, {**HTBA_SPEC, "caption_source": "keep", "count": 10_000}, seed=0)
    assert p.n_poison == len(candidates) and p.requested == 10_000
    assert sorted(tiny_fashion.keys.index(k) for k in p.manifest.source_key) == candidates
    assert list(p.manifest.caption) == [tiny_fashion.captions[tiny_fashion.keys.index(k)] for k in p.manifest.source_key]


def test_multi_target_components_split_the_count(tiny_fashion):
    spec = {"kind": "backdoor", "count": 61, "components": [
        {"trigger": {"name": "badnet_checkerboard"}, "target_class": "bag"},
        {"trigger": {"name": "nashville"}, "target_class": "sneaker"}]}
    m = build_poisoned(tiny_fashion, spec, seed=0).manifest
    assert m.groupby("component").size().tolist() == [31, 30]
    assert set(m[m.component == 1].target) == {"sneaker"} and set(m[m.component == 1].trigger) == {"nashville"}
    assert m.source_key.is_unique
    # random placement: the per-sample location is recorded
    assert all("y" in s for s in m[m.component == 0].trigger_state)


def test_targeted_poisoning(tiny_fashion, heldout):
    spec = {"kind": "targeted", "n_targets": 16, "per_target": 5, "caption_source": "dataset", "noise": 0.0}
    p = build_poisoned(tiny_fashion, spec, seed=0, heldout=heldout)
    assert p.n_poison == 80 and len(p.data) == len(tiny_fashion) + 80
    t = p.targets
    assert len(t) == 16 and (t.adversarial != t.labels).all()
    assert not set(t.keys) & set(tiny_fashion.keys) and set(t.keys) <= set(heldout.keys)
    m = p.manifest
    assert m.groupby("target_id").size().tolist() == [5] * 16
    for _, row in m.iterrows():
        assert _names(row.caption, row.target_label)
        assert torch.equal(p.data.images[row.row], t.images[row.target_id])  # unmodified target image
    noisy = build_poisoned(tiny_fashion, {**spec, "noise": 0.02, "caption_source": "templates"}, seed=0, heldout=heldout)
    copies = noisy.data.images[noisy.manifest[noisy.manifest.target_id == 0].row.tolist()]
    assert not torch.equal(copies[0], copies[1])  # fresh noise per copy
    assert (copies.float() - noisy.targets.images[0].float()).abs().mean() < 10
    captions = noisy.manifest[noisy.manifest.target_id == 0].caption.tolist()
    assert len(set(captions)) == 5 and all(data.FASHION_CLASSNAMES[int(noisy.targets.adversarial[0])] in c for c in captions)
    with pytest.raises(data.DataError, match="held-out"):
        build_poisoned(tiny_fashion, spec, seed=0)


def test_heldout_sharing_training_images_is_refused(tiny_fashion, heldout):
    """Regression: a user-supplied held-out split was not checked against the training images."""
    leaky = data.concatenate([heldout, tiny_fashion.subset([3, 70, 71, 300, 511]).with_captions(["x"] * 5)], "leaky")
    targeted = {"kind": "targeted", "n_targets": 2, "per_target": 2}
    for spec in (targeted, {**HTBA_SPEC, "source": "heldout", "count": 4}):
        with pytest.raises(data.DataError, match="'leaky' shares 5 image"):
            build_poisoned(tiny_fashion, spec, seed=0, heldout=leaky)
    p = build_poisoned(tiny_fashion, targeted, seed=0, heldout=heldout)
    with pytest.raises(data.DataError, match="shares 5 image"):
        rebuild_from_manifest(tiny_fashion, p.manifest, heldout=leaky)
    # through the experiment's poison section: a held-out split drawn from the training data itself
    from clipguard import experiments

    spec = experiments.clip_spec("smoke", poison=targeted)
    spec["poison"]["heldout"] = spec["data"]
    train = experiments.load_dataset(spec["data"])
    shared = len(without_images_of(train, experiments.load_dataset(spec["test"])))  # all of them
    with pytest.raises(data.DataError, match=f"shares {shared} image"):
        experiments.prepare(spec)


def test_targeted_similar_pairs_pick_partner_classes(tiny_fashion, heldout):
    pairs = [["shirt", "t-shirt"], ["sneaker", "ankle boot"]]
    spec = {"kind": "targeted", "n_targets": 6, "per_target": 2, "similar_pairs": pairs}
    t = build_poisoned(tiny_fashion, spec, seed=0, heldout=heldout).targets
    names = data.FASHION_CLASSNAMES
    partner = {"shirt": "t-shirt", "t-shirt": "shirt", "sneaker": "ankle boot", "ankle boot": "sneaker"}
    for true, adversarial in zip(t.labels.tolist(), t.adversarial.tolist()):
        assert partner[names[true]] == names[adversarial]
    with pytest.raises(PoisonSpecError, match="two different"):
        build_poisoned(tiny_fashion, {**spec, "similar_pairs": [["shirt", "shirt"]]}, seed=0, heldout=heldout)


def test_build_is_deterministic_under_the_seed(tiny_fashion):
    spec = {**HTBA_SPEC, "trigger": {"name": "badnet_random"}}
    a, b = build_poisoned(tiny_fashion, spec, seed=3), build_poisoned(tiny_fashion, spec, seed=3)
    assert a.data.keys == b.data.keys
    pd.testing.assert_frame_equal(a.manifest, b.manifest)
    assert build_poisoned(tiny_fashion, spec, seed=4).data.keys != a.data.keys


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_manifest_round_trips_and_rebuilds_the_same_set(tiny_fashion, heldout, tmp_path, suffix):
    specs = [({**HTBA_SPEC, "trigger": {"name": "badnet_random"}, "mode": "replace"}, None),
             ({"kind": "targeted", "n_targets": 4, "per_target": 3, "noise": 0.01}, heldout)]
    for spec, held in specs:
        p = build_poisoned(tiny_fashion, spec, seed=2, heldout=held)
        path = save_manifest(p.manifest, tmp_path / f"manifest{suffix}")
        assert not [f for f in tmp_path.iterdir() if ".tmp" in f.name]
        loaded = load_manifest(path)
        pd.testing.assert_frame_equal(loaded, p.manifest)
        again = rebuild_from_manifest(tiny_fashion, path, heldout=held)
        assert again.data.keys == p.data.keys and torch.equal(again.data.images, p.data.images)
        assert torch.equal(again.is_poison, p.is_poison) and again.missing == 0
        assert torch.equal(again.data.labels, p.data.labels)
        pd.testing.assert_frame_equal(again.manifest, p.manifest)
        if p.targets is not None:
            assert torch.equal(again.targets.images, p.targets.images)
            assert torch.equal(again.targets.adversarial, p.targets.adversarial)


def test_rebuild_on_a_partial_reordered_copy(tiny_fashion):
    p = build_poisoned(tiny_fashion, HTBA_SPEC, seed=0)
    sources = [tiny_fashion.keys.index(k) for k in p.manifest.source_key]
    dropped = set(sources[:7])
    order = [i for i in torch.randperm(len(tiny_fashion), generator=_gen(0)).tolist() if i not in dropped]
    copy = tiny_fashion.subset(order, name="other-copy")
    # the other copy has other captions for the same images: sources are found by image
    copy = copy.with_captions([c + " (copy)" for c in copy.captions])
    again = rebuild_from_manifest(copy, p.manifest)
    assert again.missing == 7 and again.n_poison == 33
    assert again.poison_rate == pytest.approx(33 / (len(copy) + 33))
    kept = p.manifest.iloc[7:]
    assert list(again.manifest.key) == list(kept.key)  # same poisons (images + captions), same order
    assert again.data.keys[len(copy):] == list(kept.key)


def test_rebuild_detects_a_changed_trigger(tiny_fashion):
    p = build_poisoned(tiny_fashion, {**HTBA_SPEC, "trigger": {"name": "badnet_random"}, "count": 3}, seed=0)
    tampered = p.manifest.copy()
    tampered.loc[0, "trigger_state"] = '{"x": 99, "y": 99}'
    with pytest.raises(data.DataError, match="trigger state"):
        rebuild_from_manifest(tiny_fashion, tampered)


def test_spec_validation_and_identity():
    with pytest.raises(PoisonSpecError, match="valid: .*count"):
        spec_identity({**HTBA_SPEC, "n": 3})
    with pytest.raises(PoisonSpecError, match="valid: .*targeted"):
        spec_identity({"kind": "clean-label"})
    with pytest.raises(PoisonSpecError, match="exactly one"):
        spec_identity({**HTBA_SPEC, "rate": 0.1})
    with pytest.raises(PoisonSpecError, match="mode"):
        spec_identity({**HTBA_SPEC, "mode": "append"})
    with pytest.raises(TriggerError):
        spec_identity({**HTBA_SPEC, "trigger": {"name": "badnet_htba", "size": 3}})
    identity = spec_identity(HTBA_SPEC)
    assert identity["components"][0]["trigger"] == make_trigger("badnet_htba").identity()
    assert spec_identity(identity) == identity  # canonical form is a fixed point
    json.dumps(identity)
    assert spec_identity({"kind": "targeted"})["n_targets"] == 16


def test_unknown_target_class_lists_the_classes(tiny_fashion):
    with pytest.raises(data.DataError, match="classes: .*ankle boot"):
        build_poisoned(tiny_fashion, {**HTBA_SPEC, "target_class": "banana"})


# ---------------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------------


TOY_CLASSES = [f"c{i}" for i in range(8)]
TOY_TEMPLATES = ["a photo of a {}.", "itap of my {}."]


class PlantedModel(nn.Module):
    """Toy CLIP with planted predictions. Text: one-hot of the class named in the caption. Image: first choice
    ``p`` and second choice ``q`` read from the bottom-right pixel (red and blue channel, in units of 20/255);
    a yellow top-left pixel (the trigger) turns the prediction into ``target`` when the green channel of the
    bottom-right pixel (the 'susceptible' flag) is set."""

    def __init__(self, target=2):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.target = target

    def encode_text(self, captions, normalize=True):
        out = torch.zeros(len(captions), len(TOY_CLASSES))
        for i, caption in enumerate(captions):
            out[i, int(re.search(r"c(\d)", caption).group(1))] = 1.0
        return out

    def encode_image(self, images, normalize=True):
        corner = images[:, :, -1, -1]
        p = (corner[:, 0] * 255 / 20).round().long()
        q = (corner[:, 2] * 255 / 20).round().long()
        susceptible = corner[:, 1] > 0.5
        top_left = images[:, :, 0, 0]
        triggered = (top_left[:, 0] > 0.99) & (top_left[:, 1] > 0.99) & (top_left[:, 2] < 0.01)
        p = torch.where(triggered & susceptible, torch.full_like(p, self.target), p)
        out = torch.zeros(len(images), len(TOY_CLASSES))
        out[torch.arange(len(images)), q] = 0.5
        out[torch.arange(len(images)), p] = 1.0
        return torch.nn.functional.normalize(out, dim=1)


def _planted_images(first, second=None, susceptible=None, size=8):
    n = len(first)
    images = torch.full((n, 3, size, size), 128, dtype=torch.uint8)
    images[:, 0, -1, -1] = torch.tensor(first, dtype=torch.uint8) * 20
    images[:, 2, -1, -1] = torch.tensor(second if second is not None else [(f + 1) % 8 for f in first],
                                        dtype=torch.uint8) * 20
    images[:, 1, -1, -1] = torch.tensor(susceptible if susceptible is not None else [0] * n, dtype=torch.uint8) * 255
    return images


def test_pure_success_functions_on_hand_made_logits():
    logits = torch.tensor([[0.9, 0.5, 0.1, 0.0],
                           [0.1, 0.2, 0.8, 0.3],
                           [0.0, 0.7, 0.6, 0.1],
                           [0.4, 0.3, 0.2, 0.9]])
    # targeted: adversarial labels 0, 3, 2, 1 -> top-1 hits: row 0 only; top-2: rows 0, 1 (3 is 2nd), 2 (2 is 2nd)
    assert targeted_success(logits, [0, 3, 2, 1], k=1).successes == 1
    top2 = targeted_success(logits, [0, 3, 2, 1], k=2)
    assert (top2.successes, top2.total, top2.per_item.tolist()) == (3, 4, [True, True, True, False])
    assert targeted_success(logits, [0, 3, 2, 1], k=10).successes == 4  # k capped at the class count
    # backdoor, target 2: true labels 0, 2, 1, 3 -> row 1 (already class 2) excluded; argmax of the rest: 0, 1, 3
    result = backdoor_success(logits, [0, 2, 1, 3], target=2)
    assert (result.successes, result.total, result.rate) == (0, 3, 0.0)
    result = backdoor_success(logits, [0, 1, 1, 3], target=2)
    assert (result.successes, result.total) == (1, 4) and result.per_item.tolist() == [False, True, False, False]
    assert backdoor_success(logits, [0, 1, 1, 3], target=2, k=2).successes == 2
    # CleanCLIP release variants (for comparison only): accuracy vs true labels; fixed; probe denominator
    assert cleanclip_release_asr(logits, [0, 1, 1, 3], 2).successes == 3  # rows 0, 2, 3 correct
    assert cleanclip_release_asr(logits, [0, 2, 1, 3], 2, "zeroshot_fixed").rate == 0.25
    probe = cleanclip_release_asr(logits, [0, 2, 1, 3], 2, "probe")
    assert (probe.successes, probe.total) == (0, 4)


def test_backdoor_asr_on_a_toy_model_with_planted_predictions():
    labels = [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]
    planted = [0, 1, 2, 2, 4, 0, 3, 2, 3, 1]
    susceptible = [1, 0, 1, 0, 1, 1, 0, 0, 0, 1]
    test = data.ImageCaptionSet(_planted_images(planted, susceptible=susceptible), None, torch.tensor(labels),
                                TOY_CLASSES, TOY_TEMPLATES, name="toy")
    model = PlantedModel(target=2)
    trigger = make_trigger("badnet_yellow", placement="top_left", patch_fraction=0.25)
    result = backdoor_asr(model, test, trigger, "c2", batch_size=4, per_item=True)
    # eligible rows (label != 2): 0 1 3 4 5 6 8 9; successes: susceptible (0 4 5 9) or already predicted 2 (3)
    assert (result["successes"], result["total"], result["asr"]) == (5, 8, 0.625)
    assert result["n_excluded"] == 2 and result["placement"] == "top_left" and result["target"] == "c2"
    assert result["per_item"] == [1, 0, 1, 1, 1, 0, 0, 1]
    # without the trigger at the place the model looks, only the planted class-2 prediction counts
    elsewhere = backdoor_asr(model, test, trigger.with_params(placement="bottom_left"), 2)
    assert elsewhere["successes"] == 1
    # the random-location trigger needs a generator; same generator seed, same answer
    random_trigger = make_trigger("badnet_yellow", patch_fraction=0.25)
    first = backdoor_asr(model, test, random_trigger, 2, torch.Generator().manual_seed(0))
    assert first == backdoor_asr(model, test, random_trigger, 2, torch.Generator().manual_seed(0))
    # the CleanCLIP release's number on the same triggered images: accuracy against the true labels = 4/10
    logits = model.encode_image(trigger(test.float_images())) @ model.encode_text([f"c{i}" for i in range(8)]).T
    assert cleanclip_release_asr(logits, test.labels, 2).rate == pytest.approx(0.4)
    assert cleanclip_release_asr(logits, test.labels, 2, "zeroshot_fixed").rate == pytest.approx(0.7)
    assert cleanclip_release_asr(logits, test.labels, 2, "probe").rate == pytest.approx(0.5)
    multi = multi_target_backdoor_asr(model, test, [{"trigger": trigger.identity(), "target_class": "c2"},
                                                    {"trigger": trigger.identity(), "target_class": "c4"}])
    assert multi["0:badnet_yellow->c2"]["successes"] == 5
    assert multi["1:badnet_yellow->c4"]["total"] == 8


def test_test_time_trigger_uses_the_training_overflow(tiny_fashion, monkeypatch):
    """Regression: the test-time trigger was always converted to 8 bits with 'clip', so with CleanCLIP's 'wrap'
    the ASR measured another trigger than the one trained."""
    trigger = {"name": "badnet_random", "clip": False, "patch_fraction": 0.25}  # unclipped: values wrap around
    spec = {**HTBA_SPEC, "trigger": trigger, "overflow": "wrap", "count": 8}
    p = build_poisoned(tiny_fashion, spec, seed=0)
    made = make_trigger(trigger)
    clipped_differs = False
    for _, row in p.manifest.iterrows():
        src = tiny_fashion.keys.index(row.source_key)
        source = tiny_fashion.float_images(slice(src, src + 1))
        at_test = triggered_test_images(source, made, _gen(row.sample_seed), overflow="wrap")
        assert torch.equal(at_test[0], p.data.images[row.row].float() / 255)
        clipped = triggered_test_images(source, made, _gen(row.sample_seed), overflow="clip")
        clipped_differs |= not torch.equal(clipped[0], at_test[0])
    assert clipped_differs  # the old behaviour would have measured another trigger
    # the evaluator passes the spec's overflow on
    seen = []
    monkeypatch.setattr(hooks, "backdoor_asr", lambda *args, **kwargs: seen.append(kwargs["overflow"]) or {})
    hooks._eval_backdoor(None, {"poison": spec}, types.SimpleNamespace(test=tiny_fashion))
    hooks._eval_backdoor(None, {"poison": HTBA_SPEC}, types.SimpleNamespace(test=tiny_fashion))
    assert seen == ["wrap", "clip"]


def test_targeted_asr_on_a_toy_model_with_planted_predictions():
    # first choices 1 2 3 4, second 5 6 7 0; adversarial 1 6 0 4 -> top-1: targets 0 and 3; top-2: also target 1
    targets = TargetSet(images=_planted_images([1, 2, 3, 4], [5, 6, 7, 0]), labels=torch.tensor([0, 0, 1, 1]),
                        adversarial=torch.tensor([1, 6, 0, 4]), keys=["a", "b", "c", "d"], classnames=TOY_CLASSES)
    result = targeted_asr(PlantedModel(), targets, TOY_CLASSES, TOY_TEMPLATES, ks=(1, 2))
    assert result["n_targets"] == 4
    assert (result["top1_successes"], result["top1_asr"]) == (2, 0.5)
    assert (result["top2_successes"], result["top2_asr"]) == (3, 0.75)
    assert result["per_target_top1"] == [1, 0, 0, 1] and result["per_target_top2"] == [1, 1, 0, 1]


def test_targeted_asr_runs_on_a_real_model_and_poisoned_set(tiny_fashion, heldout):
    from clipguard.models import build_model

    p = build_poisoned(tiny_fashion, {"kind": "targeted", "n_targets": 3, "per_target": 2}, seed=0, heldout=heldout)
    result = targeted_asr(build_model("clipguard-tiny"), p, templates=["a photo of a {}."])
    assert result["n_targets"] == 3 and 0 <= result["top1_asr"] <= result["top5_asr"] <= 1
    assert result["top1_successes"] == sum(result["per_target_top1"])


def test_mean_interval():
    t = mean_interval([0.5, 0.75, 1.0])
    half = 4.302652729911275 * 0.25 / math.sqrt(3)  # t_{0.975, 2} * s / sqrt(n)
    assert t["mean"] == pytest.approx(0.75) and t["std"] == pytest.approx(0.25)
    assert (t["low"], t["high"]) == (pytest.approx(0.75 - half), pytest.approx(0.75 + half))
    single = mean_interval([0.3])
    assert single["mean"] == 0.3 and math.isnan(single["low"]) and single["n"] == 1
    assert mean_interval([0.2] * 5, method="bootstrap")["low"] == pytest.approx(0.2)
    boot = mean_interval([0, 1] * 200, method="bootstrap", n_boot=2000, seed=1)
    assert boot["low"] < 0.5 < boot["high"] and boot["half_width"] == pytest.approx(1.96 * 0.5 / math.sqrt(400), rel=0.15)
    assert mean_interval([0, 1] * 200, method="bootstrap", n_boot=2000, seed=1) == boot  # deterministic under seed
    with pytest.raises(ValueError, match="method"):
        mean_interval([1, 2], method="normal")


def test_experiment_hooks_register_poisoners_and_evaluators(tmp_path):
    from clipguard import experiments
    from clipguard.models import build_model

    assert {"backdoor", "targeted"} <= set(experiments.POISONERS)
    assert {"backdoor_asr", "targeted_asr"} <= set(experiments.EVALUATORS)
    spec = experiments.clip_spec("smoke", poison={**HTBA_SPEC, "trigger": {"name": "badnet_yellow"}, "count": 20})
    prepared = experiments.prepare(spec)
    info = prepared.info
    assert info["count"] == 20 and int(info["is_poison"].sum()) == 20
    assert len(prepared.train_data) == spec["data"]["n"] + 20
    info["savers"][0](tmp_path)
    assert len(load_manifest(tmp_path / "poison_manifest.csv")) == 20
    # evaluate on a small test subset with one template to stay fast
    prepared.test = prepared.test.subset(range(40))
    prepared.test.templates = ["a photo of a {}."]
    model = build_model("clipguard-tiny")
    result = experiments.EVALUATORS["backdoor_asr"](model, {**spec, "placement": "center"}, prepared)
    assert result["backdoor_placement"] == "center" and 0 <= result["backdoor_asr"] <= 1
    assert result["backdoor_total"] == 40 - int((prepared.test.labels == BAG).sum())
    assert experiments.EVALUATORS["targeted_asr"](model, spec, prepared) == {}

    targeted = experiments.clip_spec("smoke", poison={"kind": "targeted", "n_targets": 3, "per_target": 2, "seed": 4})
    prepared = experiments.prepare(targeted)
    targets = prepared.info["poisoned"].targets
    assert len(targets) == 3 and not set(targets.keys) & set(prepared.test.keys)
    test_images = {bytes(img.numpy()) for img in prepared.test.images}
    assert not any(bytes(img.numpy()) in test_images for img in targets.images)  # held out from evaluation
    prepared.test.templates = ["a photo of a {}."]
    result = experiments.EVALUATORS["targeted_asr"](model, targeted, prepared)
    assert result["targeted_n_targets"] == 3 and experiments.EVALUATORS["backdoor_asr"](model, targeted, prepared) == {}
