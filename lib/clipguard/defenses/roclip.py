"""RoCLIP as an objective for :func:`clipguard.train.train`.

RoCLIP (Yang, Gao, Mirzasoleiman, NeurIPS 2023; methods.md section 3): keep a FIFO pool of caption embeddings;
every K-th epoch match each (augmented) image to its nearest pool caption and train on those pairs (Eq. 2), plain
CLIP loss on augmented data in the other epochs. The choices the paper leaves open are explicit parameters with the
paper's reading as default and the released code's behaviour one switch away:

==========================  ==========================================  =====================================
choice                      default (paper)                             released code
==========================  ==========================================  =====================================
pool initialisation         embeddings of P random training captions    random unit vectors (``"random"``)
pool refresh                after every mini-batch, in every epoch       only in RoCLIP epochs
matching epochs             epoch % K == 0 (1-based), K = 3             same, K = 2 by default
augmentation                images and captions, every epoch            same (EDA fixed once per caption)
==========================  ==========================================  =====================================

Pool entries are stored detached, so in RoCLIP epochs the text tower gets no gradient (inherent to a stored pool,
also in the released code); a zero-weighted CLIP term keeps it in the graph for DDP, as the released code does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .. import scenarios
from ..data import caption_categories
from ..experiments import AugmentConfig, augment_modules, augmentation_hooks, register_objective
from ..losses import clip_loss, gather_features
from ..scenarios import SMALL_IMAGE_POLICY
from ..train import ClipObjective, Context, Pass
from ..utils import config_from_spec

__all__ = ["CaptionPool", "RoCLIPConfig", "RoCLIPObjective", "roclip_loss", "nearest_in_pool", "spec"]


class CaptionPool:
    """FIFO queue of ``size`` caption embeddings (unit vectors) with a category id per entry (-1 = none).

    ``embeddings()`` returns entries oldest first; ``push`` appends a batch at the end and drops the oldest."""

    def __init__(self, size: int, dim: int):
        if size < 1:
            raise ValueError(f"pool size must be positive, got {size}")
        self.size, self.dim = size, dim
        self.buffer = torch.zeros(size, dim)
        self.categories = torch.full((size,), -1, dtype=torch.long)
        self.start = 0          # index of the oldest entry
        self.filled = 0

    def push(self, embeddings: torch.Tensor, categories: torch.Tensor | None = None) -> None:
        embeddings = embeddings.detach().float().cpu()
        if categories is None:
            categories = torch.full((len(embeddings),), -1, dtype=torch.long)
        if len(embeddings) >= self.size:  # only the newest `size` survive
            embeddings, categories = embeddings[-self.size:], categories[-self.size:]
        n = len(embeddings)
        end = (self.start + self.filled) % self.size
        positions = (end + torch.arange(n)) % self.size
        self.buffer[positions] = embeddings
        self.categories[positions] = categories.cpu().long()
        overflow = max(0, self.filled + n - self.size)
        self.start = (self.start + overflow) % self.size
        self.filled = min(self.size, self.filled + n)

    def order(self) -> torch.Tensor:
        return (self.start + torch.arange(self.filled)) % self.size

    def embeddings(self) -> torch.Tensor:
        return self.buffer[self.order()]

    def entry_categories(self) -> torch.Tensor:
        return self.categories[self.order()]

    def state_dict(self) -> dict:
        return {"buffer": self.buffer.clone(), "categories": self.categories.clone(),
                "start": self.start, "filled": self.filled}

    def load_state_dict(self, state: dict) -> None:
        self.buffer, self.categories = state["buffer"].clone(), state["categories"].clone()
        self.start, self.filled = int(state["start"]), int(state["filled"])


def nearest_in_pool(queries: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """Index of each query's nearest pool entry in Euclidean distance (for unit vectors: largest cosine)."""
    distances = torch.cdist(queries.float(), pool.to(queries.device).float())
    return distances.argmin(dim=1)


