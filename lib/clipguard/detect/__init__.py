"""Backdoor-sample detection on CLIP embeddings (Huang et al., ICLR 2025; detectors.md).

:mod:`.knn` (exact blocked kNN, faiss approximate kNN), :mod:`.scores` (detectors, higher = more suspicious),
:mod:`.metrics` (AUROC, PR-AUC, FPR/error at TPR 95%, ...), :mod:`.cognitive_distillation` (the per-image mask
baseline, on a model rather than embeddings). This package only consumes embeddings of stored runs,
so it is excluded from the run store's code identity (editing it never retrains).
"""

from .knn import *  # noqa: F401,F403
from .metrics import *  # noqa: F401,F403
from .scores import *  # noqa: F401,F403
from .cognitive_distillation import CDResult, CognitiveDistillation, cognitive_distillation  # noqa: F401
from .pipeline import array_fingerprint, code_version, embed, stored_scores, toy_2d, tracked_losses  # noqa: F401
from . import knn as knn_module, metrics, scores  # noqa: F401
