"""Backdoor triggers: small functions on image batches in [0, 1] (attacks.md Section 5).

Every trigger is a registered function ``fn(images, generator, **params) -> (triggered, state)`` where ``images``
is a float tensor ``[B, 3, H, W]`` in [0, 1], ``generator`` a CPU :class:`torch.Generator` (the only source of
randomness) and ``state`` a dict of per-image integer tensors (e.g. the patch location) that poison manifests
record. Sizes are given as fractions of the image side, so one parameter set works at 28, 32 or 224 px
(``patch_fraction = 16/224`` is the papers' 16 px patch at 224 px). Fixed patterns (HTBA patch, Blended key, WaNet
grids) are generated from a ``pattern_seed`` parameter and are therefore part of the trigger's identity;
:func:`trigger_artefacts` returns them for storage.

Use :func:`make_trigger` to get a :class:`Trigger` (name + complete parameters)::

    trigger = make_trigger("badnet_htba")                      # RoCLIP: fixed 16/224 patch, top-left
    triggered = trigger(images, torch.Generator().manual_seed(0))
    test_trigger = trigger.with_params(placement="center")     # declared test-time placement (Section 7)

Names (see each function's docstring for the source of its parameters): ``badnet_random`` (CleanCLIP),
``badnet_htba`` (RoCLIP/SafeCLIP), ``badnet_yellow`` (CleanCLIP option), ``badnet_checkerboard`` (detection paper),
``blended`` (fixed key), ``blended_noise`` (CleanCLIP, fresh noise per image), ``sig`` (additive, Barni et al.),
``sig_blended`` (CleanCLIP's blended form), ``wanet`` (smooth k = 4 grid), ``wanet_cleanclip`` (per-pixel
near-identity grid), ``nashville`` (pilgram filter), ``multi`` (one of several triggers per image),
``stored_patch`` (a given uint8 patch, e.g. a BadCLIP-style optimised one: :func:`clipguard.attacks.optimise_patch`).
Label-consistent poisoning is a property of the poison set, not of the trigger: see
:class:`clipguard.attacks.BackdoorSpec` (``caption_source="keep"``).
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["TRIGGERS", "PLACEMENTS", "Trigger", "TriggerError", "make_trigger", "register_trigger",
           "htba_pattern", "blend_pattern", "wanet_grid", "wanet_displacement", "trigger_artefacts", "to_uint8",
           "apply_to_uint8", "patch_side"]

#: name -> trigger function ``fn(images, generator, **params) -> (images, state)``.
TRIGGERS: dict[str, Callable] = {}

#: Patch placements: ``random`` (fresh location per image), fixed corners (shifted inwards by
#: ``offset_fraction`` of the side), ``center`` and ``four_corners`` (the same patch at all four corners).
PLACEMENTS = ("random", "top_left", "top_right", "bottom_left", "bottom_right", "center", "four_corners")

_HTBA_DEFAULT_SIDE = 16 / 224


class TriggerError(ValueError):
    """Unknown trigger, unknown or bad parameter, or bad input images."""


def register_trigger(name: str, stochastic: bool | Callable[[dict], bool]):
    """Add a trigger function to :data:`TRIGGERS`. ``stochastic``: whether it draws from the generator (then a
    generator is required when it is applied), or a function of the parameters that says so."""
    def decorator(fn):
        fn.stochastic = stochastic
        TRIGGERS[name] = fn
        return fn
    return decorator


# --------------------------------------------------------------------------------------------------------------
# The Trigger object
# --------------------------------------------------------------------------------------------------------------


def _defaults(fn: Callable) -> dict:
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if name not in ("images", "generator")}


@dataclass
class Trigger:
    """A named trigger with its complete parameters (defaults filled in); build it with :func:`make_trigger`.

    ``trigger(images, generator)`` returns the triggered images; :meth:`apply` also returns the per-image state.
    ``images`` may be ``[B, 3, H, W]`` or a single ``[3, H, W]`` image, float in [0, 1], on any device.
    """

    name: str
    params: dict = field(default_factory=dict)

    def identity(self) -> dict:
        """JSON-able description, ``{"name": ..., **params}``; ``make_trigger(identity)`` rebuilds the trigger."""
        return {"name": self.name, **copy.deepcopy(self.params)}

    @property
    def stochastic(self) -> bool:
        flag = TRIGGERS[self.name].stochastic
        return bool(flag(self.params) if callable(flag) else flag)

    def with_params(self, **params) -> "Trigger":
        """A copy with some parameters replaced (e.g. the test-time ``placement``)."""
        return make_trigger(self.name, **{**self.params, **params})

    def apply(self, images: torch.Tensor, generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Triggered images and the per-image state (dict of int64 tensors ``[B]``, e.g. patch ``y``/``x``)."""
        single = images.ndim == 3
        batch = images[None] if single else images
        if not isinstance(batch, torch.Tensor) or batch.ndim != 4 or batch.shape[1] != 3:
            raise TriggerError(f"{self.name}: images must be a tensor [B, 3, H, W] or [3, H, W], "
                               f"got {tuple(getattr(images, 'shape', ()))}")
        if not batch.is_floating_point():
            raise TriggerError(f"{self.name}: images must be float in [0, 1], got {batch.dtype} "
                               "(use apply_to_uint8 for uint8 images)")
        if generator is None:
            if self.stochastic:
                raise TriggerError(f"trigger {self.name!r} is random: pass a torch.Generator")
            generator = torch.Generator()
        out, state = TRIGGERS[self.name](batch, generator, **self.params)
        return (out[0] if single else out), state

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(images, generator)[0]


