import dataclasses

import pytest
import torch
import torch.nn.functional as F

from clipguard import data, models
from clipguard.defenses import CaptionPool, RoCLIPConfig, RoCLIPObjective, nearest_in_pool, roclip_loss
from clipguard.losses import clip_loss
from clipguard.train import TrainConfig, train


def test_pool_is_fifo_and_bounded():
    pool = CaptionPool(size=5, dim=1)
    pool.push(torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([1, 2, 3]))
    assert pool.embeddings().flatten().tolist() == [1, 2, 3]
    pool.push(torch.tensor([[4.0], [5.0], [6.0]]), torch.tensor([4, 5, 6]))
    assert pool.embeddings().flatten().tolist() == [2, 3, 4, 5, 6]
    assert pool.entry_categories().tolist() == [2, 3, 4, 5, 6]
    pool.push(torch.arange(7.0, 14.0)[:, None])  # more than the pool holds: only the newest 5 stay
    assert pool.embeddings().flatten().tolist() == [9, 10, 11, 12, 13]
    assert pool.entry_categories().tolist() == [-1] * 5
    restored = CaptionPool(5, 1)
    restored.load_state_dict(pool.state_dict())
    assert torch.equal(restored.embeddings(), pool.embeddings())


def test_matching_equals_brute_force_nearest_neighbour():
    g = torch.Generator().manual_seed(0)
    queries = F.normalize(torch.randn(50, 8, generator=g), dim=1)
    pool = F.normalize(torch.randn(300, 8, generator=g), dim=1)
    brute = torch.tensor([min(range(300), key=lambda p: float(((q - pool[p]) ** 2).sum())) for q in queries])
    assert torch.equal(nearest_in_pool(queries, pool), brute)
    assert torch.equal(nearest_in_pool(queries, pool), (queries @ pool.T).argmax(1))  # unit vectors


def test_loss_with_own_captions_in_the_pool_equals_clip_loss():
    g = torch.Generator().manual_seed(1)
    text = F.normalize(torch.randn(16, 32, generator=g), dim=1)
    image = F.normalize(text + 0.05 * torch.randn(16, 32, generator=g), dim=1)  # each image nearest its caption
    pool = CaptionPool(16, 32)
    pool.push(text)
    matched = pool.embeddings()[nearest_in_pool(image, pool.embeddings())]
    scale = torch.tensor(20.0)
    assert torch.allclose(roclip_loss(image, matched, scale), clip_loss(image, text, scale))


def test_roclip_epochs_follow_k():
    objective = RoCLIPObjective(RoCLIPConfig(every=3))
    assert [e for e in range(1, 10) if objective.is_roclip_epoch(e)] == [3, 6, 9]


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="pool_init"):
        RoCLIPConfig(pool_init="zeros")


def test_roclip_trains_logs_matching_and_resumes_exactly(tmp_path):
    dataset = data.fashion_mnist("train", n=256, seed=0)
    categories = torch.tensor([data.class_of_caption(c, data.FASHION_SYNONYMS) for c in dataset.captions])
    poison = torch.zeros(len(dataset), dtype=torch.bool)
    poison[:8] = True
    adversarial = torch.where(poison, (categories + 1) % 10, torch.full_like(categories, -1))
    config = TrainConfig(epochs=2, batch_size=64, lr=2e-3, warmup_steps=2, progress=False)

    def objective():
        return RoCLIPObjective(RoCLIPConfig(pool_size=100, every=1, augment=False), categories=categories,
                               poison_mask=poison, adversarial_category=adversarial)

    full = train(models.build_model("clipguard-tiny", seed=0), dataset, objective(), config)
    epochs = full.epochs()
    assert all(e["roclip_epoch"] == 1.0 for e in epochs)
    assert 0.0 <= epochs[-1]["clean_matched_same_category"] <= 1.0
    assert "poison_matched_adversarial_category" in epochs[-1]
    train(models.build_model("clipguard-tiny", seed=0), dataset, objective(), config, run_dir=tmp_path,
          stop_after_epoch=1)
    resumed = train(models.build_model("clipguard-tiny", seed=0), dataset, objective(), config, run_dir=tmp_path)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    # matched pool captions and the batch's own in one pass: row-sparse embedding updates give the dense weights
    dense = train(models.build_model("clipguard-tiny", seed=0), dataset, objective(),
                  dataclasses.replace(config, sparse_embedding=False))
    for (name, a), b in zip(full.model.state_dict().items(), dense.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_objective_specs_build_the_registered_objectives():
    from clipguard import experiments
    from clipguard.augment import CaptionAugmenter, ImagePolicy

    dataset = data.shapes(n=50, seed=0, image_size=16)
    poison = torch.zeros(50, dtype=torch.bool)
    poison[:3] = True
    objective = experiments.OBJECTIVES["roclip"]({"name": "roclip", "pool_fraction": 0.1, "every": 2}, dataset,
                                                 {"is_poison": poison, "seed": 3})
    assert isinstance(objective, RoCLIPObjective)
    assert objective.config.pool_entries(len(dataset)) == 5 and objective.config.every == 2
    assert isinstance(objective.image_augment, ImagePolicy) and isinstance(objective.text_augment, CaptionAugmenter)
    assert (objective.adversarial_category[3:] == -1).all()
    plain = experiments.OBJECTIVES["clip"]({"name": "clip"}, dataset, {})
    assert plain.image_augment is None and plain.text_augment is None
    with pytest.raises(ValueError, match="pool_sise"):
        experiments.OBJECTIVES["roclip"]({"name": "roclip", "pool_sise": 3}, dataset, {})


def test_roclip_spec_writes_the_paper_defaults_out():
    from clipguard.augment import ImagePolicy
    from clipguard.defenses import SMALL_IMAGE_POLICY, RoCLIPConfig, augmented_clip_spec, roclip_spec
    from clipguard.experiments import augmentation_hooks

    assert roclip_spec() == {"name": "roclip", "every": 3, "pool_fraction": 0.02, "pool_size": None,
                             "pool_init": "captions", "refresh_in_clip_epochs": True, "augment": True,
                             "image_policy": SMALL_IMAGE_POLICY, "caption_resample": True}
    assert roclip_spec(every=3) == roclip_spec()  # one canonical spec: chapters share the stored run
    image_hook, _ = augmentation_hooks(RoCLIPConfig.from_spec(roclip_spec()), seed=0)
    assert image_hook == ImagePolicy(scale=(0.8, 1.0), jitter_p=0.5, brightness=0.3, contrast=0.3, saturation=0.3,
                                     hue=0.0)
    assert augmented_clip_spec()["augment"] is True
    assert roclip_spec(augment=False)["augment"] is False
    with pytest.raises(ValueError, match="evry"):
        roclip_spec(evry=2)


def test_caption_categories_follow_class_words():
    from clipguard.data import caption_categories

    dataset = data.fashion_mnist("test", n=20, seed=0)
    categories = caption_categories(dataset)
    assert (categories == dataset.labels).float().mean() > 0.9
