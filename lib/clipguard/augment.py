"""Augmentations for RoCLIP / SafeCLIP / CleanCLIP (methods.md section 2): image policies and EDA for captions.

Image policy (RoCLIP's ``--cross_aug`` and SafeCLIP's views): horizontal flip -> random resized crop -> colour
jitter (p = 0.8) -> grayscale (p = 0.2) -> Gaussian blur, on float images in [0, 1] (``[C,H,W]`` or ``[B,C,H,W]``).
Two engines give the same distribution:

* ``"batched"`` (default): every parameter is drawn from the caller's ``torch.Generator`` (global RNG untouched)
  and flip, jitter, grayscale and blur run on the whole batch at once; only the resize of each crop is per image.
  Each step reproduces the corresponding torchvision v2 kernel (``tests/test_augment.py`` checks this against
  ``torchvision.transforms.v2.functional`` image by image).
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

EDA (Wei and Zou 2019) as released in the CyCLIP-derived code: clean the caption to lower-case letters and spaces,
pick one of synonym replacement / random insertion / random swap / random deletion uniformly and return its
sentence.  The released code builds one candidate per operation, shuffles and keeps the first; building only the
chosen candidate gives the same distribution at a quarter of the cost.  Every random choice goes through an explicit
:class:`random.Random`; set iteration order (which makes the released code depend on ``PYTHONHASHSEED``) is replaced
by sorted order.  :func:`augment_captions` derives one RNG per (seed, epoch, caption index): ``epoch=None`` is the
released code's fixed-once caption, an integer epoch re-samples every epoch.

WordNet comes from Debian's ``wordnet-base`` package: :func:`install_wordnet` (CLI: ``data_scripts/setup_wordnet.py``)
turns ``/usr/share/wordnet`` into an NLTK corpus folder, :func:`load_wordnet` finds (or installs) it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import random
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "ImagePolicy",
    "augment_images",
    "sample_image_params",
    "apply_image_params",
    "AutoAugmentImages",
    "autoaugment_images",
    "blur_kernel_size",
    "STOP_WORDS",
    "clean_caption",
    "SynonymTable",
    "synonym_replacement",
    "random_insertion",
    "random_swap",
    "random_deletion",
    "EDA",
    "caption_rng",
    "augment_captions",
    "CaptionAugmenter",
    "WordNetUnavailable",
    "WORDNET_SOURCE",
    "LEXNAMES",
    "lexnames_text",
    "sense_index_lines",
    "default_nltk_data",
    "install_wordnet",
    "find_wordnet",
    "load_wordnet",
]


def _derive_seed(*parts: object) -> int:
    """A 63-bit seed from any printable parts (stable across processes and Python versions)."""
    text = "|".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


# --------------------------------------------------------------------------------------------------------------
# Image policy
# --------------------------------------------------------------------------------------------------------------

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


def _gray(x: torch.Tensor) -> torch.Tensor:
    """[N,3,H,W] -> [N,1,H,W] luma (torchvision weights); [N,1,H,W] unchanged."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(dim=1)
    return (r * _GRAY_WEIGHTS[0] + g * _GRAY_WEIGHTS[1] + b * _GRAY_WEIGHTS[2]).unsqueeze(1)


def _blend(x: torch.Tensor, y: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    ratio = ratio.view(-1, 1, 1, 1)
    return (x * ratio + y * (1 - ratio)).clamp_(0, 1)


def _brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (x * f.view(-1, 1, 1, 1)).clamp_(0, 1)


def _contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), f)


def _saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return x if x.shape[1] == 1 else _blend(x, _gray(x), f)


def _hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Shift hue by ``f`` (fraction of a turn, per image) in HSV space, as torchvision's adjust_hue."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(dim=1)
    minc, v = torch.aminmax(x, dim=1)
    c = v - minc
    flat = c == 0
    safe_c = torch.where(flat, torch.ones_like(c), c)
    s = c / torch.where(flat, torch.ones_like(v), v)
    # hue sector by the maximal channel, red first, then green (torchvision's tie order)
    h = torch.where(v == r, ((g - b) / safe_c) % 6,
                    torch.where(v == g, (b - r) / safe_c + 2, (r - g) / safe_c + 4))
    h = torch.where(flat, torch.zeros_like(h), h) / 6
    h = (h + f.view(-1, 1, 1)) % 1.0
    # back to RGB: channel n in (5, 3, 1) for (r, g, b): v - v s clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6
    h6 = h * 6
    vs = v * s
    out = []
    for n in (5.0, 3.0, 1.0):
        k = (n + h6) % 6
        out.append(v - vs * torch.minimum(k, 4 - k).clamp(0, 1))
    return torch.stack(out, dim=1).clamp_(0, 1)