def make_trigger(name: str | dict | Trigger, **params) -> Trigger:
    """A :class:`Trigger` from a name and parameters, or from an identity dict ``{"name": ..., **params}``.

    Unknown names or parameters raise :class:`TriggerError` listing the valid ones; values are checked."""
    if isinstance(name, Trigger):
        name = name.identity()
    if isinstance(name, dict):
        params = {**{k: v for k, v in name.items() if k != "name"}, **params}
        if "name" not in name:
            raise TriggerError(f"trigger dict needs a 'name'; valid names: {sorted(TRIGGERS)}")
        name = name["name"]
    if name not in TRIGGERS:
        raise TriggerError(f"unknown trigger {name!r}; valid names: {sorted(TRIGGERS)}")
    defaults = _defaults(TRIGGERS[name])
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise TriggerError(f"trigger {name!r} has no parameter(s) {unknown}; valid: {sorted(defaults)}")
    full = {**defaults, **params}
    _validate(name, full)
    if name == "multi":
        full["triggers"] = [make_trigger(t).identity() for t in full["triggers"]]
    if name == "stored_patch":
        full["patch"] = torch.as_tensor(full["patch"]).to(torch.int64).tolist()  # canonical: nested lists of ints
    return Trigger(name, full)


def _validate(name: str, p: dict) -> None:
    def need(cond: bool, message: str) -> None:
        if not cond:
            raise TriggerError(f"trigger {name!r}: {message}")

    if "patch_fraction" in p:
        need(0 < p["patch_fraction"] <= 1, f"patch_fraction must be in (0, 1], got {p['patch_fraction']}")
    if "placement" in p:
        need(p["placement"] in PLACEMENTS, f"placement must be one of {PLACEMENTS}, got {p['placement']!r}")
    if "offset_fraction" in p:
        need(0 <= p["offset_fraction"] < 1, f"offset_fraction must be in [0, 1), got {p['offset_fraction']}")
    if "alpha" in p:
        need(0 <= p["alpha"] <= 1, f"alpha must be in [0, 1], got {p['alpha']}")
    if "k" in p:
        need(p["k"] is None or (isinstance(p["k"], int) and p["k"] >= 2), f"k must be an int >= 2 or None, got {p['k']}")
    if "patch" in p:
        patch = p["patch"]
        try:
            values = torch.as_tensor(patch if isinstance(patch, torch.Tensor) else list(patch))
        except (TypeError, ValueError):
            values = None
        need(values is not None and values.ndim == 3 and values.shape[0] == 3 and values.shape[1] == values.shape[2]
             and values.numel() > 0, "patch must be a [3][p][p] nested list (or tensor) of values in 0..255, got "
             f"shape {tuple(values.shape) if values is not None else type(patch).__name__}")
        need(not values.is_floating_point() or bool((values == values.round()).all()), "patch values must be integers")
        need(bool(((values >= 0) & (values <= 255)).all()), "patch values must be in 0..255")
    if "triggers" in p:
        need(isinstance(p["triggers"], (list, tuple)) and len(p["triggers"]) >= 1,
             "triggers must be a non-empty list of trigger dicts")
        need(all((t.get("name") if isinstance(t, dict) else getattr(t, "name", None)) != "multi"
                 for t in p["triggers"]), "multi triggers cannot be nested")


