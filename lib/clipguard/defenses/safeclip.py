"""SafeCLIP as an objective for :func:`clipguard.train.train`.

SafeCLIP ("Better Safe than Sorry", Yang, Gao, Mirzasoleiman, ICML 2024; methods.md section 4) pre-trains in three
phases, each a plan of passes of the one training loop:

1. **unimodal warm-up** (``unimodal_epochs``): image–image and caption–caption contrastive learning on two augmented
   views of every pair (the image policy and EDA of :mod:`clipguard.augment`), optionally with an NNCLR-style
   nearest-neighbour memory bank per modality;
2. **CLIP warm-up** (``clip_warmup_epochs``): the CLIP loss on all data at a low constant learning rate;
3. **main phase**, every epoch: score every pair's image–caption cosine, fit a two-component Gaussian mixture,
   call the pairs with posterior p(clean) >= ``threshold`` safe at the first split, then the top r·N by p(clean)
   with r growing by ``step`` per epoch up to ``cap``; the CLIP loss on the safe set, the unimodal loss on the risky
   rest.

The released code's behaviour is one field away where this implementation differs (methods.md 4.4):

==============================  ===========================================  ==================================
choice                          default here                                 released code
==============================  ===========================================  ==================================
scoring the pairs               evaluation images, original captions         augmented view 1 + EDA caption
                                                                             (``score_augmented=True``)
main-phase learning rate        one warm-up + cosine over the main phase's   two schedulers on a global step:
                                steps actually taken (risky + safe)          warm-up skipped, restarts, rises
GMM threshold, seed             fields (0.9, 0)                              hard-coded 0.9, random_state 0
GMM fit                         float64, cosines sorted                      float32, cosines sorted
ties in the top-r·N cut         by p(clean), then cosine, then row           arbitrary (``torch.argsort``)
first safe fraction r0 > cap    the safe set never shrinks below r0          shrinks to the cap
memory bank before it fills     searched over the entries it has (own view   random Gaussian vectors (lightly)
                                when empty)
==============================  ===========================================  ==================================

Losses (s = the shared learnable logit scale; CE with diagonal targets, in-batch negatives; methods.md 4.2):
``unimodal_loss = ½[CE(s·Ĩ₂ Ĩ₁ᵀ) + CE(s·T̃₂ T̃₁ᵀ)]``, with the memory bank Ĩ₁/T̃₁ replaced by their nearest
neighbour among past view-1 embeddings (queried before insert, detached); ``cross_modal_loss =
½[CE(s·Ĩ₁ T̃₂ᵀ) + CE(s·T̃₁ Ĩ₂ᵀ)]`` (the released ``cross_aug`` default), or with ``cross_aug=False`` the plain CLIP
loss on the un-augmented pair.

What each split did is logged: per epoch the GMM's means, variances and weights, the safe-set size, the poisons
inside it (the safe set's data poison rate) and the poisons' rank percentiles go to ``metrics.jsonl``; the per-pair
arrays (cosine, p(clean), safe mask, poison rank percentiles; the first split's embeddings) are kept in the
objective's state (so a resumed run keeps them) and written to ``safeclip_splits.npz`` in the run folder by a saver
registered in the run's ``info["savers"]`` (present for every poisoned run; :func:`load_splits` reads it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .. import scenarios
from ..evaluate import caption_embeddings, pair_statistics
from ..experiments import AugmentConfig, augmentation_hooks, register_objective
from ..losses import clip_loss, contrastive_ce, gather_features
from ..scenarios import SMALL_IMAGE_POLICY
from ..train import Context, Pass, cosine_lr
from ..utils import atomic_write, config_from_spec, derive_seed
from .roclip import CaptionPool, nearest_in_pool

__all__ = ["SafeCLIPConfig", "SafeCLIPObjective", "GmmSplit", "gmm_split", "clean_order", "rank_percentiles",
           "safe_counts", "safe_rows", "unimodal_loss", "cross_modal_loss", "phase_of", "load_splits",
           "SPLITS_FILE", "PHASES"]  # spec() and defend() are reached as safeclip.spec / safeclip_spec

#: The per-pair split log a run stores (see :meth:`SafeCLIPObjective.save`).
SPLITS_FILE = "safeclip_splits.npz"
#: Phase names, in order; ``phase_id`` in the epoch metrics is the position in this tuple.
PHASES = ("unimodal", "clip_warmup", "main")


# --------------------------------------------------------------------------------------------------------------
# The split: a 2-component GMM on the pair cosines, the safe set
# --------------------------------------------------------------------------------------------------------------

@dataclass
class GmmSplit:
    """SafeCLIP's split of the pairs (methods.md 4.2 b-c): ``p_clean`` is the posterior of the component with the
    larger mean of a 2-component 1-D Gaussian mixture fitted to the cosines; ``safe = p_clean >= threshold``
    (the first split's rule); ``score = -p_clean`` (higher = more suspicious, for detection metrics)."""

    cosine: np.ndarray
    p_clean: np.ndarray
    means: np.ndarray        # [2], component order of the fit
    variances: np.ndarray    # [2]
    weights: np.ndarray      # [2]
    clean: int               # index of the clean (larger-mean) component
    threshold: float

    @property
    def safe(self) -> np.ndarray:
        return self.p_clean >= self.threshold

    @property
    def score(self) -> np.ndarray:
        return -self.p_clean

    def component(self, which: str) -> dict[str, float]:
        """Mean, variance and weight of the ``"clean"`` or ``"risky"`` component."""
        k = self.clean if which == "clean" else 1 - self.clean
        return {"mean": float(self.means[k]), "variance": float(self.variances[k]), "weight": float(self.weights[k])}


def gmm_split(cosine: np.ndarray | torch.Tensor, seed: int = 0, threshold: float = 0.9) -> GmmSplit:
    """Fit scikit-learn's ``GaussianMixture(2, random_state=seed)`` (full covariance, default EM) to the cosines in
    sorted order (so the fit does not depend on the row order), in float64; p(clean) is the posterior of the
    larger-mean component."""
    from sklearn.mixture import GaussianMixture

    cosine = np.asarray(cosine, dtype=np.float64).reshape(-1)
    if len(cosine) < 2 or not np.isfinite(cosine).all():
        bad = np.flatnonzero(~np.isfinite(cosine))
        raise ValueError(f"gmm_split needs >= 2 finite cosines; got {len(cosine)} "
                         f"(first non-finite at row {int(bad[0]) if len(bad) else None})")
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be a probability, got {threshold}")
    gmm = GaussianMixture(2, random_state=seed).fit(np.sort(cosine)[:, None])
    means = gmm.means_[:, 0].copy()
    clean = int(np.argmax(means))
    p_clean = gmm.predict_proba(cosine[:, None])[:, clean]
    return GmmSplit(cosine, p_clean, means, gmm.covariances_.reshape(2).copy(), gmm.weights_.copy(), clean,
                    float(threshold))


def clean_order(p_clean: np.ndarray, cosine: np.ndarray) -> np.ndarray:
    """Rows from most to least clean-looking: by p(clean) descending, ties (p saturates at 1) by cosine descending,
    then by row."""
    p_clean, cosine = np.asarray(p_clean), np.asarray(cosine)
    return np.lexsort((np.arange(len(p_clean)), -cosine, -p_clean))


def rank_percentiles(order: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Where ``rows`` sit in ``order`` (:func:`clean_order`), as a percentile of the pairs: 0 = the most
    clean-looking pair, just under 100 = the least."""
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order))
    return 100.0 * position[np.asarray(rows, dtype=np.int64)] / len(order)


def safe_counts(n: int, first_count: int, step: float, cap: float, epochs: int) -> list[int]:
    """Safe-set size of each main-phase epoch: the first split's count, then ``floor(r_k·n)`` with
    ``r_k = min(r_0 + k·step, max(cap, r_0))`` and ``r_0 = first_count / n`` (the safe set grows by ``step`` up to
    the cap and never shrinks below the first split)."""
    if not 0 <= first_count <= n:
        raise ValueError(f"first_count must be in [0, {n}], got {first_count}")
    r0 = first_count / n
    counts = [first_count]
    for k in range(1, epochs):
        r = min(r0 + k * step, max(cap, r0))
        counts.append(min(n, int(math.floor(r * n + 1e-9))))
    return counts


def safe_rows(split: GmmSplit, count: int | None = None) -> np.ndarray:
    """Boolean mask of the safe rows: ``p_clean >= threshold`` when ``count`` is None (first split), else the
    ``count`` most clean-looking rows (:func:`clean_order`)."""
    if count is None:
        return split.safe.copy()
    mask = np.zeros(len(split.p_clean), dtype=bool)
    mask[clean_order(split.p_clean, split.cosine)[:count]] = True
    return mask


# --------------------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------------------

def unimodal_loss(image_view1: torch.Tensor, image_view2: torch.Tensor, text_view1: torch.Tensor,
                  text_view2: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """SafeCLIP's in-modal loss ``½[CE(s·I₂I₁ᵀ) + CE(s·T₂T₁ᵀ)]``: view 2 as rows, view 1 (or its memory-bank
    neighbour) as columns, one direction per modality, as released."""
    return 0.5 * (contrastive_ce(image_view2, image_view1, logit_scale)
                  + contrastive_ce(text_view2, text_view1, logit_scale))


def cross_modal_loss(image_view1: torch.Tensor, image_view2: torch.Tensor, text_view1: torch.Tensor,
                     text_view2: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """SafeCLIP's cross-augmented CLIP loss ``½[CE(s·I₁T₂ᵀ) + CE(s·T₁I₂ᵀ)]`` (two different matrices; with a single
    view, ``I₁ = I₂`` and ``T₁ = T₂``, it is the CLIP loss)."""
    return 0.5 * (contrastive_ce(image_view1, text_view2, logit_scale)
                  + contrastive_ce(text_view1, image_view2, logit_scale))


# --------------------------------------------------------------------------------------------------------------
# Configuration and objective
# --------------------------------------------------------------------------------------------------------------

@dataclass
class SafeCLIPConfig(AugmentConfig):
    """SafeCLIP's settings; an objective spec ``{"name": "safeclip", ...}`` names any of these fields. Defaults
    are the released code's (``src/parser.py`` and the README command), except where methods.md 4.4 fixes a
    defect (``score_augmented``)."""

    unimodal_epochs: int = 5              # W_in, --inmodal_warmup
    clip_warmup_epochs: int = 1           # W_mm, --multimodal_warmup
    warmup_lr: float | None = None        # unimodal warm-up base lr (--in_lr); None: the run's lr
    low_lr: float | None = None           # the CLIP warm-up's constant lr; None: 0.01 x the run's lr (5e-6 / 5e-4)
    main_lr: float | None = None          # main-phase base lr (--cross_lr = --in_lr); None: the run's lr
    threshold: float = 0.9                # first split: p(clean) >= threshold is safe
    step: float = 0.01                    # safe fraction added per main epoch (--update_filter_ratio)
    cap: float = 0.85                     # largest safe fraction (--cap_filter_ratio)
    gmm_seed: int = 0                     # GaussianMixture random_state
    memory_bank: bool = True              # NNCLR-style nearest neighbour for view 1 (README command: on)
    memory_bank_size: int = 256           # entries per modality (--memory_bank_size)
    cross_aug: bool = True                # cross-augmented two-view CLIP loss (released default); False: plain CLIP
    risky_unimodal: bool = True           # unimodal loss on the risky set (False: --cross_inmodal ablation)
    score_augmented: bool = False         # released: score on augmented view 1 + EDA caption
    score_batch_size: int = 512
    augment: bool = True                  # two augmented views are SafeCLIP's unimodal signal
    image_policy: dict | None = field(default_factory=lambda: dict(SMALL_IMAGE_POLICY))
    caption_resample: bool = False        # released: two EDA captions drawn once per pair

    def __post_init__(self) -> None:
        if not self.augment:
            raise ValueError("SafeCLIP's unimodal loss contrasts two augmented views: augment must be True")
        if self.unimodal_epochs < 0 or self.clip_warmup_epochs < 0:
            raise ValueError(f"warm-up lengths must be >= 0, got unimodal_epochs={self.unimodal_epochs}, "
                             f"clip_warmup_epochs={self.clip_warmup_epochs}")
        if not (0 <= self.threshold <= 1 and 0 <= self.step <= 1 and 0 < self.cap <= 1):
            raise ValueError(f"need threshold, step in [0, 1] and cap in (0, 1], got {self.threshold}, {self.step}, "
                             f"{self.cap}")
        for name in ("warmup_lr", "low_lr", "main_lr"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive finite number or None, got {value}")
        if self.memory_bank_size < 1 or self.score_batch_size < 1:
            raise ValueError(f"memory_bank_size and score_batch_size must be positive, got {self.memory_bank_size}, "
                             f"{self.score_batch_size}")

    @classmethod
    def from_spec(cls, spec: dict) -> "SafeCLIPConfig":
        return config_from_spec(cls, spec, "objective 'safeclip'")

    def warmup_epochs(self) -> int:
        return self.unimodal_epochs + self.clip_warmup_epochs


def phase_of(epoch: int, config: SafeCLIPConfig) -> str:
    """The phase of 1-based ``epoch``: ``"unimodal"``, ``"clip_warmup"`` or ``"main"``."""
    if epoch <= config.unimodal_epochs:
        return "unimodal"
    if epoch <= config.warmup_epochs():
        return "clip_warmup"
    return "main"


class SafeCLIPObjective:
    """SafeCLIP as a training objective (see the module docstring).

    ``image_augment(images, generator)``: the image policy (two independent draws give the two views);
    ``caption_views``: two caption hooks ``(captions, epoch, indices) -> captions`` (EDA with different seeds);
    ``poison_mask``: which training rows are poisoned (for the logs only; never used to train)."""

    name = "safeclip"

    def __init__(self, config: SafeCLIPConfig, image_augment: Callable, caption_views: Sequence[Callable],
                 poison_mask: torch.Tensor | None = None):
        if len(caption_views) != 2:
            raise ValueError(f"SafeCLIP needs two caption views, got {len(caption_views)}")
        self.config = config
        self.image_augment = image_augment
        self.caption_views = tuple(caption_views)
        self.poison_mask = poison_mask.bool().cpu() if poison_mask is not None else None
        self.banks: dict[str, CaptionPool] | None = None
        self.first_count: int | None = None      # safe-set size of the first split
        self.main_start_step: int | None = None  # global step at which the main phase began
        self.main_steps: int | None = None       # steps the main phase takes (planned at the first split)
        self.splits: dict[int, dict[str, np.ndarray]] = {}   # epoch -> per-pair arrays
        self.first_embeddings: dict[str, np.ndarray] = {}    # image/text embeddings at the first split
        self._epoch_log: dict[str, float] = {}

    # -- planning -----------------------------------------------------------------------------------------------
    def _main_epochs(self, ctx: Context) -> int:
        return ctx.config.epochs - self.config.warmup_epochs()

    def plan_epoch(self, ctx: Context) -> list[Pass]:
        if self._main_epochs(ctx) < 1:
            raise ValueError(f"SafeCLIP needs more epochs ({ctx.config.epochs}) than its warm-up "
                             f"({self.config.unimodal_epochs} unimodal + {self.config.clip_warmup_epochs} CLIP)")
        everything = torch.arange(len(ctx.data))
        phase = phase_of(ctx.epoch, self.config)
        self._epoch_log = {"phase_id": float(PHASES.index(phase))}
        if phase == "unimodal":
            return [Pass("unimodal", everything, lr=self.config.warmup_lr or ctx.config.lr)]
        if phase == "clip_warmup":
            return [Pass("clip_warmup", everything, lr=self.config.low_lr or 0.01 * ctx.config.lr, constant_lr=True)]
        safe = torch.from_numpy(self._split(ctx))
        plan = []
        if self.config.risky_unimodal:
            plan.append(Pass("risky", torch.nonzero(~safe)[:, 0], lr=self.config.main_lr or ctx.config.lr))
        plan.append(Pass("safe", torch.nonzero(safe)[:, 0], lr=self.config.main_lr or ctx.config.lr))
        return plan

    def _split(self, ctx: Context) -> np.ndarray:
        """Score every pair, fit the GMM, choose the safe rows of this epoch, log it; returns the safe mask."""
        n, main_epoch = len(ctx.data), ctx.epoch - self.config.warmup_epochs() - 1
        image, text = self.pair_embeddings(ctx)
        split = gmm_split((image * text).sum(1).numpy(), self.config.gmm_seed, self.config.threshold)
        if main_epoch == 0 and self.first_count is None:
            self.first_count = int(split.safe.sum())
            self.first_embeddings = {"image": image.numpy().astype(np.float16), "text": text.numpy().astype(np.float16)}
        if self.main_start_step is None:
            self.main_start_step = ctx.step
            counts = safe_counts(n, self.first_count, self.config.step, self.config.cap, self._main_epochs(ctx))
            batch = ctx.config.batch_size
            self.main_steps = sum(c // batch + ((n - c) // batch if self.config.risky_unimodal else 0) for c in counts)
        counts = safe_counts(n, self.first_count, self.config.step, self.config.cap, main_epoch + 1)
        safe = safe_rows(split, None if main_epoch == 0 else counts[main_epoch])
        self._log_split(ctx.epoch, split, safe)
        return safe

    @torch.no_grad()
    def pair_embeddings(self, ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit image and caption embeddings of every pair (model in eval mode): evaluation images and original
        captions, or with ``score_augmented`` the released code's augmented view 1 and EDA caption 1."""
        model, data, size = ctx.model, ctx.data, self.config.score_batch_size
        was_training = model.training
        model.eval()
        images, captions = [], []
        for number, chunk in enumerate(torch.arange(len(data)).split(size)):
            pixels = data.float_images(chunk)
            chunk_captions = [data.captions[i] for i in chunk.tolist()]
            if self.config.score_augmented:
                pixels = self.image_augment(pixels, ctx.generator("safeclip-score", number))
                chunk_captions = self.caption_views[0](chunk_captions, ctx.epoch, chunk)
            images.append(model.encode_image(pixels.to(ctx.device)).float().cpu())
            captions += chunk_captions
        texts = caption_embeddings(model, captions, size).cpu()  # each distinct caption once
        model.train(was_training)
        return torch.cat(images), texts

    def _log_split(self, epoch: int, split: GmmSplit, safe: np.ndarray) -> None:
        clean, risky = split.component("clean"), split.component("risky")
        log = {"split_safe_size": float(safe.sum()), "split_safe_fraction": float(safe.mean()),
               "split_above_threshold": float(split.safe.sum()),
               "gmm_clean_mean": clean["mean"], "gmm_clean_variance": clean["variance"],
               "gmm_clean_weight": clean["weight"], "gmm_risky_mean": risky["mean"],
               "gmm_risky_variance": risky["variance"], "gmm_risky_weight": risky["weight"],
               "cosine_mean": float(split.cosine.mean())}
        arrays = {"cosine": split.cosine.astype(np.float32), "p_clean": split.p_clean.astype(np.float32),
                  "safe": safe, "gmm": np.stack([split.means, split.variances, split.weights]),
                  "clean_component": np.array(split.clean)}
        if self.poison_mask is not None and self.poison_mask.any():
            poison = self.poison_mask.numpy()
            inside = int((safe & poison).sum())
            percentiles = rank_percentiles(clean_order(split.p_clean, split.cosine), np.flatnonzero(poison))
            arrays["poison_rank_percentile"] = percentiles.astype(np.float32)
            log.update({"split_poisons_in_safe": float(inside), "split_poisons": float(poison.sum()),
                        "split_safe_poison_rate": inside / max(1, int(safe.sum())),
                        "split_data_poison_rate": float(poison.mean()),
                        "poison_rank_percentile_min": float(percentiles.min()),
                        "poison_rank_percentile_median": float(np.median(percentiles)),
                        "cosine_poison_mean": float(split.cosine[poison].mean()),
                        "cosine_clean_mean": float(split.cosine[~poison].mean())})
        self.splits[epoch] = arrays
        self._epoch_log.update(log)

    # -- learning rate: one schedule per phase ---------------------------------------------------------------------
    def learning_rate(self, ctx: Context, plan: Pass, default_lr: float) -> float:
        """Unimodal phase: linear warm-up then cosine over the phase's steps; CLIP warm-up: the constant low lr;
        main phase: one warm-up + cosine over the steps the main phase takes (risky and safe passes together), on a
        step counter local to the phase (no restart)."""
        if plan.constant_lr:
            return default_lr
        if plan.name == "unimodal":
            local, total = ctx.step, self.config.unimodal_epochs * (len(ctx.data) // ctx.config.batch_size)
        else:
            local, total = ctx.step - self.main_start_step, self.main_steps
        return cosine_lr(local, plan.lr, min(ctx.config.warmup_steps, total), total)

    # -- losses ---------------------------------------------------------------------------------------------------
    def _views(self, ctx: Context, model: torch.nn.Module, indices: torch.Tensor):
        """Unit embeddings of two augmented views of each pair's image and caption (one forward pass)."""
        images = ctx.data.float_images(indices)
        views = [self.image_augment(images, ctx.generator("safeclip-view", v, ctx.step, ctx.rank)) for v in (1, 2)]
        captions = [ctx.data.captions[i] for i in indices.tolist()]
        texts = [hook(captions, ctx.epoch, indices) for hook in self.caption_views]
        tokens = ctx.model.tokenize(texts[0] + texts[1]).to(ctx.device, non_blocking=True)
        image, text, scale = model(torch.cat(views).to(ctx.device, non_blocking=True), tokens)
        n = len(indices)
        image1, image2, text1, text2 = gather_features(image[:n], image[n:], text[:n], text[n:])
        return image1, image2, text1, text2, scale

    def loss(self, ctx: Context, pass_name: str, model: torch.nn.Module, indices: torch.Tensor):
        if pass_name in ("safe", "clip_warmup") and not self.config.cross_aug:
            images = ctx.data.float_images(indices).to(ctx.device, non_blocking=True)
            image, text, scale = model(images, ctx.tokens(indices))
            image, text = gather_features(image, text)
            return clip_loss(image, text, scale), {}
        image1, image2, text1, text2, scale = self._views(ctx, model, indices)
        if pass_name in ("safe", "clip_warmup"):
            return cross_modal_loss(image1, image2, text1, text2, scale), {}
        if pass_name not in ("unimodal", "risky"):
            raise ValueError(f"unknown SafeCLIP pass {pass_name!r}")
        if self.config.memory_bank:
            image1, text1 = self._nearest(image1, "image"), self._nearest(text1, "text")
        return unimodal_loss(image1, image2, text1, text2, scale), {}

    def _nearest(self, view1: torch.Tensor, modality: str) -> torch.Tensor:
        """View 1 replaced by its nearest neighbour among past view-1 embeddings (query, then insert); the
        batch's own view 1 while the bank is empty."""
        if self.banks is None:
            self.banks = {m: CaptionPool(self.config.memory_bank_size, view1.shape[1]) for m in ("image", "text")}
        bank = self.banks[modality]
        if bank.filled == 0:
            target = view1
        else:
            stored = bank.embeddings()
            target = stored[nearest_in_pool(view1.detach(), stored).cpu()].to(view1.device, view1.dtype)
        bank.push(view1.detach())
        return target

    # -- logging and state ------------------------------------------------------------------------------------------
    def end_epoch(self, ctx: Context) -> dict[str, float]:
        out = dict(self._epoch_log)
        if self.banks is not None:
            out["memory_bank_filled"] = float(self.banks["image"].filled)
        return out

    def state_dict(self) -> dict:
        state = {"first_count": self.first_count, "main_start_step": self.main_start_step,
                 "main_steps": self.main_steps,
                 "splits": {int(e): {k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()}
                            for e, arrays in self.splits.items()},
                 "first_embeddings": {k: torch.from_numpy(v) for k, v in self.first_embeddings.items()}}
        if self.banks is not None:
            state["banks"] = {m: bank.state_dict() for m, bank in self.banks.items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        self.first_count, self.main_start_step = state["first_count"], state["main_start_step"]
        self.main_steps = state["main_steps"]
        self.splits = {int(e): {k: v.numpy() for k, v in arrays.items()} for e, arrays in state["splits"].items()}
        self.first_embeddings = {k: v.numpy() for k, v in state["first_embeddings"].items()}
        self.banks = None
        if "banks" in state:
            self.banks = {}
            for modality, bank_state in state["banks"].items():
                bank = CaptionPool(len(bank_state["buffer"]), bank_state["buffer"].shape[1])
                bank.load_state_dict(bank_state)
                self.banks[modality] = bank

    def save(self, path: str | Path) -> Path:
        """Write the per-pair split log: ``epochs`` [M] (the main-phase epochs), ``cosine``, ``p_clean`` [M, N]
        float32, ``safe`` [M, N] bool, ``gmm`` [M, 3, 2] (means, variances, weights per component),
        ``clean_component`` [M], ``poison_rank_percentile`` [M, P] and ``is_poison`` [N] when poisons are known,
        and the first split's unit embeddings ``first_image``, ``first_text`` [N, D] (float16)."""
        epochs = sorted(self.splits)
        arrays = {"epochs": np.array(epochs, dtype=np.int64)}
        for key in (self.splits[epochs[0]] if epochs else {}):
            arrays[key] = np.stack([self.splits[e][key] for e in epochs])
        if self.poison_mask is not None:
            arrays["is_poison"] = self.poison_mask.numpy()
        for key, value in self.first_embeddings.items():
            arrays[f"first_{key}"] = value

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as stream:
                np.savez_compressed(stream, **arrays)
        return atomic_write(path, write)

    def identity(self) -> dict:
        return {"objective": self.name, **asdict(self.config), "image_augment": repr(self.image_augment),
                "caption_views": [repr(v) for v in self.caption_views]}


def load_splits(run) -> dict[str, np.ndarray]:
    """The per-pair split log of a stored SafeCLIP run (a :class:`~clipguard.runs.Run` or its folder)."""
    folder = Path(getattr(run, "path", run))
    path = folder / SPLITS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{folder.name}: no {SPLITS_FILE} (not a SafeCLIP run, or one without poisons)")
    with np.load(path) as stored:
        return {key: stored[key] for key in stored.files}


# --------------------------------------------------------------------------------------------------------------
# Registration: the objective spec, the book's defence entry
# --------------------------------------------------------------------------------------------------------------

def spec(**fields) -> dict:
    """The ``safeclip`` objective spec with every field written out (the released code's defaults and the book's
    image policy), so chapters asking for the same configuration share the stored run."""
    return {"name": "safeclip", **asdict(SafeCLIPConfig.from_spec(fields))}


@register_objective("safeclip", uses=("clipguard.augment", "clipguard.defenses.roclip"))
def _objective(objective_spec: dict, train_data, info: dict) -> SafeCLIPObjective:
    config = SafeCLIPConfig.from_spec(objective_spec)
    seed = info.get("seed", 0)
    image_policy, first = augmentation_hooks(config, derive_seed(seed, "safeclip-caption-view", 1))
    # the second caption view: another seed, the same EDA (one WordNet synonym table)
    second = replace(first, seed=derive_seed(seed, "safeclip-caption-view", 2))
    objective = SafeCLIPObjective(config, image_policy, [first, second], poison_mask=info.get("is_poison"))
    savers = info.get("savers")
    if isinstance(savers, list):  # the poisoned runs' list, shared with the experiment: written into the run
        savers.append(lambda work: objective.save(Path(work) / SPLITS_FILE))
    return objective


#: Share of the run's epochs the released default spends on the unimodal warm-up (5 of 32).
UNIMODAL_SHARE = 5 / 32
#: lr x steps of the released low-lr CLIP epoch on 1M pairs: 5e-6 x 1,953 steps (batch 512) = 0.01 to 5e-6 x 7,812
#: (batch 128) = 0.04; the book's defence keeps the middle, 0.02 (see :func:`defend`).
LOW_LR_TIMES_STEPS = 0.02


@scenarios.register_defence("safeclip")
def defend(attacked: dict, **fields) -> dict:
    """SafeCLIP in place of CLIP pre-training at the attacked run's epoch budget: the released schedule's share of
    unimodal warm-up (5 of 32 epochs, at least 1), one low-lr CLIP epoch, the rest main phase. A run too short for
    one main epoch is lengthened to the minimum (warm-up + 1; only ``smoke``, 1 epoch, is).

    The low lr keeps the released CLIP epoch's lr x steps (:data:`LOW_LR_TIMES_STEPS`), capped at the run's lr:
    the released 5e-6 is 0.01x the main lr over thousands of steps, but an epoch here has ~80, and 0.01x the lr
    over 80 steps leaves the towers unaligned (measured in the chapter's ablation)."""
    epochs, train = attacked["train"]["epochs"], attacked["train"]
    steps = max(1, (attacked["data"].get("n") or 10000) // train["batch_size"])
    fields.setdefault("unimodal_epochs", max(1, round(UNIMODAL_SHARE * epochs)))
    fields.setdefault("clip_warmup_epochs", 1)
    fields.setdefault("low_lr", min(train["lr"], LOW_LR_TIMES_STEPS / steps))
    objective = spec(**fields)
    needed = objective["unimodal_epochs"] + objective["clip_warmup_epochs"] + 1
    return {**attacked, "objective": objective, "train": {**attacked["train"], "epochs": max(epochs, needed)}}
