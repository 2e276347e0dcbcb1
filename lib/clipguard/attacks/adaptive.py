"""Adaptive attacks: poisons built to get past one defence each (the "Which defence should I use?" question).

Each is a poison-spec option of the ``backdoor`` / ``targeted`` poisoners (:mod:`.specs`) or a trigger, so it runs
through the same poisoners, manifests and ASR evaluators as the attacks it adapts. :data:`ADAPTIVE_ATTACKS` names
the option sets; :func:`adaptive_spec` applies one to a spec.

* ``safeclip_aware`` (``caption_style="true_and_target"``): captions name the image's true class *and* the target
  ("a photo of a shirt and a bag."). Targets SafeCLIP's 1-D GMM on the image-caption cosine: a caption that
  describes the image keeps a high cosine, so the pair should land in the safe set and train with the CLIP loss.
* ``roclip_pool_aware`` (``distinct_captions=1``): every poison of a target shares one caption. Targets RoCLIP's
  caption pool: the repeated caption recurs in the pool, so that a poisoned image's nearest pool caption tends to
  be another poison's (the same) caption.
* ``dense_cluster`` (``duplicates_per_poison=17``, ``duplicate_noise=0.01``; backdoors only): 17 noisy copies of
  each poisoned image. Targets the kNN detectors (k-dist, SLOF, DAO, LID at k = 16): a poison's 16 nearest
  neighbours are meant to be its own copies (in pixel space they are), a dense region rather than an outlier.
* BadCLIP (Liang et al., CVPR 2024; :func:`optimise_patch`, :func:`badclip_trigger`, trigger ``stored_patch``): a
  patch optimised on a clean surrogate CLIP so that triggered images embed near the target's text. Targets
  CleanCLIP fine-tuning: the trigger rides on features the clean model already ties to the target, which clean
  fine-tuning does not unlearn.

BadCLIP needs a model, so it is a trigger rather than an option set::

    trigger = badclip_trigger(surrogate, images, "bag", templates, patch_side=4, steps=200, seed=0)
    spec = {"kind": "backdoor", "trigger": trigger, "target_class": "bag", "count": 40}

The mechanisms are checked on known answers (tests/test_attacks_adaptive.py); whether each beats its defence
after training is an experiment, not a property of the poisons. Simplification: BadCLIP's loss also pulls
triggered images towards natural target-class images and away from the clean image (a triplet term);
:func:`optimise_patch` keeps only the text term (cosine to the target's text).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .specs import poison_spec
from .triggers import PLACEMENTS, _paste, _positions, make_trigger, to_uint8

__all__ = ["ADAPTIVE_ATTACKS", "adaptive_spec", "optimise_patch", "badclip_trigger"]

#: name -> poison-spec options of an adaptive attack (see the module docstring for what each targets).
ADAPTIVE_ATTACKS: dict[str, dict] = {
    "safeclip_aware": {"caption_source": "templates", "caption_style": "true_and_target"},
    "roclip_pool_aware": {"distinct_captions": 1},
    "dense_cluster": {"duplicates_per_poison": 17, "duplicate_noise": 0.01},
}


def adaptive_spec(spec: dict, attack: str, **options) -> dict:
    """``spec`` (a poison spec dict) with the options of the adaptive ``attack`` (and ``options`` on top); the
    result is checked (e.g. ``dense_cluster`` needs a backdoor in insert mode)."""
    if attack not in ADAPTIVE_ATTACKS:
        raise ValueError(f"unknown adaptive attack {attack!r}; valid: {sorted(ADAPTIVE_ATTACKS)}")
    out = {**spec, **ADAPTIVE_ATTACKS[attack], **options}
    poison_spec(out)
    return out


def optimise_patch(model, images: torch.Tensor, target_text_embedding: torch.Tensor, patch_side: int,
                   steps: int = 100, seed: int = 0, lr: float = 0.05, placement: str = "center",
                   batch_size: int = 64) -> torch.Tensor:
    """A BadCLIP-style patch (Liang et al., CVPR 2024): a ``patch_side`` px patch optimised so that ``images``
    (float ``[N, 3, H, W]`` in [0, 1], clean images of a surrogate's data) with the patch pasted at ``placement``
    embed close to ``target_text_embedding`` (e.g. the target's zero-shot class embedding) under ``model``, a clean
    surrogate CLIP (``encode_image`` on [0, 1] images). Adam on the patch's logits (values stay in (0, 1)) maximises
    the mean cosine over mini-batches of ``batch_size``; initial patch N(0.5, 0.25) clipped, as BadCLIP's. All
    draws (initial patch, mini-batches, random placements) come from ``seed``. Returns the uint8 patch
    ``[3, patch_side, patch_side]`` (pass ``patch.tolist()`` to the ``stored_patch`` trigger). The model is left
    unchanged (no parameter gradients are kept)."""
    if not (isinstance(images, torch.Tensor) and images.ndim == 4 and images.shape[1] == 3
            and images.is_floating_point()):
        raise ValueError(f"images must be a float tensor [N, 3, H, W] in [0, 1], got {getattr(images, 'shape', None)}")
    h, w = images.shape[-2:]
    if not 1 <= patch_side <= min(h, w):
        raise ValueError(f"patch_side must be in 1..{min(h, w)}, got {patch_side}")
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    if steps < 0 or batch_size < 1:
        raise ValueError(f"need steps >= 0 and batch_size >= 1, got {steps}, {batch_size}")
    generator = torch.Generator().manual_seed(int(seed))
    device = next(model.parameters()).device
    target = F.normalize(target_text_embedding.detach().float().reshape(-1), dim=0).to(device)
    start = (0.5 + 0.25 * torch.randn(3, patch_side, patch_side, generator=generator)).clamp(0.01, 0.99)
    logits = torch.logit(start).to(device).requires_grad_(True)
    optimiser = torch.optim.Adam([logits], lr=lr)
    was_training = model.training
    model.eval()
    try:
        for _ in range(steps):
            rows = torch.randperm(len(images), generator=generator)[:batch_size]
            batch = images[rows].to(device)
            corners = _positions(placement, len(batch), h, w, patch_side, 0.0, generator)
            patch = torch.sigmoid(logits)
            for ys, xs in corners:
                batch = _paste(batch.clone(), patch, ys, xs)
            features = model.encode_image(batch, normalize=True).float()
            loss = -(features @ target).mean()
            (logits.grad,) = torch.autograd.grad(loss, [logits])
            optimiser.step()
    finally:
        model.train(was_training)
    return to_uint8(torch.sigmoid(logits.detach()).cpu())


def badclip_trigger(model, images: torch.Tensor, target_class: str, templates: Sequence[str], patch_side: int,
                    steps: int = 100, seed: int = 0, placement: str = "center", **options) -> dict:
    """The ``stored_patch`` trigger dict of a patch optimised (:func:`optimise_patch`) towards the zero-shot class
    embedding of ``target_class`` (the mean of its normalised ``templates`` embeddings) on the surrogate ``model``."""
    from ..evaluate import zero_shot_classifier

    target = zero_shot_classifier(model, [target_class], list(templates))[0]
    patch = optimise_patch(model, images, target, patch_side, steps, seed, placement=placement, **options)
    return make_trigger("stored_patch", patch=patch.tolist(), placement=placement).identity()
