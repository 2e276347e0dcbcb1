"""Pinned fingerprints of small poisoned sets: stored runs are keyed on the data fingerprint, so refactoring the
attacks package must leave the generated poisons bit-identical (and the manifests, which rebuild them, unchanged).

The pinned values were computed with the code before the split of ``attacks/poison.py``; a change here means
every stored poisoned run is retrained: only update them for a deliberate change of the poisons, and say so."""

import hashlib

import pytest
import torch

from clipguard import data
from clipguard.attacks import build_poisoned, without_images_of

HTBA = {"kind": "backdoor", "trigger": {"name": "badnet_htba"}, "target_class": "bag", "count": 40}
SPECS = {
    "htba_insert": (HTBA, 0),
    "random_replace_rate": ({**HTBA, "trigger": {"name": "badnet_random"}, "count": None, "rate": 0.02,
                             "mode": "replace"}, 1),
    "checkerboard_dataset_captions": ({**HTBA, "trigger": {"name": "badnet_checkerboard"},
                                       "caption_source": "dataset"}, 2),
    "label_consistent": ({**HTBA, "caption_source": "keep", "count": 15}, 0),
    "multi_component": ({"kind": "backdoor", "count": 21, "components": [
        {"trigger": {"name": "badnet_checkerboard"}, "target_class": "bag"},
        {"trigger": {"name": "wanet"}, "target_class": "sneaker"}]}, 3),
    "unclipped_wrap": ({**HTBA, "trigger": {"name": "badnet_random", "clip": False, "patch_fraction": 0.25},
                        "overflow": "wrap", "count": 12}, 4),
    "blended_noise_heldout": ({**HTBA, "trigger": {"name": "blended_noise"}, "source": "heldout", "count": 10}, 5),
    "targeted_dataset": ({"kind": "targeted", "n_targets": 4, "per_target": 5}, 0),
    "targeted_templates_noise": ({"kind": "targeted", "n_targets": 3, "per_target": 4, "caption_source": "templates",
                                  "noise": 0.02}, 6),
    "targeted_similar_pairs": ({"kind": "targeted", "n_targets": 3, "per_target": 2,
                                "similar_pairs": [["shirt", "t-shirt"], ["sneaker", "ankle boot"]]}, 7),
}

#: name -> (data fingerprint of the poisoned set, sha256 prefix of its manifest as CSV)
PINNED = {
    "blended_noise_heldout": ("5f001bf5a117b1b6", "5d21afb237fe4ce5"),
    "checkerboard_dataset_captions": ("3e466ea4fdadad3a", "ff4e763c916147e6"),
    "htba_insert": ("f5482e4c73e273b4", "825ea870c450c8ff"),
    "label_consistent": ("a8ee630f7d67d815", "44ccc44d2d22cf23"),
    "multi_component": ("e01bff92c95db308", "e30ba08ea457d2ff"),
    "random_replace_rate": ("0bebf97d57e68d7f", "721e892644d3c580"),
    "targeted_dataset": ("2af710c7aba0d897", "817623d453223e12"),
    "targeted_similar_pairs": ("a7f0d42d519bf51a", "763bcfb6f13267c4"),
    "targeted_templates_noise": ("2911547cd2a75c3a", "ccb7d2bfe2507ac4"),
    "unclipped_wrap": ("b7c115b7a9f266ad", "b9be6343706b129c"),
}


@pytest.fixture(scope="module")
def heldout(tiny_fashion):
    test = data.fashion_mnist("test", n=300, seed=5)
    return without_images_of(test, test.subset(range(100)))


#: Manifest columns added after the pins were taken (with the value every pinned row must hold).
LATER_COLUMNS = {"duplicate": 0}


def _digests(poisoned):
    frame = poisoned.manifest
    for column, value in LATER_COLUMNS.items():
        assert (frame[column] == value).all(), column
    manifest = hashlib.sha256(frame.drop(columns=list(LATER_COLUMNS)).to_csv(index=False).encode()).hexdigest()[:16]
    return poisoned.data.fingerprint(), manifest


@pytest.mark.parametrize("name", sorted(SPECS))
def test_poisoned_sets_are_bit_identical_to_the_pinned_ones(name, tiny_fashion, heldout):
    spec, seed = SPECS[name]
    poisoned = build_poisoned(tiny_fashion, spec, seed=seed, heldout=heldout)
    assert poisoned.n_poison > 0
    fingerprint, manifest = _digests(poisoned)
    assert fingerprint == PINNED[name][0], f"{name}: the poisoned data changed"
    assert manifest == PINNED[name][1], f"{name}: the poison manifest changed"
