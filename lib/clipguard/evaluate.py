"""Evaluation: zero-shot classification, linear probes, image–text retrieval (evaluation.md 1-2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .data import ImageCaptionSet
from .models import CLIPModel

__all__ = ["image_embeddings", "text_embeddings", "zero_shot_classifier", "zero_shot_logits", "topk_accuracy",
           "zero_shot_accuracy", "linear_probe_sklearn", "linear_probe_torch", "retrieval_recall", "ZeroShotEval",
           "pair_statistics", "PerSampleTracker", "class_retrieval_precision"]


def _device(model: CLIPModel) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def image_embeddings(model: CLIPModel, images: torch.Tensor | ImageCaptionSet, batch_size: int = 512,
                     normalize: bool = True) -> torch.Tensor:
    """Image embeddings ``[N, D]`` on the CPU (model in eval mode). ``images``: float [0,1] tensor or a dataset."""
    was_training = model.training
    model.eval()
    n = len(images)
    out = []
    for start in range(0, n, batch_size):
        if isinstance(images, ImageCaptionSet):
            batch = images.float_images(slice(start, start + batch_size))
        else:
            batch = images[start:start + batch_size]
        out.append(model.encode_image(batch.to(_device(model)), normalize=normalize).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


@torch.no_grad()
def text_embeddings(model: CLIPModel, captions: Sequence[str], batch_size: int = 1024,
                    normalize: bool = True) -> torch.Tensor:
    """Caption embeddings ``[N, D]`` on the CPU."""
    was_training = model.training
    model.eval()
    out = [model.encode_text(list(captions[i:i + batch_size]), normalize=normalize).float().cpu()
           for i in range(0, len(captions), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


@torch.no_grad()
def zero_shot_classifier(model: CLIPModel, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """Class embeddings ``[C, D]``: normalised mean of the normalised template embeddings of each class."""
    if not classnames or not templates:
        raise ValueError("zero-shot needs class names and templates")
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise ValueError(f"templates must contain '{{}}': {bad[:3]}")
    weights = []
    for name in classnames:
        embedded = text_embeddings(model, [t.format(name) for t in templates])
        weights.append(F.normalize(embedded.mean(0), dim=0))
    return torch.stack(weights)


def zero_shot_logits(model: CLIPModel, images: torch.Tensor | ImageCaptionSet, classifier: torch.Tensor) -> torch.Tensor:
    """Cosine similarities ``[N, C]`` of images to class embeddings."""
    return image_embeddings(model, images) @ classifier.T


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy for each k (k capped at the number of classes)."""
    labels = torch.as_tensor(labels)
    result = {}
    for k in ks:
        k_eff = min(k, logits.shape[1])
        hits = logits.topk(k_eff, dim=1).indices.eq(labels[:, None]).any(1)
        result[f"top{k}"] = float(hits.float().mean())
    return result


def zero_shot_accuracy(model: CLIPModel, dataset: ImageCaptionSet, ks: Sequence[int] = (1, 5),
                       templates: Sequence[str] | None = None) -> dict[str, float]:
    """Zero-shot top-k accuracy on a labelled dataset (its class names; its templates unless given)."""
    if dataset.labels is None or dataset.classnames is None:
        raise ValueError(f"{dataset.name} has no labels/class names for zero-shot evaluation")
    classifier = zero_shot_classifier(model, dataset.classnames, templates or dataset.templates)
    return topk_accuracy(zero_shot_logits(model, dataset, classifier), dataset.labels, ks)


