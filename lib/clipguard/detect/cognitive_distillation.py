"""Cognitive Distillation (Huang, Ma, Erfani, Bailey, ICLR 2023; detectors.md Sections 3 and 5.3): the detection
paper's strongest baseline. Per image, learn the smallest one-channel mask that keeps the image encoder's output:

    minimise  mean_d | f(x ⊙ m + (1 - m) ⊙ δ) - f(x) |  +  alpha ||m||_1  +  beta TV(m)

with ``m = sigmoid(2 θ) = (tanh θ + 1) / 2`` (the released parameterisation; θ starts at 1, m at 0.88), ``δ`` a
random colour per image and channel, drawn afresh at every step, ``TV`` the sum of squared neighbour differences
over ``c h w`` (c = 1), Adam on θ for a fixed number of steps. A backdoored encoder needs only the trigger to
reproduce its output, so backdoor images need a SMALL mask: the score is ``-||m||_1`` (higher = more suspicious,
as every detector here). The released detector returned ``+||m||_1`` un-negated (detectors.md 5.3).

Defaults are the released CLIP settings (``extract_bd_scores.py``: 100 steps, lr 0.1, betas (0.1, 0.1),
gamma 0.001, beta 100) on un-normalised image features. Each image's loss is summed (not averaged) over the
batch, so with the colours drawn per image index every mask, hence every score, is the same whatever the batch
size and the order of the images.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["CognitiveDistillation", "CDResult", "cognitive_distillation", "total_variation"]


@dataclass(frozen=True)
class CognitiveDistillation:
    """Settings of :func:`cognitive_distillation` (defaults: the released CLIP run)."""

    steps: int = 100
    lr: float = 0.1
    betas: tuple[float, float] = (0.1, 0.1)
    alpha: float = 1e-3      # weight of ||m||_1 (the released "gamma")
    beta: float = 100.0      # weight of the total variation of the mask
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if self.lr <= 0 or self.alpha < 0 or self.beta < 0:
            raise ValueError(f"need lr > 0, alpha >= 0, beta >= 0; got {self.lr}, {self.alpha}, {self.beta}")


@dataclass
class CDResult:
    score: np.ndarray          # [N] -||m||_1, higher = more suspicious
    mask_l1: np.ndarray        # [N] ||m||_1 (sum over the mask's pixels)
    masks: torch.Tensor | None  # [N, 1, H, W] when asked for
    seconds: float


def total_variation(mask: torch.Tensor) -> torch.Tensor:
    """Per image: sum of squared differences between vertical and horizontal neighbours, over ``c h w``."""
    _, c, h, w = mask.shape
    tv_h = (mask[:, :, 1:, :] - mask[:, :, :-1, :]).pow(2).sum(dim=(1, 2, 3))
    tv_w = (mask[:, :, :, 1:] - mask[:, :, :, :-1]).pow(2).sum(dim=(1, 2, 3))
    return (tv_h + tv_w) / (c * h * w)


def _encoder(model):
    """``images -> features`` from ``model.encode_image``, un-normalised when it takes ``normalize``."""
    if not hasattr(model, "encode_image"):
        raise TypeError(f"cognitive distillation needs a model with encode_image, got {type(model).__name__}")
    try:
        takes_normalize = "normalize" in inspect.signature(model.encode_image).parameters
    except (TypeError, ValueError):
        takes_normalize = False
    return (lambda x: model.encode_image(x, normalize=False)) if takes_normalize else model.encode_image


def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def cognitive_distillation(model, images, settings: CognitiveDistillation | None = None, *,
                           return_masks: bool = False, **overrides) -> CDResult:
    """Cognitive Distillation masks of ``images`` under ``model.encode_image``: a float ``[N, C, H, W]`` tensor in
    the model's input range ([0, 1] for clipguard models), or a dataset with ``float_images(slice)`` (read batch by
    batch). ``settings`` or keyword overrides of its fields. The model is put in eval mode and its weights get no
    gradients; the colours ``δ`` come from a generator seeded by ``settings.seed`` (one draw for all images,
    indexed by image)."""
    settings = settings or CognitiveDistillation()
    if overrides:
        settings = CognitiveDistillation(**{**settings.__dict__, **overrides})
    read = images.float_images if hasattr(images, "float_images") else None
    if read is None:
        images = torch.as_tensor(images)
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(f"images must be a float [N, C, H, W] tensor, got {images.dtype} {tuple(images.shape)}")
        read = images.__getitem__
    n = len(images)
    encode, device = _encoder(model), _device(model)
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    gen = torch.Generator().manual_seed(settings.seed)
    colours = None
    masks, started = [], time.perf_counter()
    try:
        for start in range(0, n, settings.batch_size):
            x = read(slice(start, start + settings.batch_size))
            if not torch.isfinite(x).all():
                bad = start + int(torch.nonzero(~torch.isfinite(x).flatten(1).all(1))[0])
                raise ValueError(f"images hold NaN or inf (first bad image: {bad})")
            if colours is None:        # δ per image, step and channel
                colours = torch.rand(n, settings.steps, x.shape[1], generator=gen)
            masks.append(_distil(encode, x.to(device), colours[start:start + len(x)].to(device), settings).cpu())
    finally:
        if hasattr(model, "train"):
            model.train(was_training)
    mask = torch.cat(masks) if masks else torch.empty(0, 1, 0, 0)
    l1 = mask.abs().sum(dim=(1, 2, 3)).double().numpy()
    return CDResult(-l1, l1, mask if return_masks else None, time.perf_counter() - started)


def _distil(encode, x: torch.Tensor, colours: torch.Tensor, s: CognitiveDistillation) -> torch.Tensor:
    """Masks ``[B, 1, H, W]`` of one batch; ``colours`` ``[B, steps, C]``."""
    with torch.no_grad():
        target = encode(x).detach()
    theta = torch.ones(x.shape[0], 1, *x.shape[2:], device=x.device, requires_grad=True)
    optimiser = torch.optim.Adam([theta], lr=s.lr, betas=s.betas)
    for step in range(s.steps):
        with torch.enable_grad():
            m = torch.sigmoid(2 * theta)                                # = (tanh θ + 1) / 2
            delta = colours[:, step, :, None, None]
            features = encode(x * m + (1 - m) * delta)
            loss = ((features - target).abs().mean(1) + s.alpha * m.abs().sum(dim=(1, 2, 3))
                    + s.beta * total_variation(m))
            theta.grad, = torch.autograd.grad(loss.sum(), theta)        # per image: its own loss's gradient
        optimiser.step()
    return torch.sigmoid(2 * theta).detach()
