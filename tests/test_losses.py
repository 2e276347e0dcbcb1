import math

import open_clip
import torch
import torch.nn.functional as F

from clipguard.losses import clip_loss, clip_loss_per_sample


def _random_pairs(n=16, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(n, d, generator=g), dim=1), F.normalize(torch.randn(n, d, generator=g), dim=1))


def test_clip_loss_equals_open_clip():
    image, text = _random_pairs()
    scale = torch.tensor(14.3)
    reference = open_clip.ClipLoss()(image, text, scale)
    assert torch.allclose(clip_loss(image, text, scale), reference, atol=1e-6)


def test_clip_loss_equals_naive_formula():
    image, text = _random_pairs(n=5, d=3, seed=1)
    s = 7.0
    total = 0.0
    for j in range(5):
        total -= math.log(math.exp(s * image[j] @ text[j]) / sum(math.exp(s * image[j] @ text[k]) for k in range(5)))
        total -= math.log(math.exp(s * image[j] @ text[j]) / sum(math.exp(s * image[k] @ text[j]) for k in range(5)))
    assert abs(clip_loss(image, text, torch.tensor(s)).item() - total / 10) < 1e-5


def test_per_sample_loss_averages_to_clip_loss():
    image, text = _random_pairs(seed=2)
    scale = torch.tensor(30.0)
    per_sample = clip_loss_per_sample(image, text, scale)
    assert per_sample.shape == (16,)
    assert torch.allclose(per_sample.mean(), clip_loss(image, text, scale), atol=1e-6)


def test_perfect_alignment_gives_low_loss():
    image, _ = _random_pairs(n=4, d=64, seed=3)
    assert clip_loss(image, image, torch.tensor(100.0)) < clip_loss(image, image.roll(1, 0), torch.tensor(100.0))