_JITTER_OPS = (_brightness, _contrast, _saturation, _hue)


def _gaussian_blur(x: torch.Tensor, kernel: int, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a per-image sigma, reflect padding (torchvision's gaussian_blur)."""
    half = (kernel - 1) / 2
    offsets = torch.linspace(-half, half, kernel, device=x.device)
    weights = torch.exp(-0.5 * (offsets / sigma.to(x.device).view(-1, 1)) ** 2)
    weights = weights / weights.sum(dim=1, keepdim=True)  # [N, k]
    pad = kernel // 2
    height, width = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    rows = sum(weights[:, j].view(-1, 1, 1, 1) * padded[..., j:j + height, :] for j in range(kernel))
    return sum(weights[:, j].view(-1, 1, 1, 1) * rows[..., :, j:j + width] for j in range(kernel))


def apply_image_params(batch: torch.Tensor, params: dict[str, torch.Tensor], policy: ImagePolicy) -> torch.Tensor:
    """Apply drawn parameters to float images ``[B,C,H,W]`` in [0, 1] (batched except the crop resize)."""
    device = batch.device
    side = int(params["side"])
    flip = params["flip"].to(device).view(-1, 1, 1, 1)
    x = torch.where(flip, batch.flip(-1), batch)
    # crop and resize image by image (boxes differ); F.interpolate is what TF.resized_crop calls on float tensors
    x = torch.cat([F.interpolate(image[None, :, top:top + h, left:left + w], size=(side, side), mode="bilinear",
                                 align_corners=False, antialias=True)
                   for image, (top, left, h, w) in zip(x, params["box"].tolist())])
    jitter = params["jitter"]
    if bool(jitter.any()):
        factors = params["factors"].to(device)
        order = params["order"]
        for position in range(4):
            for op_index, op in enumerate(_JITTER_OPS):
                rows = (jitter & (order[:, position] == op_index)).nonzero().squeeze(1)
                if len(rows):
                    rows = rows.to(device)
                    x[rows] = op(x[rows], factors[rows, op_index])
    gray = params["gray"].to(device)
    if bool(gray.any()) and x.shape[1] == 3:
        x = torch.where(gray.view(-1, 1, 1, 1), _gray(x).expand_as(x), x)
    return _gaussian_blur(x, policy.kernel_size(side), params["sigma"])


def _apply_image_params_reference(batch: torch.Tensor, params: dict[str, torch.Tensor], policy: ImagePolicy
                                  ) -> torch.Tensor:
    """The same parameters applied image by image with torchvision's v2 functional kernels (for tests)."""
    from torchvision.transforms.v2 import functional as TF

    side = int(params["side"])
    names = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    out = []
    for i, image in enumerate(batch):
        if params["flip"][i]:
            image = TF.horizontal_flip(image)
        top, left, h, w = params["box"][i].tolist()
        image = TF.resized_crop(image, top, left, h, w, [side, side], antialias=True)
        if params["jitter"][i]:
            for op_index in params["order"][i].tolist():
                image = names[op_index](image, float(params["factors"][i, op_index]))
        if params["gray"][i]:
            image = TF.rgb_to_grayscale(image, num_output_channels=image.shape[0])
        sigma = float(params["sigma"][i])
        kernel = policy.kernel_size(side)
        out.append(TF.gaussian_blur(image, [kernel, kernel], [sigma, sigma]))
    return torch.stack(out)


@dataclass(frozen=True)
class AutoAugmentImages:
    """CleanCLIP's augmented view: torchvision ``AutoAugment`` with a named policy (``imagenet``, ``cifar10``,
    ``svhn``) on uint8 images; a fresh draw per image. Call as ``aug(images, generator)``."""

    policy: str = "imagenet"

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return autoaugment_images(images, generator, self.policy)


def autoaugment_images(images: torch.Tensor, generator: torch.Generator, policy: str = "imagenet") -> torch.Tensor:
    """AutoAugment every image independently (float [0,1] images are quantised to uint8 and back, as a PIL
    pipeline would). Reproducible given the generator; global RNG untouched."""
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
    out = torch.stack(_per_image_global_rng(batch, generator, transform))
    if was_float:
        out = out.float().div_(255)
    return out[0] if single else out


# --------------------------------------------------------------------------------------------------------------
# EDA text augmentation
# --------------------------------------------------------------------------------------------------------------

# The English stop-word list of the EDA reference (NLTK's list of its time without the contraction fragments, plus
# the empty string). Written out here because NLTK's ``stopwords`` corpus is a separate download with no Debian
# package, and the list must not change under us: it decides which words synonym replacement may touch.
STOP_WORDS: frozenset[str] = frozenset("""
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers herself
it its itself they them their theirs themselves what which who whom this that these those am is are was were be
been being have has had having do does did doing a an the and but if or because as until while of at by for with
about against between into through during before after above below to from up down in out on off over under again
further then once here there when where why how all any both each few more most other some such no nor not only
own same so than too very s t can will just don should now
""".split()) | {""}

_NOT_LETTER = re.compile(r"[^a-z]+")


def clean_caption(text: str) -> str:
    """Lower-case letters and single spaces (apostrophes dropped, every other character a word break)."""
    return " ".join(_NOT_LETTER.sub(" ", text.lower().replace("'", "")).split())


class SynonymTable:
    """Memoised WordNet synonyms of a word, as EDA defines them: every lemma of every synset of the word, with
    ``_``/``-`` as spaces, reduced to lower-case letters, minus the word itself and empty strings; sorted."""

    def __init__(self, wordnet):
        self.wordnet = wordnet
        self._cache: dict[str, tuple[str, ...]] = {}

    def __call__(self, word: str) -> tuple[str, ...]:
        found = self._cache.get(word)
        if found is None:
            names = set()
            for synset in self.wordnet.synsets(word):
                for lemma in synset.lemmas():
                    name = clean_caption(lemma.name().replace("_", " ").replace("-", " "))
                    if name and name != word:
                        names.add(name)
            found = self._cache[word] = tuple(sorted(names))
        return found


def _table(wordnet) -> SynonymTable:
    return wordnet if isinstance(wordnet, SynonymTable) else SynonymTable(wordnet)


def _words(words: Sequence[str]) -> list[str]:
    """Re-split (inserted synonyms may be several words) into a flat list of words."""
    return " ".join(words).split()


def synonym_replacement(words: Sequence[str], n: int, rng: random.Random, wordnet,
                        stop_words: frozenset[str] = STOP_WORDS) -> list[str]:
    """Replace up to ``n`` distinct non-stop-words (every occurrence) by a random synonym each.

    Candidates are visited in a random order; words without synonyms are skipped."""
    table = _table(wordnet)
    candidates = sorted({w for w in words if w not in stop_words})
    rng.shuffle(candidates)
    out = list(words)
    replaced = 0
    for word in candidates:
        if replaced >= n:
            break
        synonyms = table(word)
        if synonyms:
            synonym = rng.choice(synonyms)
            out = [synonym if w == word else w for w in out]
            replaced += 1
    return _words(out)


def random_insertion(words: Sequence[str], n: int, rng: random.Random, wordnet) -> list[str]:
    """``n`` times: insert a random synonym of a random word (up to 10 tries to find a word with synonyms, else
    stop) at a random position before the last word (the reference never appends). The reference inserts the first
    synonym of its hash-ordered set; a uniform choice is the deterministic equivalent."""
    table = _table(wordnet)
    out = list(words)
    for _ in range(n):
        if not out:
            break
        synonyms: tuple[str, ...] = ()
        for _ in range(10):
            synonyms = table(out[rng.randrange(len(out))])
            if synonyms:
                break
        if not synonyms:
            break
        out.insert(rng.randrange(len(out)), rng.choice(synonyms))
    return _words(out)


def random_swap(words: Sequence[str], n: int, rng: random.Random) -> list[str]:
    """``n`` times: swap the words at two random positions. As in the reference, a swap draws its second position
    at most three times and is skipped when all three equal the first."""
    out = list(words)
    if len(out) < 2:
        return out
    for _ in range(n):
        i = rng.randrange(len(out))
        for _ in range(3):
            j = rng.randrange(len(out))
            if j != i:
                out[i], out[j] = out[j], out[i]
                break
    return out


def random_deletion(words: Sequence[str], p: float, rng: random.Random) -> list[str]:
    """Delete each word with probability ``p``; a one-word sentence is kept; if all go, one random word stays."""
    if len(words) <= 1:
        return list(words)
    kept = [w for w in words if rng.random() > p]
    return kept if kept else [words[rng.randrange(len(words))]]


_EDA_OPS = ("sr", "ri", "rs", "rd")


@dataclass
class EDA:
    """Easy Data Augmentation with the papers' rates; ``eda(caption, rng)`` returns one augmented sentence.

    ``operations``: the operations drawn from (uniformly); the RoCLIP paper text names only ``("sr", "rs", "rd")``,
    the code uses all four. An operation with rate 0 is never drawn (as in the reference). ``wordnet``: a WordNet
    reader (default: :func:`load_wordnet`, loaded on first use)."""

    alpha_sr: float = 0.1
    alpha_ri: float = 0.1
    alpha_rs: float = 0.1
    p_rd: float = 0.1
    operations: tuple[str, ...] = _EDA_OPS
    wordnet: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        unknown = set(self.operations) - set(_EDA_OPS)
        if unknown or not self.operations:
            raise ValueError(f"operations must be a non-empty subset of {_EDA_OPS}, got {self.operations}")
        self.operations = tuple(self.operations)
        rates = {"sr": self.alpha_sr, "ri": self.alpha_ri, "rs": self.alpha_rs, "rd": self.p_rd}
        self._active = tuple(op for op in self.operations if rates[op] > 0)
        if not self._active:
            raise ValueError("every selected EDA operation has rate 0")
        self._table: SynonymTable | None = None

    @property
    def synonyms(self) -> SynonymTable:
        if self._table is None:
            self._table = SynonymTable(self.wordnet if self.wordnet is not None else load_wordnet())
        return self._table

    def config(self) -> dict:
        return {"alpha_sr": self.alpha_sr, "alpha_ri": self.alpha_ri, "alpha_rs": self.alpha_rs, "p_rd": self.p_rd,
                "operations": list(self.operations)}

    def __call__(self, caption: str, rng: random.Random) -> str:
        words = clean_caption(caption).split()
        if not words:  # nothing that EDA can work on (no letters): leave the caption as it is
            return caption
        op = self._active[rng.randrange(len(self._active))]
        count = len(words)
        if op == "sr":
            out = synonym_replacement(words, max(1, int(self.alpha_sr * count)), rng, self.synonyms)
        elif op == "ri":
            out = random_insertion(words, max(1, int(self.alpha_ri * count)), rng, self.synonyms)
        elif op == "rs":
            out = random_swap(words, max(1, int(self.alpha_rs * count)), rng)
        else:
            out = random_deletion(words, self.p_rd, rng)
        return clean_caption(" ".join(out)) or " ".join(words)


def caption_rng(seed: int, epoch: int | None, index: int) -> random.Random:
    """The RNG of caption ``index``: a function of (seed, epoch, index) only; ``epoch=None`` is the fixed draw."""
    return random.Random(_derive_seed("clipguard-eda", seed, "fixed" if epoch is None else int(epoch), int(index)))


def _cache_file(cache_dir: Path, eda: EDA, seed: int, epoch: int | None) -> Path:
    config = hashlib.sha1(json.dumps(eda.config(), sort_keys=True).encode()).hexdigest()[:10]
    tag = "fixed" if epoch is None else f"epoch{int(epoch)}"
    return Path(cache_dir) / f"eda-{config}-seed{seed}-{tag}.json"


def _caption_key(index: int, caption: str) -> str:
    return f"{index}:{hashlib.sha1(caption.encode('utf-8')).hexdigest()[:16]}"


_DEFAULT_EDA: EDA | None = None


def augment_captions(captions: Sequence[str], seed: int, epoch: int | None,
                     indices: Sequence[int] | torch.Tensor | None = None, eda: EDA | None = None,
                     cache_dir: str | Path | None = None) -> list[str]:
    """EDA of every caption, each from its own RNG ``caption_rng(seed, epoch, index)``.

    ``indices``: the captions' dataset rows (default: positions 0..n-1), so a caption's augmentation does not depend
    on the batch it comes in. ``epoch``: an integer re-samples every epoch; ``None`` gives the same sentence every
    time (the released code's fixed-once caption). ``cache_dir``: keep results in a JSON file per (EDA settings,
    seed, epoch) keyed by row and caption hash."""
    global _DEFAULT_EDA
    if eda is None:
        _DEFAULT_EDA = _DEFAULT_EDA or EDA()
        eda = _DEFAULT_EDA
    if indices is None:
        indices = range(len(captions))
    elif isinstance(indices, torch.Tensor):
        indices = indices.tolist()
    if len(indices) != len(captions):
        raise ValueError(f"{len(captions)} captions but {len(indices)} indices")
    cache: dict[str, str] = {}
    path = None
    if cache_dir is not None:
        path = _cache_file(Path(cache_dir), eda, seed, epoch)
        if path.exists():
            cache = json.loads(path.read_text())
    out, added = [], False
    for index, caption in zip(indices, captions):
        key = _caption_key(index, caption) if path is not None else None
        if key is not None and key in cache:
            out.append(cache[key])
            continue
        augmented = eda(caption, caption_rng(seed, epoch, index))
        out.append(augmented)
        if key is not None:
            cache[key] = augmented
            added = True
    if path is not None and added:
        _atomic_write(path, json.dumps(cache, sort_keys=True).encode())
    return out


@dataclass
class CaptionAugmenter:
    """Training hook ``text_augment(captions, epoch, indices)`` of :class:`clipguard.train.ClipObjective`.

    ``resample=True`` draws a new EDA sentence every epoch; ``False`` fixes one per caption row (released code),
    memoised in memory and optionally on disk (``cache_dir``)."""

    seed: int = 0
    resample: bool = True
    eda: EDA = field(default_factory=EDA)
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        self._fixed: dict[tuple[int, str], str] = {}

    def __call__(self, captions: Sequence[str], epoch: int, indices: Sequence[int] | torch.Tensor | None = None
                 ) -> list[str]:
        if indices is None:
            indices = range(len(captions))
        elif isinstance(indices, torch.Tensor):
            indices = indices.tolist()
        if self.resample:
            return augment_captions(captions, self.seed, epoch, indices, self.eda, self.cache_dir)
        missing = [(i, c) for i, c in zip(indices, captions) if (i, c) not in self._fixed]
        if missing:
            rows, texts = zip(*missing)
            for row, text, augmented in zip(rows, texts,
                                             augment_captions(texts, self.seed, None, rows, self.eda, self.cache_dir)):
                self._fixed[(row, text)] = augmented
        return [self._fixed[(i, c)] for i, c in zip(indices, captions)]


# --------------------------------------------------------------------------------------------------------------
# WordNet, offline
# --------------------------------------------------------------------------------------------------------------

WORDNET_SOURCE = Path("/usr/share/wordnet")
_LEXNAMES_MAN_PAGE = Path("/usr/share/man/man5/lexnames.5WN.gz")
_REPO_ROOT = Path(__file__).resolve().parents[2]

# The 45 lexicographer files of WordNet 3.0, in file-number order (lexnames(5WN)); the man page is checked against
# this list when present (minimal images often drop man pages).
LEXNAMES: tuple[str, ...] = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant",
    "noun.possession", "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication",
    "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)
_POS_NUMBER = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
_REQUIRED = tuple(f"{kind}.{pos}" for kind in ("data", "index") for pos in ("adj", "adv", "noun", "verb")) + tuple(
    f"{pos}.exc" for pos in ("adj", "adv", "noun", "verb"))
_OPTIONAL = ("cntlist.rev", "index.sense")


class WordNetUnavailable(RuntimeError):
    """WordNet cannot be found or installed."""


_HOW_TO = ("install Debian's WordNet 3.0 package and convert it: `apt-get install wordnet-base` then "
           "`python data_scripts/setup_wordnet.py`")


def lexnames_text(man_page: Path | None = _LEXNAMES_MAN_PAGE) -> str:
    """The ``lexnames`` file NLTK's reader expects: ``NN<TAB>name<TAB>pos`` per line (pos: 1 noun, 2 verb,
    3 adjective, 4 adverb). Checked against the lexnames(5WN) man page when it exists."""
    if man_page is not None and Path(man_page).exists():
        listed = re.findall(r"^(\d\d)\t(\S+)[ \t]*\t", gzip.decompress(Path(man_page).read_bytes()).decode("latin-1"),
                            flags=re.MULTILINE)
        names = tuple(name for _, name in listed)
        if names != LEXNAMES or [int(n) for n, _ in listed] != list(range(len(LEXNAMES))):
            raise WordNetUnavailable(f"{man_page} lists {len(names)} lexicographer files that differ from "
                                     f"WordNet 3.0's 45: {names}")
    return "".join(f"{i:02d}\t{name}\t{_POS_NUMBER[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))


_SS_TYPE = {"n": 1, "v": 2, "a": 3, "r": 4, "s": 5}
_MARKER = re.compile(r"\((?:a|p|ip)\)$")
_HEAD_MARKER = re.compile(r"\((?:a|p|ip)\):")


def sense_index_lines(source: str | Path = WORDNET_SOURCE) -> list[str]:
    """The lines of WordNet's ``index.sense`` (senseidx(5WN)), built from the database files.

    Debian ships this file in a separate package (``wordnet-sense-index``); NLTK's reader reads it when it opens the
    corpus. Each line is ``sense_key synset_offset sense_number tag_cnt``, with the sense key
    ``lemma%ss_type:lex_filenum:lex_id:head_word:head_id`` (head fields only for adjective satellites), sense numbers
    from ``index.<pos>`` and tag counts from ``cntlist.rev``; sorted by byte value like the distributed file."""
    source = Path(source)
    sense_number: dict[tuple[str, str, str], int] = {}  # (lemma, index pos, offset) -> 1-based sense number
    for pos in ("adj", "adv", "noun", "verb"):
        with open(source / f"index.{pos}", encoding="utf-8") as stream:
            for line in stream:
                if line.startswith(" "):
                    continue
                fields = line.split()
                synsets = int(fields[2])
                for number, offset in enumerate(fields[-synsets:], start=1):
                    sense_number[(fields[0], fields[1], offset)] = number
    counts: dict[str, int] = {}
    if (source / "cntlist.rev").is_file():
        with open(source / "cntlist.rev", encoding="utf-8") as stream:
            for line in stream:
                key, _, count = line.split()
                counts[_HEAD_MARKER.sub(":", key)] = int(count)  # head words there keep their (a)/(p) marker
    synsets: dict[str, tuple[str, int, str, list[tuple[str, int]], list[tuple[str, str, str]]]] = {}
    for pos in ("adj", "adv", "noun", "verb"):
        with open(source / f"data.{pos}", encoding="utf-8") as stream:
            for line in stream:
                if line.startswith(" "):
                    continue
                fields = line.split(" | ")[0].split()
                offset, lex_filenum, ss_type, n_words = fields[0], int(fields[1]), fields[2], int(fields[3], 16)
                words = [(_MARKER.sub("", fields[4 + 2 * i]).lower(), int(fields[5 + 2 * i], 16))
                         for i in range(n_words)]
                at = 4 + 2 * n_words
                pointers = [tuple(fields[at + 1 + 4 * i: at + 4 + 4 * i]) for i in range(int(fields[at]))]
                synsets[f"{ss_type}{offset}"] = (offset, lex_filenum, ss_type, words, pointers)
    lines = []
    for offset, lex_filenum, ss_type, words, pointers in synsets.values():
        head = ":"
        if ss_type == "s":
            target = next(f"a{p_offset}" for symbol, p_offset, p_pos in pointers if symbol == "&" and p_pos == "a")
            head_word, head_id = synsets[target][3][0]
            head = f"{head_word}:{head_id:02d}"
        index_pos = "a" if ss_type == "s" else ss_type
        seen = set()
        for lemma, lex_id in words:
            if lemma in seen:  # "A"/"a", "KB"/"kB": one sense per lemma and synset, the first
                continue
            seen.add(lemma)
            key = f"{lemma}%{_SS_TYPE[ss_type]}:{lex_filenum:02d}:{lex_id:02d}:{head}"
            lines.append(f"{key} {offset} {sense_number[(lemma, index_pos, offset)]} {counts.get(key, 0)}\n")
    lines.sort(key=lambda line: line.encode("utf-8"))
    return lines


def default_nltk_data() -> Path:
    """Where :func:`install_wordnet` writes by default: the first entry of ``$NLTK_DATA``, else
    ``<repo>/.nltk_data``."""
    env = [p for p in os.environ.get("NLTK_DATA", "").split(os.pathsep) if p]
    return Path(env[0]) if env else _REPO_ROOT / ".nltk_data"


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def install_wordnet(dest: str | Path | None = None, source: str | Path = WORDNET_SOURCE,
                    man_page: Path | None = _LEXNAMES_MAN_PAGE) -> tuple[Path, list[str]]:
    """Copy Debian's WordNet 3.0 (``source``) into ``<dest>/corpora/wordnet``; write ``lexnames`` and, unless the
    source has one (package ``wordnet-sense-index``), ``index.sense`` (:func:`sense_index_lines`).

    Idempotent: files already there with the same size and modification time are left alone. Returns the corpus
    folder and the names of the files written (empty when everything was already in place)."""
    source = Path(source)
    missing = [name for name in _REQUIRED if not (source / name).is_file()]
    if missing:
        raise WordNetUnavailable(f"{source} lacks {', '.join(missing)}; {_HOW_TO}")
    target = Path(dest if dest is not None else default_nltk_data()) / "corpora" / "wordnet"
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name in _REQUIRED + tuple(n for n in _OPTIONAL if (source / n).is_file()):
        src, dst = source / name, target / name
        stat = src.stat()
        if dst.is_file() and dst.stat().st_size == stat.st_size and int(dst.stat().st_mtime) == int(stat.st_mtime):
            continue
        handle, temporary = tempfile.mkstemp(dir=target, prefix=f".{name}.")
        os.close(handle)
        shutil.copy2(src, temporary)
        os.replace(temporary, dst)
        written.append(name)
    if not (source / "index.sense").is_file() and (written or not (target / "index.sense").is_file()):
        _atomic_write(target / "index.sense", "".join(sense_index_lines(source)).encode("utf-8"))
        written.append("index.sense")
    lexnames = lexnames_text(man_page).encode()
    if not (target / "lexnames").is_file() or (target / "lexnames").read_bytes() != lexnames:
        _atomic_write(target / "lexnames", lexnames)
        written.append("lexnames")
    return target, written


def _search_roots() -> list[Path]:
    import nltk

    roots = [Path(p) for p in os.environ.get("NLTK_DATA", "").split(os.pathsep) if p]
    roots.append(_REPO_ROOT / ".nltk_data")
    roots.extend(Path(p) for p in nltk.data.path)
    unique = []
    for root in roots:
        if root not in unique:
            unique.append(root)
    return unique


def find_wordnet() -> Path | None:
    """The first usable ``corpora/wordnet`` folder (one with ``lexnames`` and ``data.noun``) under ``$NLTK_DATA``,
    ``<repo>/.nltk_data`` or NLTK's default paths; None when there is none."""
    for root in _search_roots():
        folder = root / "corpora" / "wordnet"
        if (folder / "lexnames").is_file() and (folder / "data.noun").is_file():
            return folder
    return None


@lru_cache(maxsize=4)
def _reader(folder: str):
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class EnglishWordNetReader(WordNetCorpusReader):
        """NLTK's reader without the WordNet-3.0 sense map it builds for the multilingual (OMW) functions, which
        are unavailable offline anyway; saves ~2.5 s per load."""

        def map_wn(self, version="wordnet"):
            return None

    # NLTK (>= 3.9.3) opens corpus files only under its data paths: authorise this corpus's data root.
    path = Path(folder)
    root = str(path.parents[1] if path.parent.name == "corpora" else path)
    if root not in nltk.data.path:
        nltk.data.path.append(root)

    with warnings.catch_warnings():  # "multilingual functions are not available": we need English only
        warnings.simplefilter("ignore", UserWarning)
        return EnglishWordNetReader(folder, None)


def load_wordnet(folder: str | Path | None = None, auto_install: bool = True):
    """NLTK's WordNet reader on an offline WordNet 3.0 corpus (cached per folder).

    Without ``folder``: :func:`find_wordnet`; when nothing is found and ``/usr/share/wordnet`` exists, the corpus is
    installed first (into :func:`default_nltk_data`). Raises :class:`WordNetUnavailable` saying what to install."""
    if folder is None:
        found = find_wordnet()
        if found is None:
            if not auto_install or not WORDNET_SOURCE.is_dir():
                raise WordNetUnavailable(f"no WordNet corpus found under {[str(r) for r in _search_roots()]}; "
                                         f"{_HOW_TO}")
            found, _ = install_wordnet()
        folder = found
    return _reader(str(Path(folder).resolve()))
