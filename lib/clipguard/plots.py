"""Plot helpers shared by the book's notebooks (presentation only: editing them never invalidates stored runs)."""

from __future__ import annotations

import textwrap
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

__all__ = ["setup_style", "image_grid", "training_curves", "retrieval_grid", "paper_vs_ours"]


def setup_style() -> None:
    """One look for every figure of the book."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    plt.rcParams.update({"figure.dpi": 110, "savefig.bbox": "tight", "axes.titlesize": "medium"})


def _as_hwc(image: torch.Tensor | np.ndarray) -> np.ndarray:
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    return np.clip(np.transpose(array, (1, 2, 0)), 0, 1)


def image_grid(images: Sequence[torch.Tensor] | torch.Tensor, titles: Sequence[str] | None = None, ncols: int = 6,
               size: float = 1.9, wrap: int = 22, suptitle: str | None = None) -> plt.Figure:
    """Images ``[3, H, W]`` (float [0,1] or uint8) in a grid with wrapped titles."""
    n = len(images)
    nrows = max(1, (n + ncols - 1) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * (size + 0.45)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        ax = axes.flat[i]
        ax.imshow(_as_hwc(images[i]), interpolation="nearest")
        if titles is not None:
            ax.set_title("\n".join(textwrap.wrap(str(titles[i]), wrap)[:3]), fontsize=7.5)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def training_curves(history: list[dict], metrics: Sequence[str] = ("loss",), epoch_metrics: Sequence[str] = (),
                    label: str | None = None, axes: Sequence[plt.Axes] | None = None) -> Sequence[plt.Axes]:
    """Per-step training loss (and any per-epoch metrics) against epochs."""
    steps = pd.DataFrame([h for h in history if h.get("kind") == "step"])
    epochs = pd.DataFrame([h for h in history if h.get("kind") == "epoch"])
    panels = len(metrics) + len(epoch_metrics)
    if axes is None:
        _, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.2), squeeze=False)
        axes = axes[0]
    steps_per_epoch = steps.groupby("epoch")["step"].max().diff().median() if len(steps) else 1
    for ax, metric in zip(axes, metrics):
        x = steps["step"] / (steps_per_epoch if steps_per_epoch and steps_per_epoch > 0 else 1)
        ax.plot(x, steps[metric], label=label, alpha=0.85)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric.replace("_", " "))
    for ax, metric in zip(axes[len(metrics):], epoch_metrics):
        if metric in epochs:
            ax.plot(epochs["epoch"], epochs[metric], marker="o", label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric.replace("_", " "))
    return axes


def retrieval_grid(queries: Sequence[str], images: torch.Tensor, similarity: torch.Tensor, k: int = 5,
                   correct: torch.Tensor | None = None, size: float = 1.5) -> plt.Figure:
    """For each text query (row), its top-k images; ``correct[q, i]`` marks right answers with a green frame."""
    top = similarity.topk(k, dim=1)
    fig, axes = plt.subplots(len(queries), k, figsize=(k * size + 2.6, len(queries) * size), squeeze=False)
    for row, query in enumerate(queries):
        for col in range(k):
            ax = axes[row, col]
            index = int(top.indices[row, col])
            ax.imshow(_as_hwc(images[index]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if correct is not None:
                colour = "tab:green" if bool(correct[row, index]) else "tab:red"
                for spine in ax.spines.values():
                    spine.set_edgecolor(colour)
                    spine.set_linewidth(2.5)
            if col == 0:
                ax.set_ylabel("\n".join(textwrap.wrap(query, 24)), rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    return fig


def paper_vs_ours(rows: list[dict], columns: Sequence[str] = ("paper", "ours")) -> pd.DataFrame:
    """A table with the paper's value beside ours (rows: dicts with a ``what`` key and one key per column)."""
    frame = pd.DataFrame(rows).set_index("what")
    return frame[[c for c in frame.columns if c in columns] + [c for c in frame.columns if c not in columns]]