def roclip_loss(image_features: torch.Tensor, matched_text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """RoCLIP Eq. 2 (both terms negative; the printed first term's missing sign is a typo): the CLIP loss with each
    image's own caption replaced by its nearest pool caption; negatives come from the batch's matches."""
    return clip_loss(image_features, matched_text, logit_scale)


@dataclass
class RoCLIPConfig(AugmentConfig):
    """RoCLIP's settings; an objective spec ``{"name": "roclip", ...}`` names any of these fields."""

    pool_size: int | None = None          # entries; None: pool_fraction of the training set
    pool_fraction: float = 0.02           # paper: 2% of the training set
    every: int = 3                        # K: RoCLIP epochs are those with epoch % K == 0 (1-based)
    pool_init: str = "captions"           # "captions" (paper) or "random" (released code: random unit vectors)
    refresh_in_clip_epochs: bool = True   # paper: after every mini-batch; released code: RoCLIP epochs only
    augment: bool = True                  # image + text augmentation in every epoch
    image_policy: dict | None = field(default_factory=lambda: dict(SMALL_IMAGE_POLICY))

    def __post_init__(self) -> None:
        if self.pool_init not in ("captions", "random"):
            raise ValueError(f"pool_init must be 'captions' or 'random', got {self.pool_init!r}")
        if self.every < 1 or (self.pool_size is not None and self.pool_size < 1) or not 0 < self.pool_fraction <= 1:
            raise ValueError(f"need every >= 1, pool_size >= 1 and 0 < pool_fraction <= 1, got {self.every}, "
                             f"{self.pool_size}, {self.pool_fraction}")

    @classmethod
    def from_spec(cls, spec: dict) -> "RoCLIPConfig":
        return config_from_spec(cls, spec, "objective 'roclip'")

    def pool_entries(self, n_train: int) -> int:
        return self.pool_size or max(1, round(self.pool_fraction * n_train))


class RoCLIPObjective(ClipObjective):
    """RoCLIP as a training objective.

    ``categories``: category id of each training caption (-1 = none), for the Fig. 2 statistics;
    ``poison_mask`` and ``adversarial_category``: which rows are poisoned and the category their caption pushes
    (-1 for clean rows). With these, every RoCLIP epoch logs the fraction of clean images matched to a caption of
    their own caption's category and of poisoned images matched to the adversarial category."""

    name = "roclip"

    def __init__(self, config: RoCLIPConfig, image_augment: Callable | None = None,
                 text_augment: Callable | None = None, categories: torch.Tensor | None = None,
                 poison_mask: torch.Tensor | None = None, adversarial_category: torch.Tensor | None = None):
        super().__init__(image_augment if config.augment else None, text_augment if config.augment else None)
        self.config = config
        self.categories = categories
        self.poison_mask = poison_mask
        self.adversarial_category = adversarial_category
        self.pool: CaptionPool | None = None
        self._pool_entries = config.pool_size or 1
        self._stats: dict[str, list[float]] = {}

    def is_roclip_epoch(self, epoch: int) -> bool:
        return epoch % self.config.every == 0

    def plan_epoch(self, ctx: Context) -> list[Pass]:
        self._pool_entries = self.config.pool_entries(len(ctx.data))
        self.prepare_captions(ctx)
        name = "roclip" if self.is_roclip_epoch(ctx.epoch) else "clip"
        self._stats = {"clean_same": [], "clean_n": [], "poison_adv": [], "poison_n": []}
        return [Pass(name, torch.arange(len(ctx.data)))]

    def _category(self, indices: torch.Tensor) -> torch.Tensor:
        if self.categories is None:
            return torch.full((len(indices),), -1, dtype=torch.long)
        return self.categories[indices.cpu()]

    @torch.no_grad()
    def _initialise_pool(self, ctx: Context, dim: int) -> None:
        self.pool = CaptionPool(self._pool_entries, dim)
        generator = ctx.generator("pool-init")
        if self.config.pool_init == "random":
            self.pool.push(F.normalize(torch.randn(self._pool_entries, dim, generator=generator), dim=1))
            return
        rows = torch.randperm(len(ctx.data), generator=generator)[:self._pool_entries]
        was_training = ctx.model.training
        ctx.model.eval()
        for chunk in rows.split(512):
            self.pool.push(ctx.model.encode_text(ctx.tokens(chunk)).float(), self._category(chunk))
        ctx.model.train(was_training)

    def loss(self, ctx: Context, pass_name: str, model: torch.nn.Module, indices: torch.Tensor):
        images, tokens = self.batch(ctx, indices)
        image_features, text_features, scale = model(images, tokens)
        all_indices = indices
        if ctx.world_size > 1:
            (all_indices,) = gather_features(indices.to(ctx.device))
            all_indices = all_indices.cpu()
        image_features, text_features = gather_features(image_features, text_features)
        if self.pool is None:
            self._initialise_pool(ctx, text_features.shape[1])
        logs: dict[str, float] = {}
        if pass_name == "roclip":
            match = nearest_in_pool(image_features.detach(), self.pool.embeddings())  # query before insert
            matched = self.pool.embeddings()[match].to(image_features.device, image_features.dtype)
            self._record(all_indices, self.pool.entry_categories()[match.cpu()])
            loss, logs = self.matching_loss(image_features, matched, match, scale)
            loss = loss + 0.0 * clip_loss(image_features, text_features, scale)
        else:
            loss = clip_loss(image_features, text_features, scale)
        if pass_name == "roclip" or self.config.refresh_in_clip_epochs:
            self.pool.push(text_features.detach(), self._category(all_indices))
        return loss, logs

    def matching_loss(self, image_features: torch.Tensor, matched: torch.Tensor, match: torch.Tensor,
                      scale: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of a matching epoch's batch (Eq. 2) and its logs; ``match`` holds each image's pool entry."""
        return roclip_loss(image_features, matched, scale), {}

    def _record(self, indices: torch.Tensor, matched_categories: torch.Tensor) -> None:
        own = self._category(indices)
        poisoned = (self.poison_mask[indices] if self.poison_mask is not None
                    else torch.zeros(len(indices), dtype=torch.bool))
        clean = ~poisoned & (own >= 0)
        self._stats["clean_same"].append(float((matched_categories[clean] == own[clean]).sum()))
        self._stats["clean_n"].append(float(clean.sum()))
        if poisoned.any() and self.adversarial_category is not None:
            adversarial = self.adversarial_category[indices][poisoned]
            self._stats["poison_adv"].append(float((matched_categories[poisoned] == adversarial).sum()))
            self._stats["poison_n"].append(float(poisoned.sum()))

    def end_epoch(self, ctx: Context) -> dict[str, float]:
        out = {"roclip_epoch": float(self.is_roclip_epoch(ctx.epoch))}
        if self.pool is not None:
            out["pool_size"] = float(self.pool.size)
            out["pool_megabytes"] = self.pool.buffer.element_size() * self.pool.buffer.nelement() / 2**20
        if self.is_roclip_epoch(ctx.epoch):
            if sum(self._stats["clean_n"]):
                out["clean_matched_same_category"] = sum(self._stats["clean_same"]) / sum(self._stats["clean_n"])
            if sum(self._stats["poison_n"]):
                out["poison_matched_adversarial_category"] = (sum(self._stats["poison_adv"])
                                                              / sum(self._stats["poison_n"]))
        return out

    def state_dict(self) -> dict:
        return {"pool": self.pool.state_dict()} if self.pool is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if "pool" in state:
            pool = state["pool"]
            self.pool = CaptionPool(len(pool["buffer"]), pool["buffer"].shape[1])
            self.pool.load_state_dict(pool)

    def identity(self) -> dict:
        return {"objective": self.name, **asdict(self.config), "image_augment": repr(self.image_augment),
                "text_augment": repr(self.text_augment)}


# --------------------------------------------------------------------------------------------------------------
# Registration: the objective spec, the book's defence entry
# --------------------------------------------------------------------------------------------------------------

def spec(**fields) -> dict:
    """The ``roclip`` objective spec with every field written out (the paper's defaults and the book's image
    policy), so chapters asking for the same configuration produce the same spec and share the stored run."""
    return {"name": "roclip", **asdict(RoCLIPConfig.from_spec(fields))}


@register_objective("roclip", uses=augment_modules)
def _objective(objective_spec: dict, train_data, info: dict) -> RoCLIPObjective:
    config = RoCLIPConfig.from_spec(objective_spec)
    categories = caption_categories(train_data)
    poison = info.get("is_poison")
    adversarial = None
    if poison is not None:
        adversarial = torch.where(poison, categories, torch.full_like(categories, -1))
    image_hook, text_hook = augmentation_hooks(config, info.get("seed", 0))
    return RoCLIPObjective(config, image_hook, text_hook, categories=categories, poison_mask=poison,
                           adversarial_category=adversarial)


@scenarios.register_defence("roclip")
def defend(attacked: dict, **fields) -> dict:
    """RoCLIP in place of CLIP pre-training; ``every`` is capped at the run's epochs so that short runs still
    have a matching epoch."""
    every = min(fields.pop("every", RoCLIPConfig.every), attacked["train"]["epochs"])
    return {**attacked, "objective": spec(every=every, **fields)}