# --------------------------------------------------------------------------------------------------------------
# Helpers: sizes, placement, conversion
# --------------------------------------------------------------------------------------------------------------


def patch_side(patch_fraction: float, height: int, width: int) -> int:
    """Patch side in pixels: ``round(patch_fraction * min(H, W))``, at least 1 (16/224 gives 16 px at 224)."""
    return max(1, min(height, width, round(patch_fraction * min(height, width))))


def _side(images: torch.Tensor, patch_fraction: float) -> int:
    return patch_side(patch_fraction, images.shape[-2], images.shape[-1])


def _positions(placement: str, b: int, h: int, w: int, p: int, offset_fraction: float,
               generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Top-left corners ``[(ys [B], xs [B]), ...]``: one pair per pasted copy (four for ``four_corners``)."""
    off = round(offset_fraction * min(h, w))
    top, left = min(off, h - p), min(off, w - p)
    bottom, right = max(0, h - p - off), max(0, w - p - off)

    def fixed(y: int, x: int):
        return torch.full((b,), y, dtype=torch.long), torch.full((b,), x, dtype=torch.long)

    if placement == "random":
        ys = torch.randint(0, h - p + 1, (b,), generator=generator)
        xs = torch.randint(0, w - p + 1, (b,), generator=generator)
        return [(ys, xs)]
    corners = {"top_left": (top, left), "top_right": (top, right), "bottom_left": (bottom, left),
               "bottom_right": (bottom, right), "center": ((h - p) // 2, (w - p) // 2)}
    if placement == "four_corners":
        return [fixed(*corners[c]) for c in ("top_left", "top_right", "bottom_left", "bottom_right")]
    return [fixed(*corners[placement])]


def _paste(images: torch.Tensor, patch: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """Write ``patch`` (``[3, p, p]`` or per image ``[B, 3, p, p]``) at per-image top-left corners, in place."""
    b, _, _, _ = images.shape
    p = patch.shape[-1]
    patch = patch.to(images.device, images.dtype).expand(b, -1, -1, -1)
    ar = torch.arange(p, device=images.device)
    rows = (ys.to(images.device)[:, None] + ar)[:, :, None]  # [B, p, 1]
    cols = (xs.to(images.device)[:, None] + ar)[:, None, :]  # [B, 1, p]
    bidx = torch.arange(b, device=images.device)[:, None, None]
    view = images.permute(0, 2, 3, 1)  # [B, H, W, 3], shares storage
    view[bidx, rows, cols] = patch.permute(0, 2, 3, 1)
    return images


def _patch_trigger(images, generator, patch_fn, p, placement, offset_fraction):
    """Paste ``patch_fn(p)`` (a ``p x p`` patch) at the placement's corners; state: ``y``, ``x`` when random."""
    b, _, h, w = images.shape
    if p > min(h, w):
        raise TriggerError(f"a {p} px patch does not fit into {h}x{w} images")
    out = images.clone()
    corners = _positions(placement, b, h, w, p, offset_fraction, generator)
    patch = patch_fn(p)  # drawn after the locations, so draws are ordered: locations, then patch values
    for ys, xs in corners:
        _paste(out, patch, ys, xs)
    state = {"y": corners[0][0], "x": corners[0][1]} if placement == "random" else {}
    return out, state


def to_uint8(images: torch.Tensor, overflow: str = "clip") -> torch.Tensor:
    """Float images to uint8. ``overflow="clip"``: clamp to [0, 1] and round (the default). ``"wrap"``: the
    CleanCLIP generator's ``ToPILImage`` behaviour, ``(x * 255)`` truncated towards zero and taken modulo 256, so out-of-range
    values wrap around (attacks.md 5.0; a fidelity switch for unclipped triggers)."""
    # round half up via +0.5 and truncation: torch.round/trunc are much slower on tiny tensors on some CPU builds
    if overflow == "clip":
        return images.clamp(0, 1).mul(255).add_(0.5).to(torch.uint8)
    if overflow == "wrap":
        return torch.remainder(images.mul(255).to(torch.int64), 256).to(torch.uint8)
    raise TriggerError(f"overflow must be 'clip' or 'wrap', got {overflow!r}")


def apply_to_uint8(trigger: Trigger, images: torch.Tensor, generator: torch.Generator | None = None,
                   overflow: str = "clip") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Trigger uint8 images (as stored in :class:`clipguard.data.ImageCaptionSet`): to [0, 1], trigger, back."""
    out, state = trigger.apply(images.float().div(255.0), generator)
    return to_uint8(out, overflow), state


# --------------------------------------------------------------------------------------------------------------
# Fixed patterns (artefacts)
# --------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _htba_pattern(side: int, grid: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    colours = torch.rand(1, 3, grid, grid, generator=g)
    return F.interpolate(colours, size=(side, side), mode="bilinear", align_corners=False)[0].clamp(0, 1)


def htba_pattern(side: int, grid: int = 4, seed: int = 0) -> torch.Tensor:
    """HTBA-style patch ``[3, side, side]``: a ``grid x grid`` matrix of random colours (seeded) upsampled
    bilinearly (RoCLIP's description of the public HTBA patches, attacks.md 5.2; no repository ships the pattern,
    so it is generated here from ``seed``)."""
    return _htba_pattern(int(side), int(grid), int(seed)).clone()


@functools.lru_cache(maxsize=16)
def _blend_pattern(h: int, w: int, seed: int) -> torch.Tensor:
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


def blend_pattern(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Fixed Blended key ``[3, H, W]``: uniform noise from ``seed`` (the noise key of Chen et al.; the Hello Kitty
    key of the detection paper is an image file we do not have)."""
    return _blend_pattern(int(height), int(width), int(seed)).clone()


@functools.lru_cache(maxsize=16)
def _wanet_grid(h: int, w: int, k: int | None, s: float, grid_rescale: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    kh, kw = (h, w) if k is None else (k, k)
    control = torch.rand(1, 2, kh, kw, generator=g) * 2 - 1
    control = control / control.abs().mean()
    if (kh, kw) == (h, w):
        noise = control
    else:
        noise = F.interpolate(control, size=(h, w), mode="bicubic", align_corners=True)
    noise = noise.permute(0, 2, 3, 1)  # [1, H, W, 2] (x, y)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    identity = torch.stack((xs, ys), dim=2)[None]
    return ((identity + s * noise / h) * grid_rescale).clamp(-1, 1)


def wanet_grid(height: int, width: int, k: int | None = 4, s: float = 0.5, grid_rescale: float = 1.0,
               seed: int = 0) -> torch.Tensor:
    """WaNet sampling grid ``[1, H, W, 2]`` for ``grid_sample(align_corners=True)``:
    ``clamp((identity + s * U / H) * grid_rescale, -1, 1)`` where ``U`` is a 2-channel ``k x k`` field,
    ``U0 ~ U(-1, 1)`` normalised to mean ``|U0| = 1`` and bicubically upsampled to ``H x W``; ``k=None`` means one
    independent value per pixel (no upsampling). Pixel displacement is about ``s * U / 2`` px at any resolution."""
    return _wanet_grid(int(height), int(width), None if k is None else int(k), float(s), float(grid_rescale),
                       int(seed)).clone()


def wanet_displacement(grid: torch.Tensor) -> torch.Tensor:
    """Per-pixel displacement in pixels ``[H, W, 2]`` (x, y) of a grid from :func:`wanet_grid`."""
    _, h, w, _ = grid.shape
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    identity = torch.stack((xs, ys), dim=2)
    scale = torch.tensor([(w - 1) / 2, (h - 1) / 2])
    return (grid[0] - identity) * scale


def trigger_artefacts(trigger: Trigger, height: int, width: int) -> dict[str, torch.Tensor]:
    """The fixed pattern(s) of a trigger at an image size, to store beside results (attacks.md Section 8.3)."""
    p = trigger.params
    if trigger.name == "badnet_htba":
        return {"htba_patch": htba_pattern(patch_side(p["patch_fraction"], height, width), p["grid"], p["pattern_seed"])}
    if trigger.name == "blended":
        return {"blend_key": blend_pattern(height, width, p["pattern_seed"])}
    if trigger.name in ("wanet", "wanet_cleanclip"):
        return {"wanet_grid": wanet_grid(height, width, p["k"], p["s"], p["grid_rescale"], p["pattern_seed"])}
    if trigger.name == "stored_patch":
        return {"patch": torch.tensor(p["patch"], dtype=torch.uint8)}
    if trigger.name == "multi":
        out = {}
        for i, sub in enumerate(p["triggers"]):
            out.update({f"{i}_{k}": v for k, v in trigger_artefacts(make_trigger(sub), height, width).items()})
        return out
    return {}


# --------------------------------------------------------------------------------------------------------------
# Patch triggers (BadNets family)
# --------------------------------------------------------------------------------------------------------------


def _random_placement(params: dict) -> bool:
    return params["placement"] == "random"


@register_trigger("badnet_random", stochastic=True)
def badnet_random(images, generator, patch_fraction: float = 16 / 224, placement: str = "random",
                  offset_fraction: float = 0.0, noise_std: float = 1.0, clip: bool = True):
    """BadNet random-noise patch as CleanCLIP generates it (``backdoor/utils.py::apply_trigger``, patch type
    "random", location "random"; attacks.md 5.1): a ``p x p`` patch (p = 16 at 224 px) of the image's per-channel
    mean plus ``N(0, noise_std^2)`` noise, drawn **fresh for every image**, at a **fresh random location** per image.
    ``clip=False`` keeps CleanCLIP's unclipped values (convert with ``to_uint8(overflow="wrap")`` for its
    wrap-around artefacts). State: patch top-left ``y``, ``x`` when ``placement="random"``."""
    b = images.shape[0]
    means = images.mean(dim=(2, 3))  # [B, 3]

    def patch(p):
        noise = torch.randn(b, 3, p, p, generator=generator).to(images.device, images.dtype)
        values = means[:, :, None, None] + noise_std * noise
        return values.clamp(0, 1) if clip else values

    return _patch_trigger(images, generator, patch, _side(images, patch_fraction), placement, offset_fraction)


@register_trigger("badnet_htba", stochastic=_random_placement)
def badnet_htba(images, generator, patch_fraction: float = _HTBA_DEFAULT_SIDE, placement: str = "top_left",
                offset_fraction: float = 0.0, grid: int = 4, pattern_seed: int = 0):
    """HTBA-style fixed colour patch (attacks.md 5.2): a seeded ``grid x grid`` colour matrix upsampled bilinearly
    to ``p x p`` (p = 16 at 224 px, about 7% of the side), the same pattern and place for every image. RoCLIP
    [paper]: top-left corner (``offset_fraction=0``); SafeCLIP development code: rows/cols 9-24 at 224 px
    (``offset_fraction=9/224``). Deterministic (the generator is not used)."""
    _, _, h, w = images.shape
    pattern = htba_pattern(patch_side(patch_fraction, h, w), grid, pattern_seed)
    return _patch_trigger(images, generator, lambda p: pattern, pattern.shape[-1], placement, offset_fraction)


@register_trigger("badnet_yellow", stochastic=_random_placement)
def badnet_yellow(images, generator, patch_fraction: float = 16 / 224, placement: str = "random",
                  offset_fraction: float = 0.0):
    """Yellow patch (CleanCLIP option, attacks.md 5.4): ``p x p`` with R = G = 1, B = 0, at a random location per
    image (or ``four_corners``, a corner or the centre). Random only through the location."""
    yellow = torch.tensor([1.0, 1.0, 0.0])[:, None, None]
    return _patch_trigger(images, generator, lambda p: yellow.expand(3, p, p), _side(images, patch_fraction),
                          placement, offset_fraction)


@register_trigger("badnet_checkerboard", stochastic=_random_placement)
def badnet_checkerboard(images, generator, patch_fraction: float = 16 / 224, placement: str = "random",
                        offset_fraction: float = 0.0):
    """Checkerboard patch of the detection paper's "BadNets" (``datasets/cc3m_badnets.py``, attacks.md 5.3):
    ``p x p`` with value 1 at even rows and even columns, 0 elsewhere. Training: random position per sample;
    test: ``placement="center"`` (offset 104 at 224 px)."""
    def patch(p):
        ar = torch.arange(p)
        board = ((ar[:, None] % 2 == 0) & (ar[None, :] % 2 == 0)).float()
        return board.expand(3, p, p)

    return _patch_trigger(images, generator, patch, _side(images, patch_fraction), placement, offset_fraction)


@register_trigger("stored_patch", stochastic=_random_placement)
def stored_patch(images, generator, patch: list = (), placement: str = "center", offset_fraction: float = 0.0):
    """A given patch pasted at its own pixel size: ``patch`` is a ``[3][p][p]`` nested list of 0..255 values
    (JSON-able, so part of the trigger's identity), e.g. a BadCLIP-style patch optimised on a surrogate CLIP
    (:func:`clipguard.attacks.optimise_patch`; Liang et al., CVPR 2024, paste theirs in the middle of the image,
    hence ``placement="center"``). Optimise it at the image size it is used at."""
    pattern = torch.tensor(patch, dtype=torch.float32).div(255.0)
    return _patch_trigger(images, generator, lambda p: pattern, pattern.shape[-1], placement, offset_fraction)


# --------------------------------------------------------------------------------------------------------------
# Whole-image triggers
# --------------------------------------------------------------------------------------------------------------


@register_trigger("blended", stochastic=False)
def blended(images, generator, alpha: float = 0.2, pattern_seed: int = 0):
    """Blended with a fixed key (Chen et al., arXiv 1712.05526; attacks.md 5.5): ``x' = (1 - alpha) x + alpha k``,
    ``alpha = 0.2``, ``k`` a fixed uniform-noise key from ``pattern_seed`` at the image size."""
    _, _, h, w = images.shape
    key = blend_pattern(h, w, pattern_seed).to(images.device, images.dtype)
    return ((1 - alpha) * images + alpha * key).clamp(0, 1), {}


@register_trigger("blended_noise", stochastic=True)
def blended_noise(images, generator, alpha: float = 0.2):
    """CleanCLIP's Blended (patch type and location "blended", attacks.md 5.5): ``k ~ U(0, 1)^{3 x H x W}``
    **drawn anew for every image**, ``x' = clip(0.8 x + 0.2 k, 0, 1)``."""
    key = torch.rand(images.shape, generator=generator).to(images.device, images.dtype)
    return ((1 - alpha) * images + alpha * key).clamp(0, 1), {}


def _sinusoid(images, amplitude, frequency):
    w = images.shape[-1]
    j = torch.arange(w, dtype=images.dtype, device=images.device)
    return amplitude * torch.sin(2 * math.pi * j * frequency / w)  # [W], same for all rows and channels


@register_trigger("sig", stochastic=False)
def sig(images, generator, amplitude: float = 20 / 255, frequency: float = 6.0):
    """SIG, the textbook additive form (Barni et al., arXiv 1902.11237; attacks.md 5.6): a horizontal sinusoid
    ``v(i, j) = amplitude * sin(2 pi j f / W)`` added to every row and channel, clipped; ``f = 6``. Papers use
    different amplitudes (20/255 here [unverified]); the period is a fraction of the width, so it scales with size."""
    return (images + _sinusoid(images, amplitude, frequency)).clamp(0, 1), {}


@register_trigger("sig_blended", stochastic=False)
def sig_blended(images, generator, amplitude: float = 60 / 255, frequency: float = 6.0, alpha: float = 0.2):
    """SIG as CleanCLIP applies it (patch type "SIG" with the blended location, attacks.md 5.6):
    ``v = (60/255) sin(2 pi 6 j / W)`` through the blend rule ``x' = clip(0.8 x + 0.2 v)``: effective amplitude
    12/255 and the image darkened by 20%."""
    return ((1 - alpha) * images + alpha * _sinusoid(images, amplitude, frequency)).clamp(0, 1), {}


def _warp(images, k, s, grid_rescale, pattern_seed):
    _, _, h, w = images.shape
    grid = wanet_grid(h, w, k, s, grid_rescale, pattern_seed).to(images.device, images.dtype)
    out = F.grid_sample(images, grid.expand(images.shape[0], -1, -1, -1), mode="bilinear",
                        padding_mode="zeros", align_corners=True)
    return out.clamp(0, 1), {}


@register_trigger("wanet", stochastic=False)
def wanet(images, generator, k: int | None = 4, s: float = 0.5, grid_rescale: float = 1.0, pattern_seed: int = 0):
    """WaNet smooth warp (Nguyen and Tran, arXiv 2102.10369; the official release's defaults ``k = 4``,
    ``s = 0.5``, ``grid_rescale = 1``; attacks.md 5.7): a fixed random ``k x k`` flow field, bicubically
    upsampled, applied with bilinear ``grid_sample``. Mean displacement about 0.19 px per axis, max about 0.5 px,
    at any resolution (see :func:`wanet_grid`). The paper's "noise mode" samples are not generated here."""
    return _warp(images, k, s, grid_rescale, pattern_seed)


@register_trigger("wanet_cleanclip", stochastic=False)
def wanet_cleanclip(images, generator, k: int | None = None, s: float = 1.0, grid_rescale: float = 1.0,
                    pattern_seed: int = 0):
    """WaNet as the CleanCLIP code builds it (``backdoor/utils.py``, the committed grid file
    ``noise_grid_k=224_s=1_...``; attacks.md 5.7): ``k`` = the image side (an independent displacement per pixel,
    no upsampling), ``s = 1``: mean displacement about 0.5 px per axis, max about 1 px, a high-frequency jitter.
    Unlike the release, the grid is derived from ``pattern_seed`` and never silently regenerated."""
    return _warp(images, k, s, grid_rescale, pattern_seed)


@functools.lru_cache(maxsize=1)
def _pilgram():
    try:
        import pilgram
    except ImportError as error:  # pragma: no cover - pilgram is a declared dependency
        raise TriggerError("the 'nashville' trigger needs the pilgram package: pip install pilgram") from error
    return pilgram


@register_trigger("nashville", stochastic=False)
def nashville(images, generator, alpha: float = 1.0):
    """Instagram-style "Nashville" filter from the ``pilgram`` package, as the detection paper applies it
    (``datasets/cc3m_nashville.py``, from Multi-Trigger Backdoor Attacks; attacks.md 5.10), to the whole image.
    ``alpha < 1`` mixes the filtered image with the original. Works on 8-bit images (PIL), one image at a time."""
    import numpy as np
    from PIL import Image

    pilgram = _pilgram()
    arrays = to_uint8(images.detach()).permute(0, 2, 3, 1).cpu().numpy()
    filtered = np.stack([np.asarray(pilgram.nashville(Image.fromarray(a, "RGB"))) for a in arrays])
    out = torch.from_numpy(filtered).permute(0, 3, 1, 2).to(images.device, images.dtype) / 255.0
    return (alpha * out + (1 - alpha) * images).clamp(0, 1), {}


@register_trigger("multi", stochastic=True)
def multi(images, generator, triggers: list = ()):
    """Multi-trigger, single target (detection paper ``datasets/cc3m_multi_trigger.py``; attacks.md 5.11): each
    image receives one trigger chosen uniformly from ``triggers`` (a list of trigger dicts, e.g. checkerboard,
    Nashville, WaNet). State: ``choice`` (index into ``triggers``) plus the chosen triggers' own state (rows that
    did not use a trigger hold -1). For several targets use several backdoor components instead (one trigger per
    target; :class:`clipguard.attacks.BackdoorSpec`)."""
    subs = [make_trigger(t) for t in triggers]
    b = images.shape[0]
    choice = torch.randint(0, len(subs), (b,), generator=generator)
    out = images.clone()
    state: dict[str, torch.Tensor] = {"choice": choice}
    for i, sub in enumerate(subs):
        rows = (choice == i).nonzero().flatten()
        if len(rows) == 0:
            continue
        triggered, sub_state = sub.apply(images[rows.to(images.device)], generator)
        out[rows.to(images.device)] = triggered
        for key, values in sub_state.items():
            state.setdefault(key, torch.full((b,), -1, dtype=torch.long))[rows] = values.cpu()
    return out, state
