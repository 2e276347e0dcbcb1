"""Detect and retrain (Huang et al., ICLR 2025, Table 2 and Figure 3): score every training pair with a detector on
the embeddings of the model trained on the (poisoned) data, remove the top-ranked fraction, and train CLIP again on
the rest.

As a spec, the retrained run is the attacked spec plus a ``filter`` section whose ``by`` is the attacked spec: the
run store trains the scoring model once (it is the same run as the undefended baseline), stores its detector
scores (:func:`clipguard.detect.stored_scores`) and keys the retrained run on the scoring run's id.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from .. import scenarios
from ..experiments import register_filter
from ..utils import config_from_spec

__all__ = ["FilterConfig", "top_fraction_mask", "spec"]


@dataclass
class FilterConfig:
    """Which detector ranks the pairs and how many are removed. Defaults: DAO on image embeddings against
    batch-local references of 256 (the paper's regime; see the detection chapter), k = 16, remove 5% ("removing
    5% is sufficient", the paper's Figure 3)."""

    detector: str = "dao"
    fraction: float = 0.05
    k: int = 16
    space: str = "image"
    reference: str = "batch"
    batch_size: int | None = 256
    released_quirks: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.fraction < 1:
            raise ValueError(f"fraction must be in [0, 1), got {self.fraction}")

    @classmethod
    def from_spec(cls, section: dict) -> "FilterConfig":
        return config_from_spec(cls, section, "filter 'detector'", ignore=("name", "by"))

    def variant(self) -> dict:
        """The :func:`clipguard.detect.stored_scores` variant of this config."""
        options = {"names": [self.detector], "k": self.k, "space": self.space, "reference": self.reference,
                   "released_quirks": self.released_quirks}
        if self.reference == "batch":
            options["batch_size"] = self.batch_size
        return options


def top_fraction_mask(scores: np.ndarray, fraction: float) -> torch.Tensor:
    """Keep-mask removing the ``round(fraction * N)`` highest scores (ties broken by row order: stable sort)."""
    scores = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(scores).all():
        raise ValueError(f"{int((~np.isfinite(scores)).sum())} detector score(s) are not finite")
    removed = np.argsort(-scores, kind="stable")[:round(fraction * len(scores))]
    keep = torch.ones(len(scores), dtype=torch.bool)
    keep[torch.from_numpy(removed)] = False
    return keep


@register_filter("detector", uses=("clipguard.detect",))
def _filter(prepared, section: dict, scored, store) -> tuple[torch.Tensor, dict]:
    from ..detect import stored_scores

    config = FilterConfig.from_spec(section)
    scores, _ = stored_scores(store, scored, prepared.train_data, {"filter": config.variant()}, seed=config.seed)
    return top_fraction_mask(scores[f"filter/{config.detector}"], config.fraction), {}


def spec(attacked: dict, **fields) -> dict:
    """``attacked`` retrained without the pairs the detector ranks highest on ``attacked``'s own model."""
    return {**attacked, "filter": {"name": "detector", "by": attacked, **asdict(FilterConfig(**fields))}}


scenarios.register_defence("dao_filter")(spec)
