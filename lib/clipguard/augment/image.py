"""Image augmentation for RoCLIP / SafeCLIP / CleanCLIP (methods.md section 2).

Image policy (RoCLIP's ``--cross_aug`` and SafeCLIP's views): horizontal flip -> random resized crop -> colour
jitter (p = 0.8) -> grayscale (p = 0.2) -> Gaussian blur, on float images in [0, 1] (``[C,H,W]`` or ``[B,C,H,W]``).
Two engines give the same distribution:

* ``"batched"`` (default): every parameter is drawn from the caller's ``torch.Generator`` (global RNG untouched),
  then the whole batch is transformed at once: flip and resized crop as two batched matrix products with the
  antialiased bilinear weights, colour jitter as one blend per step (hue only on the images whose step it is),
  grayscale as a select, blur as two more batched products (its row and column filters, the reflected border
  folded in). Each step reproduces the corresponding torchvision v2 kernel to float rounding
  (``tests/test_augment_image.py`` checks this against ``torchvision.transforms.v2.functional`` image by image).
  This engine replaced one that resized each crop separately: same parameters from the same seed, pixels within
  ~5e-6 of it (float rounding, and no hue round trip when the policy's hue strength is 0, which ColorJitter skips
  too), so seeded runs differ from earlier ones in the last bits; so do they since the blur became two products
  in place of a grouped 2-D convolution (pixels within ~3e-7; 1.4x faster with the crop changes at 2 threads,
  ``benchmarks/bench_augment.py``).
* ``"torchvision"``: the literal ``torchvision.transforms.v2`` pipeline applied image by image, its global-RNG draws
  confined by :func:`torch.random.fork_rng` and seeded per image from the generator (slower: one Python call chain
  per image).

Scaling to small images (the reference pipeline is for 224 px):

==============================  ==============================  ==============================================
choice                          reference (224 px)              here (``ImagePolicy()``)
==============================  ==============================  ==============================================
crop scale                      (0.08, 1)                       (0.5, 1): a 0.08 crop of a 32 px image is a
                                                                9 px patch, which destroys the object; the
                                                                reference value is one argument away
                                                                (``ImagePolicy.reference()``)
blur kernel                     21 (~ 0.1 x side)               largest odd number <= 0.1 x side, at least 3
blur sigma                      U(0.1, 2.0)                     U(0.1, 2.0) x side / 224
==============================  ==============================  ==============================================

CleanCLIP's augmented view: torchvision ``AutoAugment`` (ImageNet policy) on uint8, see :class:`AutoAugmentImages`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["ImagePolicy", "augment_images", "sample_image_params", "apply_image_params", "AutoAugmentImages",
           "autoaugment_images", "blur_kernel_size"]


_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale


def blur_kernel_size(side: int) -> int:
    """Largest odd kernel <= 0.1 x side, at least 3 (224 px -> 21, the reference value; 32 px -> 3)."""
    k = int(0.1 * side)
    if k % 2 == 0:
        k -= 1
    return max(3, k)


@dataclass(frozen=True)
class ImagePolicy:
    """RoCLIP / SafeCLIP image augmentation (methods.md 2.1) with sizes scaled to the image.

    ``size``: output side (None: the input's side). ``scale``/``ratio``: RandomResizedCrop area and aspect ranges.
    ``blur_kernel``/``blur_sigma``: None scales the reference (kernel 21, sigma U(0.1, 2.0) at 224 px) to the output
    side. ``engine``: ``"batched"`` (fast) or ``"torchvision"`` (literal v2 transforms per image); same
    distribution. Calling the policy, ``policy(images, generator)``, is :func:`augment_images` (the training
    hook signature of :class:`clipguard.train.ClipObjective`)."""

    size: int | None = None
    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.5
    contrast: float = 0.5
    saturation: float = 0.5
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_kernel: int | None = None
    blur_sigma: tuple[float, float] | None = None
    engine: str = "batched"

    def __post_init__(self) -> None:
        if self.engine not in ("batched", "torchvision"):
            raise ValueError(f"engine must be 'batched' or 'torchvision', got {self.engine!r}")
        if not (0 < self.scale[0] <= self.scale[1] <= 1):
            raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {self.scale}")
        if not (0 < self.ratio[0] <= self.ratio[1]):
            raise ValueError(f"ratio must satisfy 0 < lo <= hi, got {self.ratio}")
        if not (0 <= self.hue <= 0.5) or min(self.brightness, self.contrast, self.saturation) < 0:
            raise ValueError("jitter strengths must be >= 0 and hue in [0, 0.5]")
        if self.blur_kernel is not None and (self.blur_kernel < 1 or self.blur_kernel % 2 == 0):
            raise ValueError(f"blur_kernel must be a positive odd number, got {self.blur_kernel}")

    @classmethod
    def reference(cls, size: int | None = None, **overrides) -> "ImagePolicy":
        """The released code's pipeline: crop scale (0.08, 1); kernel and sigma still scaled to the side (at
        224 px: kernel 21, sigma U(0.1, 2.0), exactly the reference)."""
        return cls(size=size, scale=(0.08, 1.0), **overrides)

    def kernel_size(self, side: int) -> int:
        return self.blur_kernel if self.blur_kernel is not None else blur_kernel_size(side)

    def sigma_range(self, side: int) -> tuple[float, float]:
        if self.blur_sigma is not None:
            return tuple(self.blur_sigma)
        return (0.1 * side / 224, 2.0 * side / 224)

    def torchvision_transform(self, side: int):
        """The pipeline as a ``torchvision.transforms.v2.Compose`` for output side ``side`` (uses the global RNG)."""
        from torchvision.transforms import v2

        return v2.Compose([
            v2.RandomHorizontalFlip(self.flip_p),
            v2.RandomResizedCrop(side, scale=self.scale, ratio=self.ratio, antialias=True),
            v2.RandomApply([v2.ColorJitter(self.brightness, self.contrast, self.saturation, self.hue)],
                           p=self.jitter_p),
            v2.RandomGrayscale(self.grayscale_p),
            v2.GaussianBlur(self.kernel_size(side), self.sigma_range(side)),
        ])

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return augment_images(images, generator, self)


def _as_float_batch(images: torch.Tensor) -> tuple[torch.Tensor, bool, bool]:
    if images.ndim not in (3, 4):
        raise ValueError(f"expected images [C,H,W] or [B,C,H,W], got shape {tuple(images.shape)}")
    single = images.ndim == 3
    batch = images.unsqueeze(0) if single else images
    was_uint8 = batch.dtype == torch.uint8
    if was_uint8:
        batch = batch.float().div_(255)
    elif not batch.is_floating_point():
        raise ValueError(f"expected float images in [0, 1] or uint8, got {images.dtype}")
    return batch, single, was_uint8


def _restore(batch: torch.Tensor, single: bool, was_uint8: bool) -> torch.Tensor:
    if was_uint8:
        batch = batch.mul(255).round_().clamp_(0, 255).to(torch.uint8)
    return batch[0] if single else batch


def augment_images(images: torch.Tensor, generator: torch.Generator, policy: ImagePolicy | None = None
                   ) -> torch.Tensor:
    """Augment every image independently; reproducible given the generator's state; global RNG untouched.

    images: float in [0, 1] (or uint8, returned as uint8), ``[C,H,W]`` or ``[B,C,H,W]``, on any device (parameters
    are drawn on the CPU). Returns the same layout with side ``policy.size`` (default: unchanged)."""
    policy = policy or ImagePolicy()
    batch, single, was_uint8 = _as_float_batch(images)
    if batch.shape[0] == 0:
        return images
    side = policy.size or batch.shape[-1]
    if policy.engine == "torchvision":
        out = _augment_torchvision(batch, generator, policy, side)
    else:
        params = sample_image_params(batch.shape[0], batch.shape[-2], batch.shape[-1], policy, generator, side)
        out = apply_image_params(batch, params, policy)
    return _restore(out, single, was_uint8)


def _per_image_global_rng(images: torch.Tensor, generator: torch.Generator, fn: Callable) -> list:
    """Apply ``fn`` image by image with the global CPU RNG seeded per image from ``generator``, then restored."""
    seeds = torch.randint(0, 2**62, (images.shape[0],), generator=generator).tolist()
    out = []
    with torch.random.fork_rng(devices=[]):
        for image, seed in zip(images, seeds):
            torch.default_generator.manual_seed(seed)
            out.append(fn(image))
    return out


def _augment_torchvision(batch: torch.Tensor, generator: torch.Generator, policy: ImagePolicy, side: int
                         ) -> torch.Tensor:
    transform = policy.torchvision_transform(side)
    return torch.stack(_per_image_global_rng(batch, generator, transform))


def sample_image_params(n: int, height: int, width: int, policy: ImagePolicy, generator: torch.Generator,
                        side: int | None = None) -> dict[str, torch.Tensor]:
    """Draw every random parameter of ``n`` images (same distribution as torchvision's v2 transforms).

    Keys: ``flip`` [n] bool; ``box`` [n, 4] (top, left, height, width); ``jitter`` [n] bool; ``factors`` [n, 4]
    (brightness, contrast, saturation, hue); ``order`` [n, 4] permutation of the four jitter operations;
    ``gray`` [n] bool; ``sigma`` [n]; ``side`` output side."""
    side = side or width
    g = generator

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=torch.float64)

    flip = torch.rand(n, generator=g) < policy.flip_p
    # RandomResizedCrop.get_params: up to 10 tries of (area, log-aspect); first fit wins, else a centre crop.
    tries = 10
    area = height * width * uniform(policy.scale[0], policy.scale[1], n, tries)
    aspect = torch.exp(uniform(math.log(policy.ratio[0]), math.log(policy.ratio[1]), n, tries))
    w = torch.round(torch.sqrt(area * aspect))
    h = torch.round(torch.sqrt(area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)
    w = w.gather(1, first).squeeze(1).long()
    h = h.gather(1, first).squeeze(1).long()
    fitted = fits.any(dim=1)
    u_top, u_left = torch.rand(2, n, generator=g, dtype=torch.float64)
    top = torch.floor(u_top * (height - h + 1)).long()
    left = torch.floor(u_left * (width - w + 1)).long()
    if not bool(fitted.all()):
        in_ratio = width / height
        if in_ratio < policy.ratio[0]:
            fw, fh = width, int(round(width / policy.ratio[0]))
        elif in_ratio > policy.ratio[1]:
            fh, fw = height, int(round(height * policy.ratio[1]))
        else:
            fw, fh = width, height
        w = torch.where(fitted, w, torch.full_like(w, fw))
        h = torch.where(fitted, h, torch.full_like(h, fh))
        top = torch.where(fitted, top, torch.full_like(top, (height - fh) // 2))
        left = torch.where(fitted, left, torch.full_like(left, (width - fw) // 2))
    box = torch.stack([top, left, h, w], dim=1)

    jitter = torch.rand(n, generator=g) < policy.jitter_p
    factors = torch.stack([
        uniform(max(0.0, 1 - policy.brightness), 1 + policy.brightness, n),
        uniform(max(0.0, 1 - policy.contrast), 1 + policy.contrast, n),
        uniform(max(0.0, 1 - policy.saturation), 1 + policy.saturation, n),
        uniform(-policy.hue, policy.hue, n),
    ], dim=1).float()
    order = torch.rand(n, 4, generator=g).argsort(dim=1)
    gray = torch.rand(n, generator=g) < policy.grayscale_p
    lo, hi = policy.sigma_range(side)
    sigma = uniform(lo, hi, n).float()
    return {"flip": flip, "box": box, "jitter": jitter, "factors": factors, "order": order, "gray": gray,
            "sigma": sigma, "side": torch.tensor(side)}


def _window_weights(lengths: torch.Tensor, size: int, out: int) -> torch.Tensor:
    """``[k, out, size]``: entry i resizes a window of ``lengths[i]`` pixels (taps 0..length-1) to ``out`` pixels
    with antialiased bilinear interpolation, the weights of PyTorch's ``_upsample_bilinear2d_aa`` (what
    torchvision's ``resized_crop(..., antialias=True)`` runs): a triangle filter of half-width max(1, length / out)
    around each output pixel's centre, truncated to the window as the kernel truncates it, normalised to sum 1."""
    length = lengths.double().view(-1, 1, 1)
    scale = length / out
    support = scale.clamp(min=1.0)
    centre = scale * (torch.arange(out, dtype=torch.float64).view(1, -1, 1) + 0.5)
    first = (centre - support + 0.5).trunc().clamp(min=0)
    stop = torch.minimum((centre + support + 0.5).trunc(), length)
    tap = torch.arange(size, dtype=torch.float64).view(1, 1, -1)
    weights = (1 - ((tap - centre + 0.5) / support).abs()).clamp(min=0)
    weights = torch.where((tap >= first) & (tap < stop), weights, 0.0)
    total = weights.sum(dim=2, keepdim=True)
    return (weights / torch.where(total == 0, 1.0, total)).float()


@functools.lru_cache(maxsize=16)
def _window_table(size: int, out: int) -> torch.Tensor:
    """``[size + 1, out, size]``: :func:`_window_weights` of every window length 0..size (read-only, cached)."""
    return _window_weights(torch.arange(size + 1), size, out)


def _resample_weights(start: torch.Tensor, length: torch.Tensor, size: int, out: int, mirrored: torch.Tensor
                      ) -> torch.Tensor:
    """``[n, out, size]`` weights that resize the window ``[start, start + length)`` of each image's rows (or
    columns) of ``size`` pixels to ``out`` pixels; ``mirrored`` images are read flipped (a flip before the crop)."""
    pixel = torch.arange(size).expand(len(start), size)
    pixel = torch.where(mirrored.view(-1, 1), size - 1 - pixel, pixel)
    tap = pixel - start.view(-1, 1)  # position inside the window
    weights = _window_table(size, out)[length]
    weights = weights.gather(2, tap.clamp(0, size - 1).unsqueeze(1).expand(-1, out, -1))
    return weights * (tap >= 0).unsqueeze(1)  # taps past the window's end already have weight 0


def _flip_and_resized_crop(x: torch.Tensor, box: torch.Tensor, flip: torch.Tensor, side: int) -> torch.Tensor:
    """Horizontal flip then resized crop of every image, as two batched matrix products (rows, then columns)."""
    height, width = x.shape[-2:]
    top, left, h, w = box.unbind(dim=1)
    rows = _resample_weights(top, h, height, side, torch.zeros_like(flip)).to(x.device)  # [n, side, H]
    columns = _resample_weights(left, w, width, side, flip).to(x.device)  # [n, side, W]
    return _separable(x, rows, columns)


def _separable(x: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """``rows[i] @ x[i, c] @ columns[i].T`` for every image i and channel c: ``[n, C, H, W]`` -> ``[n, C, R, K]``
    for ``rows`` ``[n, R, H]`` and ``columns`` ``[n, K, W]``; two contiguous batched products, no transposed
    copies of the images."""
    n, channels, height, width = x.shape
    by_row = torch.bmm(rows.repeat_interleave(channels, dim=0), x.reshape(n * channels, height, width))
    out = torch.bmm(by_row.view(n, channels * rows.shape[1], width), columns.transpose(1, 2))
    return out.view(n, channels, rows.shape[1], columns.shape[1])


def _luma(x: torch.Tensor) -> torch.Tensor:
    """[N,3,H,W] -> [N,1,H,W] luma as torchvision's rgb_to_grayscale computes it; [N,1,H,W] unchanged."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(dim=1)
    return r.mul(_GRAY_WEIGHTS[0]).add_(g, alpha=_GRAY_WEIGHTS[1]).add_(b, alpha=_GRAY_WEIGHTS[2]).unsqueeze(1)


_HUE_OFFSETS = torch.tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1)  # n of the red, green and blue channels


def _hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of ``[N,3,H,W]`` images by ``f`` turns (one per image) in the HSV hexcone, as torchvision's
    adjust_hue: keep value v = max and chroma c = max - min, shift the hue h (in sixths of a turn) and rebuild each
    channel as ``v - c * clamp(min(k, 4 - k), 0, 1)`` with ``k = (n + h) mod 6``, n = 5, 3, 1 for r, g, b."""
    v, largest = x.max(dim=1)  # ties go to the first channel: red, then green (torchvision's order)
    c = v - x.amin(dim=1)
    inverse = torch.where(c == 0, 1.0, c).reciprocal_()
    # h = (next channel - the one after) / c + 2 x (index of the largest channel): (g-b)/c, (b-r)/c + 2, (r-g)/c + 4
    differences = x.roll(-1, dims=1) - x.roll(-2, dims=1)
    h = differences.gather(1, largest.unsqueeze(1)).squeeze(1).mul_(inverse).add_(largest, alpha=2)
    k = (h.add_(6 * f.view(-1, 1, 1)).unsqueeze(1) + _HUE_OFFSETS.to(x.device)).remainder_(6)
    return v.unsqueeze(1) - c.unsqueeze(1) * torch.minimum(k, 4 - k).clamp_(0, 1)


_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = range(4)  # torchvision's ColorJitter numbering (``order``)


def _jitter_enabled(policy: ImagePolicy, channels: int) -> torch.Tensor:
    """Which of the four operations run: torchvision's ColorJitter skips one whose strength is 0 (its factor
    range is the single neutral value); saturation and hue leave one-channel images alone."""
    return torch.tensor([policy.brightness > 0, policy.contrast > 0, policy.saturation > 0 and channels == 3,
                         policy.hue > 0 and channels == 3])


def _color_jitter(x: torch.Tensor, order: torch.Tensor, factors: torch.Tensor, policy: ImagePolicy) -> torch.Tensor:
    """ColorJitter on every image, each applying the four operations in its own ``order`` with its ``factors``.

    At step s every image runs its s-th operation: brightness, contrast and saturation are one blend for the whole
    batch, ``lerp(reference, x, factor)`` with reference 0, the mean luma or the luma image (factor 1 leaves an
    image as it is); hue runs on the images whose s-th operation it is."""
    device = x.device
    enabled = _jitter_enabled(policy, x.shape[1])
    op = torch.where(enabled[order], order, -1)  # [n, 4]: the operation of each step, -1 for none
    blend = (op >= 0) & (op != _HUE)
    factor = torch.where(blend, factors.gather(1, op.clamp(min=0)), 1.0).to(device)
    contrast, saturation, hue = op == _CONTRAST, op == _SATURATION, op == _HUE
    blend_steps, luma_steps, hue_steps = (m.any(dim=0).tolist() for m in (blend, contrast | saturation, hue))
    contrast, saturation = contrast.float().to(device), saturation.float().to(device)
    for step in range(4):
        if blend_steps[step]:
            reference = torch.zeros((), device=device)
            if luma_steps[step]:
                luma = _luma(x)
                mean = luma.mean(dim=(1, 2, 3), keepdim=True)
                reference = torch.addcmul(mean * contrast[:, step].view(-1, 1, 1, 1), luma,
                                          saturation[:, step].view(-1, 1, 1, 1))
            x = torch.lerp(reference, x, factor[:, step].view(-1, 1, 1, 1)).clamp_(0, 1)
        if hue_steps[step]:
            rows = hue[:, step].nonzero().squeeze(1)
            shifted = _hue(x.index_select(0, rows.to(device)), factors[rows, _HUE].to(device))
            x = x.index_copy(0, rows.to(device), shifted)
    return x


#: Blur weights below this are set to 0: they change a pixel in [0, 1] by less than 2^-64, and products with them
#: can be subnormal numbers, which the CPU handles many times slower.
_NEGLIGIBLE_WEIGHT = 2.0**-64


def _gaussian_blur(x: torch.Tensor, kernel: int, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian blur with a per-image sigma and reflect padding: torchvision's gaussian_blur (a kernel that is the
    outer product of a softmax of the squared offsets over sigma) computed as its two one-dimensional passes, each
    a matrix with the reflected border folded in, applied by :func:`_separable`."""
    side_h, side_w = x.shape[-2:]
    limit = (kernel - 1) / (2.0 * math.sqrt(2.0))
    offsets = torch.linspace(-limit, limit, kernel)
    weights = torch.softmax(-(offsets / sigma.view(-1, 1)) ** 2, dim=1)  # [n, k]
    weights = torch.where(weights < _NEGLIGIBLE_WEIGHT, 0.0, weights)
    rows = _reflected_filter(weights, side_h).to(x.device)
    columns = rows if side_w == side_h else _reflected_filter(weights, side_w).to(x.device)
    return _separable(x, rows, columns)


def _reflected_filter(weights: torch.Tensor, side: int) -> torch.Tensor:
    """``[n, side, side]``: each row applies the odd filter ``weights[i]`` (``[n, k]``) centred on its pixel, taps
    outside the image reflected inward (torch's ``reflect`` padding: -1 -> 1, side -> side - 2)."""
    n, kernel = weights.shape
    if kernel // 2 >= side:
        raise ValueError(f"blur kernel {kernel} needs images larger than {kernel // 2} px, got {side} px")
    source = torch.arange(side).view(-1, 1) + torch.arange(kernel).view(1, -1) - kernel // 2  # [side, k]
    source = source.abs()
    source = torch.where(source >= side, 2 * (side - 1) - source, source)
    matrix = torch.zeros(n, side, side)
    return matrix.scatter_add_(2, source.expand(n, side, kernel), weights.unsqueeze(1).expand(n, side, kernel))


def apply_image_params(batch: torch.Tensor, params: dict[str, torch.Tensor], policy: ImagePolicy) -> torch.Tensor:
    """Apply drawn parameters to float images ``[B,C,H,W]`` in [0, 1] (C = 1 or 3), the whole batch at once:
    flip and resized crop as two batched matrix products, colour jitter and grayscale as batched arithmetic, blur
    as two more batched matrix products."""
    if batch.ndim != 4 or batch.shape[1] not in (1, 3):
        raise ValueError(f"expected images [B,C,H,W] with 1 or 3 channels, got shape {tuple(batch.shape)}")
    side = int(params["side"])
    x = _flip_and_resized_crop(batch, params["box"], params["flip"], side)
    rows = params["jitter"].nonzero().squeeze(1)  # jitter only the images drawn for it
    if len(rows) == len(x):
        x = _color_jitter(x, params["order"], params["factors"], policy)
    elif len(rows):
        jittered = _color_jitter(x.index_select(0, rows.to(x.device)), params["order"][rows], params["factors"][rows],
                                 policy)
        x = x.index_copy(0, rows.to(x.device), jittered)
    gray = params["gray"]
    if bool(gray.any()) and x.shape[1] == 3:
        x = torch.where(gray.to(x.device).view(-1, 1, 1, 1), _luma(x), x)
    return _gaussian_blur(x, policy.kernel_size(side), params["sigma"])


@dataclass(frozen=True)
class AutoAugmentImages:
    """CleanCLIP's augmented view: torchvision ``AutoAugment`` with a named policy (``imagenet``, ``cifar10``,
    ``svhn``) on uint8 images; a fresh draw per image. Call as ``aug(images, generator)``."""

    policy: str = "imagenet"

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return autoaugment_images(images, generator, self.policy)


def autoaugment_images(images: torch.Tensor, generator: torch.Generator, policy: str = "imagenet") -> torch.Tensor:
    """AutoAugment every image independently (float [0,1] images are quantised to uint8 and back, as a PIL
    pipeline would). Reproducible given the generator; global RNG untouched.

    Each image draws its sub-policy, coin flips and signs as torchvision's ``AutoAugment.forward`` would with the
    global RNG seeded by a per-image seed from ``generator``; images that drew the same operation and magnitude
    are then transformed together in one batched call of torchvision's kernel (the result equals torchvision on
    each image, tested; about 2x faster on a batch of 128 at 32 px, ``benchmarks/bench_augment.py``)."""
    from torchvision.transforms import v2

    policies = {"imagenet": v2.AutoAugmentPolicy.IMAGENET, "cifar10": v2.AutoAugmentPolicy.CIFAR10,
                "svhn": v2.AutoAugmentPolicy.SVHN}
    if policy not in policies:
        raise ValueError(f"unknown AutoAugment policy {policy!r}; choose one of {sorted(policies)}")
    if images.ndim not in (3, 4):
        raise ValueError(f"expected images [C,H,W] or [B,C,H,W], got shape {tuple(images.shape)}")
    single = images.ndim == 3
    batch = images.unsqueeze(0) if single else images
    if batch.shape[0] == 0:
        return images
    was_float = batch.is_floating_point()
    if was_float:
        batch = batch.mul(255).round_().clamp_(0, 255).to(torch.uint8)
    transform = v2.AutoAugment(policies[policy])
    seeds = torch.randint(0, 2**62, (batch.shape[0],), generator=generator).tolist()
    tables = {name: (space(10, *batch.shape[-2:]), signed)
              for name, (space, signed) in transform._AUGMENTATION_SPACE.items()}
    out = _apply_grouped(batch, [_autoaugment_ops(transform._policies, tables, seed) for seed in seeds], transform)
    if was_float:
        out = out.float().div_(255)
    return out[0] if single else out


def _autoaugment_ops(policies: list, tables: dict, seed: int) -> list[tuple[str, float]]:
    """The (operation, magnitude) list that torchvision v2 ``AutoAugment.forward`` with sub-``policies`` applies to
    an image when the global CPU RNG is seeded with ``seed``: the same draws in the same order, from a generator of
    that seed. ``tables``: operation -> (its 10 magnitudes at the image's size, or None; whether signed)."""
    g = torch.Generator().manual_seed(seed)
    sub_policy = policies[int(torch.randint(len(policies), (), generator=g))]
    ops = []
    for name, probability, magnitude_index in sub_policy:
        if not torch.rand((), generator=g) <= probability:
            continue
        values, signed = tables[name]
        magnitude = 0.0
        if values is not None:
            magnitude = float(values[magnitude_index])
            if signed and torch.rand((), generator=g) <= 0.5:
                magnitude *= -1
        ops.append((name, magnitude))
    return ops


def _apply_grouped(batch: torch.Tensor, ops: list[list[tuple[str, float]]], transform) -> torch.Tensor:
    """Apply each image's operation list in order; at each position the images with the same (operation,
    magnitude) go through torchvision's kernel as one batch."""
    out = batch.clone()
    for position in range(max((len(o) for o in ops), default=0)):
        groups: dict[tuple[str, float], list[int]] = {}
        for row, image_ops in enumerate(ops):
            if position < len(image_ops):
                groups.setdefault(image_ops[position], []).append(row)
        for (name, magnitude), rows in groups.items():
            index = torch.tensor(rows)
            out[index] = transform._apply_image_or_video_transform(out[index], name, magnitude,
                                                                   interpolation=transform.interpolation,
                                                                   fill=transform._fill)
    return out
