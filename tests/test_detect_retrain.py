"""Detect and retrain: the filter removes the top-ranked pairs before training, keyed on the scoring run."""

import numpy as np
import pytest
import torch

from clipguard import experiments, scenarios
from clipguard.defenses.detect_retrain import FilterConfig, top_fraction_mask


def test_top_fraction_mask_removes_the_highest_scores():
    keep = top_fraction_mask(np.array([0.1, 5.0, 0.3, 4.0, 0.2]), 0.4)
    assert keep.tolist() == [True, False, True, False, True]
    assert top_fraction_mask(np.zeros(4), 0.0).all()
    with pytest.raises(ValueError, match="not finite"):
        top_fraction_mask(np.array([0.0, np.nan]), 0.5)
    with pytest.raises(ValueError, match="fraction"):
        FilterConfig(fraction=1.0)
    with pytest.raises(ValueError, match="unknown field"):
        FilterConfig.from_spec({"name": "detector", "by": {}, "detectr": "dao"})


def test_filtered_run_trains_without_the_removed_pairs(store):
    attacked = scenarios.attack_spec("smoke", scenarios.backdoor_poison("smoke"), track_per_sample=False)
    attacked["data"]["n"], attacked["test"]["n"], attacked["probe_train"] = 256, 200, None
    attacked["train"]["batch_size"] = 64
    attacked["evaluate"] = ["zeroshot", "backdoor_asr"]
    spec = scenarios.defended(attacked, "dao_filter", fraction=0.1, batch_size=None, reference="global")
    assert spec["filter"]["by"] == attacked and "clipguard.detect" in experiments.spec_modules(spec)
    scoring = experiments.run(attacked, store, progress=False)
    filtered = experiments.run(spec, store, progress=False)
    n = scoring.metrics["n_train"]
    assert filtered.metrics["filter_removed"] == round(0.1 * n)
    assert filtered.metrics["n_train"] == n - filtered.metrics["filter_removed"]
    assert (filtered.metrics["filter_poisons_removed"] + filtered.metrics["filter_poisons_left"]
            == scoring.metrics["poison_count"])
    assert filtered.config["filter"]["by"] == {"run": scoring.id}
    assert "backdoor_asr" in filtered.metrics
    again = experiments.run(spec, store, progress=False)
    assert again.id == filtered.id