def linear_probe_sklearn(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                         test_labels: torch.Tensor, C: float = 0.316, max_iter: int = 1000, seed: int = 0) -> float:
    """The CLIP paper's probe: L-BFGS logistic regression on frozen (standardised) features; top-1 test accuracy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))
    probe.fit(train_features.numpy(), train_labels.numpy())
    return float(probe.score(test_features.numpy(), test_labels.numpy()))


def linear_probe_torch(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                       test_labels: torch.Tensor, epochs: int = 32, lr: float = 0.005, weight_decay: float = 0.01,
                       batch_size: int = 256, seed: int = 0) -> float:
    """The papers' probe (evaluation.md 2): one ``nn.Linear``, AdamW lr 0.005, wd 0.01 on the weight only, cosine
    schedule, shuffled mini-batches of cached un-normalised features; top-1 test accuracy."""
    generator = torch.Generator().manual_seed(seed)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer = torch.nn.Linear(train_features.shape[1], num_classes)
    optimizer = torch.optim.AdamW([{"params": [layer.weight], "weight_decay": weight_decay},
                                   {"params": [layer.bias], "weight_decay": 0.0}], lr=lr)
    steps_per_epoch = max(1, (len(train_features) + batch_size - 1) // batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    for _ in range(epochs):
        order = torch.randperm(len(train_features), generator=generator)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(layer(train_features[idx]), train_labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    with torch.no_grad():
        return float(layer(test_features).argmax(1).eq(test_labels).float().mean())


def retrieval_recall(image_features: torch.Tensor, text_features: torch.Tensor, ks: Sequence[int] = (1, 5, 10)
                     ) -> dict[str, float]:
    """Recall@k for image->text and text->image retrieval where pair i is image i with caption i. Ties count
    against the true partner (a collapsed model with identical embeddings scores 0, not 1)."""
    similarity = image_features @ text_features.T
    target = torch.arange(len(similarity))
    result = {}
    for direction, sims in (("image_to_text", similarity), ("text_to_image", similarity.T)):
        # rank of the true partner = number of other candidates scoring at least as high
        true = sims[target, target][:, None]
        rank = (sims >= true).sum(1) - 1
        for k in ks:
            result[f"{direction}_R@{k}"] = float((rank < k).float().mean())
    return result


def class_retrieval_precision(image_features: torch.Tensor, text_features: torch.Tensor, labels: torch.Tensor,
                              ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Text->image retrieval judged by class: the fraction of each caption's top-k images that share the class of
    the caption's own image (precision@k), averaged over captions. Instance recall is a poor measure when
    captions describe classes rather than single images; this is the one the book plots."""
    similarity = text_features @ image_features.T
    labels = torch.as_tensor(labels)
    result = {}
    for k in ks:
        top = similarity.topk(min(k, similarity.shape[1]), dim=1).indices
        result[f"class_precision@{k}"] = float((labels[top] == labels[:, None]).float().mean())
    return result


@dataclass
class ZeroShotEval:
    """Epoch callback for :func:`clipguard.train.train`: zero-shot top-1/top-5 on a labelled set."""

    dataset: ImageCaptionSet
    prefix: str = "zeroshot"
    every: int = 1
    last: tuple[int, dict[str, float]] | None = field(default=None, init=False, repr=False)  # (epoch, result)

    def __call__(self, ctx, model: CLIPModel) -> dict[str, float]:
        if ctx.epoch % self.every and ctx.epoch != ctx.config.epochs:
            return {}
        accuracy = zero_shot_accuracy(model, self.dataset)
        result = {f"{self.prefix}_{k}": v for k, v in accuracy.items()}
        self.last = (ctx.epoch, result)
        return result


