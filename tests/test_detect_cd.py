"""Cognitive Distillation (clipguard.detect.cognitive_distillation): a planted trigger-dominated encoder, invariance
to batching, use on a clipguard model, the registry entry, validation."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipguard.detect import auroc, cognitive_distillation, score, score_many
from clipguard.detect.cognitive_distillation import CognitiveDistillation, total_variation

PATTERN = (torch.arange(9).view(3, 3) % 2).float()        # 3x3 checkerboard in the top-left corner


class TriggerDominatedEncoder(torch.nn.Module):
    """A planted backdoored encoder on 16 px images: a 4x4-pooled linear map of the whole image, except that the
    3x3 corner trigger switches the output to a fixed vector (a sigmoid of the patch's mismatch). Only the 9
    trigger pixels matter for a triggered image, every pixel for a clean one."""

    def __init__(self, dim: int = 32, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("target", torch.randn(dim, generator=gen))
        self.proj = torch.nn.Parameter(torch.randn(48, dim, generator=gen))

    def encode_image(self, x, normalize=True):
        clean = F.avg_pool2d(x, 4).flatten(1) @ self.proj
        mismatch = (x[:, :, :3, :3] - PATTERN).pow(2).mean((1, 2, 3))
        on = torch.sigmoid(100 * (0.05 - mismatch))[:, None]
        features = on * self.target + (1 - on) * clean
        return F.normalize(features, dim=-1) if normalize else features


def _planted(n=16, n_triggered=3, seed=1):
    x = torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    x[:n_triggered, :, :3, :3] = PATTERN
    return x, np.r_[np.ones(n_triggered), np.zeros(n - n_triggered)].astype(int)


def test_triggered_images_need_small_masks_and_score_highest():
    x, y = _planted()
    encoder = TriggerDominatedEncoder()
    result = cognitive_distillation(encoder, x, return_masks=True)        # the released CLIP settings
    assert auroc(y, result.score) > 0.9
    assert set(np.argsort(-result.score)[:3]) == {0, 1, 2}
    np.testing.assert_allclose(result.score, -result.mask_l1)
    assert result.masks.shape == (16, 1, 16, 16) and ((result.masks >= 0) & (result.masks <= 1)).all()
    # the triggered masks keep the trigger: the corner is the most retained region
    corner = result.masks[:3, 0, :3, :3].mean()
    assert corner > result.masks[:3, 0, 3:, 3:].mean()
    # the encoder's weights got no gradient, and its mode is restored
    assert encoder.proj.grad is None and encoder.training


def test_masks_do_not_depend_on_batching():
    """Same masks in batches of 6 and of 4 + 2, up to float rounding of the batched products (which Adam's
    near-sign steps amplify to ~1e-4 relative)."""
    x, _ = _planted(n=6, n_triggered=2)
    encoder = TriggerDominatedEncoder()
    whole = cognitive_distillation(encoder, x, steps=20, batch_size=6, seed=3).score
    small = cognitive_distillation(encoder, x, steps=20, batch_size=4, seed=3).score
    np.testing.assert_allclose(small, whole, rtol=2e-3)
    other_seed = cognitive_distillation(encoder, x, steps=20, seed=4).score
    assert not np.allclose(other_seed, whole)


def test_total_variation_hand_computed():
    m = torch.zeros(1, 1, 3, 3)
    m[0, 0, 1, 1] = 1.0                        # four neighbour differences of 1
    assert total_variation(m).item() == pytest.approx(4 / 9)


def test_on_a_clipguard_model_and_through_score_many():
    from clipguard.models import build_model

    model = build_model("clipguard-tiny", seed=0)
    images = torch.rand(3, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(0))
    emb = model.encode_image(images, normalize=False).detach().numpy()
    options = {"steps": 3, "batch_size": 2}
    scores = score_many(["cognitive_distillation", "k_distance"], emb, k=1, model=model, images=images,
                        cd_options=options)
    direct = cognitive_distillation(model, images, seed=0, **options).score
    np.testing.assert_allclose(scores["cognitive_distillation"], direct)
    assert scores["k_distance"].shape == (3,)
    assert (direct < 0).all() and (direct >= -model.image_size ** 2).all()
    assert all(p.grad is None for p in model.parameters())
    # a dataset with float_images is read batch by batch
    class Images:
        def __len__(self):
            return len(images)

        def float_images(self, index):
            return images[index]

    np.testing.assert_allclose(cognitive_distillation(model, Images(), seed=0, **options).score, direct)


def test_validation():
    x, _ = _planted(n=4)
    with pytest.raises(ValueError, match="needs model"):
        score("cognitive_distillation", images=x)
    with pytest.raises(TypeError, match="encode_image"):
        cognitive_distillation(torch.nn.Linear(2, 2), x)
    bad = x.clone()
    bad[2, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="first bad image: 2"):
        cognitive_distillation(TriggerDominatedEncoder(), bad, steps=1)
    with pytest.raises(ValueError, match="float"):
        cognitive_distillation(TriggerDominatedEncoder(), torch.zeros(2, 3, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="steps"):
        CognitiveDistillation(steps=0)
