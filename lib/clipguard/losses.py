"""Contrastive losses on unit embeddings (CLIP's Eq. 1 and the building blocks the defences reuse)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

__all__ = ["clip_loss", "clip_loss_per_sample", "contrastive_ce", "gather_features"]


def contrastive_ce(queries: torch.Tensor, keys: torch.Tensor, logit_scale: torch.Tensor,
                   reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of ``s * queries @ keys.T`` with diagonal targets (one direction of InfoNCE)."""
    logits = logit_scale * queries @ keys.T
    targets = torch.arange(len(queries), device=queries.device)
    return F.cross_entropy(logits, targets, reduction=reduction)


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric CLIP loss: mean of image->text and text->image cross-entropy (log-sum-exp, not exp/sum/log)."""
    if image_features.shape != text_features.shape:
        raise ValueError(f"feature shapes differ: {tuple(image_features.shape)} vs {tuple(text_features.shape)}")
    logits = logit_scale * image_features @ text_features.T
    targets = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def clip_loss_per_sample(image_features: torch.Tensor, text_features: torch.Tensor,
                         logit_scale: torch.Tensor) -> torch.Tensor:
    """Per-pair CLIP loss ``[N]`` (mean of both directions); its mean equals :func:`clip_loss`. Used by ABL."""
    logits = logit_scale * image_features @ text_features.T
    targets = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets, reduction="none") + F.cross_entropy(logits.T, targets, reduction="none"))


def gather_features(*features: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """All-gather features across processes with gradients flowing back to each shard (identity when not
    distributed), so negatives come from the global batch."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features
    from torch.distributed.nn.functional import all_gather

    return tuple(torch.cat(all_gather(f), dim=0) for f in features)