@torch.no_grad()
def caption_embeddings(model: CLIPModel, captions: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """Unit embeddings ``[N, D]`` of ``captions`` (float, on the model's device), each distinct caption through the
    text tower once, in batches of ``batch_size`` distinct captions in order of first appearance: templated
    captions repeat (10,000 Fashion-MNIST pairs have about 4,200 distinct ones). A caption's embedding does not
    depend on the others in its batch, so this equals encoding every row (tested)."""
    distinct: dict[str, int] = {}  # caption -> its row among the distinct ones
    rows = torch.tensor([distinct.setdefault(c, len(distinct)) for c in captions], dtype=torch.long)
    texts = list(distinct)
    if not texts:
        return torch.empty(0, 0)
    features = torch.cat([model.encode_text(texts[start:start + batch_size]).float()
                          for start in range(0, len(texts), batch_size)])
    return features[rows.to(features.device)]


@torch.no_grad()
def pair_statistics(model: CLIPModel, dataset: ImageCaptionSet, indices: torch.Tensor | None = None,
                    batch_size: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair image–caption cosine similarity and per-pair CLIP loss (in-batch negatives, batches of a fixed
    seeded composition, model in eval mode), for ``indices`` (default: all rows). Used for SafeCLIP's similarity
    figures, the GMM split and ABL-style loss tracking.

    Each distinct caption goes through the text tower once (templated captions repeat: 10,000 Fashion-MNIST pairs
    have about 4,200 distinct ones), then batches look their captions' embeddings up."""
    from .losses import clip_loss_per_sample

    indices = torch.arange(len(dataset)) if indices is None else torch.as_tensor(indices)
    order = indices[torch.randperm(len(indices), generator=torch.Generator().manual_seed(seed))]
    was_training = model.training
    model.eval()
    encoded = caption_embeddings(model, [dataset.captions[i] for i in indices.tolist()], batch_size)
    text_features = encoded.new_empty(len(dataset), encoded.shape[1])  # by dataset row
    text_features[indices.to(encoded.device)] = encoded
    cosine = torch.empty(len(dataset))
    loss = torch.empty(len(dataset))
    for chunk in order.split(batch_size):
        image = model.encode_image(dataset.float_images(chunk).to(_device(model))).float()
        text = text_features[chunk.to(text_features.device)]
        cosine[chunk] = (image * text).sum(1).cpu()
        loss[chunk] = clip_loss_per_sample(image, text, model.logit_scale.exp().float()).cpu()
    model.train(was_training)
    return cosine[indices], loss[indices]


class PerSampleTracker:
    """Epoch callback: per-pair cosine similarity and CLIP loss of every training pair after each epoch.

    ``records`` maps epoch -> (cosine, loss) tensors over the training rows; :meth:`save` writes them to an
    ``.npz`` (arrays ``cosine`` and ``loss`` of shape [epochs, N], plus ``epochs``). ``summary_groups`` (name ->
    boolean mask) adds per-group means to the epoch metrics (e.g. clean vs poisoned)."""

    def __init__(self, dataset: ImageCaptionSet, summary_groups: dict[str, torch.Tensor] | None = None,
                 batch_size: int = 256):
        self.dataset = dataset
        self.groups = summary_groups or {}
        self.batch_size = batch_size
        self.records: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, ctx, model: CLIPModel) -> dict[str, float]:
        cosine, loss = pair_statistics(model, self.dataset, batch_size=self.batch_size, seed=ctx.epoch)
        self.records[ctx.epoch] = (cosine, loss)
        out = {}
        for name, mask in self.groups.items():
            if mask.any():
                out[f"cosine_{name}"] = float(cosine[mask].mean())
                out[f"loss_{name}"] = float(loss[mask].mean())
        return out

    def state_dict(self) -> dict:
        """The records so far: kept in the training checkpoint, so a resumed run saves every epoch."""
        return {"records": {int(e): (c.clone(), l.clone()) for e, (c, l) in self.records.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.records = {int(e): (c.clone(), l.clone()) for e, (c, l) in state["records"].items()}

    def save(self, path) -> None:
        from .utils import atomic_write

        epochs = sorted(self.records)
        arrays = {"epochs": np.array(epochs, dtype=np.int64),
                  "cosine": torch.stack([self.records[e][0] for e in epochs]).numpy(),
                  "loss": torch.stack([self.records[e][1] for e in epochs]).numpy()}

        def write(tmp):
            with open(tmp, "wb") as stream:
                np.savez_compressed(stream, **arrays)
        atomic_write(path, write)
