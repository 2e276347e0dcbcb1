"""Interventions that test why RoCLIP costs accuracy at the book's scale (the comparison chapter's utility question).

In a RoCLIP matching epoch every image of a batch is paired with its nearest pool caption, and the matched
captions of the batch are each other's negatives (:func:`clipguard.defenses.roclip.roclip_loss`). With ten classes
and a pool of a few hundred captions, many images of a batch match the *same* caption; the loss then pushes each of
them away from the caption it was matched to, once for every other image that shares it. ``roclip_distinct`` is
RoCLIP with one change: a matched caption is never a negative for an image matched to the same caption
(:func:`distinct_match_loss`). If shared matches are what costs accuracy, this variant keeps it.

This is an experiment, not a defence of the book: it is registered as an objective only (``"roclip_distinct"``;
import this module before running its specs), not in :data:`clipguard.scenarios.DEFENCES`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .defenses.roclip import RoCLIPConfig, RoCLIPObjective
from .experiments import augment_modules, augmentation_hooks, register_objective

__all__ = ["distinct_match_loss", "RoCLIPDistinctObjective", "distinct_spec"]


def distinct_match_loss(image_features: torch.Tensor, matched_text: torch.Tensor, match: torch.Tensor,
                        logit_scale: torch.Tensor) -> torch.Tensor:
    """RoCLIP's matched-caption CLIP loss in which image ``i`` and the caption matched to image ``j`` are not
    contrasted when ``match[i] == match[j]`` (the same pool entry; ``j != i``), in either direction. With all
    matches distinct it is :func:`clipguard.defenses.roclip.roclip_loss`."""
    if len(match) != len(image_features) or image_features.shape != matched_text.shape:
        raise ValueError(f"need one match per image and matched captions shaped like the images, got "
                         f"{len(match)}, {tuple(image_features.shape)}, {tuple(matched_text.shape)}")
    logits = logit_scale * image_features @ matched_text.T
    match = match.to(logits.device)
    shared = (match[:, None] == match[None, :]) & ~torch.eye(len(match), dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(shared, float("-inf"))
    targets = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


class RoCLIPDistinctObjective(RoCLIPObjective):
    """:class:`~clipguard.defenses.roclip.RoCLIPObjective` whose matching epochs use :func:`distinct_match_loss`."""

    name = "roclip_distinct"

    def matching_loss(self, image_features, matched, match, scale):
        loss = distinct_match_loss(image_features, matched, match, scale)
        return loss, {"distinct_matches": float(len(torch.unique(match))) / len(match)}


def distinct_spec(roclip_spec: dict) -> dict:
    """A defended RoCLIP spec (``scenarios.defended(..., "roclip", ...)``) with the ``roclip_distinct`` objective and
    otherwise the same settings."""
    objective = roclip_spec.get("objective") or {}
    if objective.get("name") != "roclip":
        raise ValueError(f"distinct_spec needs a RoCLIP spec, got objective {objective.get('name')!r}")
    return {**roclip_spec, "objective": {**objective, "name": "roclip_distinct"}}


def _uses(section: dict) -> tuple[str, ...]:
    return ("clipguard.defenses.roclip", *augment_modules(section))


@register_objective("roclip_distinct", uses=_uses)
def _objective(objective_spec: dict, train_data, info: dict) -> RoCLIPDistinctObjective:
    from .data import caption_categories

    config = RoCLIPConfig.from_spec(objective_spec)
    categories = caption_categories(train_data)
    poison = info.get("is_poison")
    adversarial = None if poison is None else torch.where(poison, categories, torch.full_like(categories, -1))
    image_hook, text_hook = augmentation_hooks(config, info.get("seed", 0))
    return RoCLIPDistinctObjective(config, image_hook, text_hook, categories=categories, poison_mask=poison,
                                   adversarial_category=adversarial)
