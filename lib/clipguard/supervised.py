"""A supervised classifier on the same images, for the comparison SafeCLIP draws: CLIP needs orders of magnitude
fewer poisons than a supervised model trained on the same data.

The classifier is the CLIP image tower of the same config plus a linear head, trained with cross-entropy on labels
derived from the captions (``class_of_caption``), so a poisoned pair teaches it exactly what it teaches CLIP: this
image (or any image with this trigger) belongs to the class the caption names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .models import build_model
from .train import cosine_lr

__all__ = ["ImageClassifier", "SupervisedConfig", "train_classifier", "predict"]


class ImageClassifier(nn.Module):
    """The image tower of a registered CLIP config, followed by a linear layer over ``num_classes``."""

    def __init__(self, model_name: str, num_classes: int, seed: int = 0):
        super().__init__()
        clip = build_model(model_name, seed=seed)
        self.visual = clip.clip.visual
        self.register_buffer("mean", clip.mean.clone(), persistent=False)
        self.register_buffer("std", clip.std.clone(), persistent=False)
        self.image_size = clip.image_size
        with torch.no_grad():
            embed_dim = self.visual(torch.zeros(1, 3, self.image_size, self.image_size)).shape[1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.visual((images - self.mean) / self.std))


@dataclass
class SupervisedConfig:
    epochs: int = 8
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    seed: int = 0
    progress: bool = True


def train_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, model_name: str = "clipguard-tiny",
                     config: SupervisedConfig | None = None) -> ImageClassifier:
    """Train on uint8 ``images`` [N, 3, H, W] with integer ``labels`` (rows labelled -1 are skipped)."""
    config = config or SupervisedConfig()
    keep = labels >= 0
    if not keep.any():
        raise ValueError("no labelled rows to train on")
    images, labels = images[keep], labels[keep]
    model = ImageClassifier(model_name, num_classes, seed=config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = len(images) // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(images)} labelled rows is fewer than one batch of {config.batch_size}")
    total = steps_per_epoch * config.epochs
    step = 0
    model.train()
    with tqdm(total=total, desc="supervised", disable=not config.progress, leave=False) as bar:
        for _ in range(config.epochs):
            order = torch.randperm(len(images), generator=generator)
            for b in range(steps_per_epoch):
                idx = order[b * config.batch_size:(b + 1) * config.batch_size]
                for group in optimizer.param_groups:
                    group["lr"] = cosine_lr(step, config.lr, config.warmup_steps, total)
                loss = F.cross_entropy(model(images[idx].float() / 255.0), labels[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                bar.update(1)
    return model.eval()


@torch.no_grad()
def predict(model: ImageClassifier, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits for float images in [0, 1]."""
    model.eval()
    return torch.cat([model(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
