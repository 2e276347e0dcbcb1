"""RoCLIP with distinct-match negatives (the comparison chapter's intervention), against a naive reference."""

import math

import pytest
import torch
import torch.nn.functional as F

from clipguard import experiments, profiles, scenarios
from clipguard.defenses.roclip import roclip_loss
from clipguard.utility_probes import distinct_match_loss, distinct_spec


def _features(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=1), F.normalize(torch.randn(n, d, generator=g), dim=1)


def test_distinct_matches_give_roclips_loss():
    images, texts = _features(6, 4, 0)
    scale = torch.tensor(7.0)
    assert distinct_match_loss(images, texts, torch.arange(6), scale) == pytest.approx(
        float(roclip_loss(images, texts, scale)))


def test_shared_matches_are_not_negatives():
    images, pool = _features(5, 4, 1)
    match = torch.tensor([0, 2, 0, 1, 2])
    texts = pool[match]
    scale = torch.tensor(5.0)
    logits = (scale * images @ texts.T).tolist()
    total = 0.0
    for i in range(5):  # naive: for each image / caption, the softmax over the entries with a different match
        keep = [j for j in range(5) if j == i or match[j] != match[i]]
        total += -logits[i][i] + math.log(sum(math.exp(logits[i][j]) for j in keep))
        total += -logits[i][i] + math.log(sum(math.exp(logits[j][i]) for j in keep))
    assert float(distinct_match_loss(images, texts, match, scale)) == pytest.approx(total / 10, rel=1e-5)
    with pytest.raises(ValueError, match="one match per image"):
        distinct_match_loss(images, texts, match[:3], scale)


def test_distinct_spec_changes_only_the_objective_name():
    config = profiles.resolve("smoke")
    roclip = scenarios.defended(scenarios.attack_spec(config, scenarios.targeted_poison(config)), "roclip")
    spec = distinct_spec(roclip)
    assert spec["objective"] == {**roclip["objective"], "name": "roclip_distinct"}
    assert {k: v for k, v in spec.items() if k != "objective"} == {k: v for k, v in roclip.items() if k != "objective"}
    assert "clipguard.utility_probes" in experiments.spec_modules(spec)
    with pytest.raises(ValueError, match="needs a RoCLIP spec"):
        distinct_spec(scenarios.attack_spec(config, None))
