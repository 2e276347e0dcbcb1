"""Plot helpers shared by the book's notebooks (presentation only: editing them never invalidates stored runs)."""

from __future__ import annotations

import textwrap
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

__all__ = ["setup_style", "image_grid", "training_curves", "retrieval_grid", "seed_strip", "cosine_densities",
           "asr_vs_utility"]


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


def seed_strip(frame: pd.DataFrame, x: str, y: str, hue: str, ax: plt.Axes | None = None,
               ylabel: str | None = None, percent: bool = True) -> plt.Axes:
    """One dot per seed, a bar at the mean: how much a result moves between seeds."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.4))
    sns.stripplot(data=frame, x=x, y=y, hue=hue, dodge=True, size=7, ax=ax, jitter=0.1)
    sns.pointplot(data=frame, x=x, y=y, hue=hue, dodge=0.4, linestyle="none", markers="_", markersize=20,
                  errorbar=None, ax=ax, legend=False)
    ax.set_ylabel(ylabel or y.replace("_", " "))
    if percent:
        ax.set_ylim(-0.05, 1.05)
        ax.yaxis.set_major_formatter(plt.matplotlib.ticker.PercentFormatter(1.0))
    ax.set_title("each dot is one seed")
    return ax


def cosine_densities(pairs: pd.DataFrame, rows: str, columns: str, value: str = "cosine", group: str = "pair",
                     order=("clean", "poisoned"), size: tuple[float, float] = (3.2, 2.7)) -> plt.Figure:
    """Densities of image–caption cosines per ``group`` (clean vs poisoned, each normalised on its own), one panel
    per (row value, column value), e.g. attack × epoch or model × epoch."""
    row_values, col_values = list(dict.fromkeys(pairs[rows])), list(dict.fromkeys(pairs[columns]))
    fig, axes = plt.subplots(len(row_values), len(col_values), figsize=(size[0] * len(col_values),
                             size[1] * len(row_values)), sharex=True, squeeze=False)
    for r, row_value in enumerate(row_values):
        for c, col_value in enumerate(col_values):
            ax = axes[r, c]
            part = pairs[(pairs[rows] == row_value) & (pairs[columns] == col_value)]
            sns.kdeplot(data=part, x=value, hue=group, hue_order=list(order), common_norm=False, fill=True, ax=ax,
                        legend=(r == 0 and c == 0), warn_singular=False)
            ax.set_title(f"{row_value}, {columns} {col_value}")
            ax.set_xlabel("image–caption cosine")
            if c:
                ax.set_ylabel("")
    fig.tight_layout()
    return fig


def asr_vs_utility(frame: pd.DataFrame, hue: str, style: str | None = None, utility: str = "zeroshot",
                   asr: str = "asr", ax: plt.Axes | None = None) -> plt.Axes:
    """Each run as a point: attack success against clean utility; the good corner is bottom right."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5.6, 4))
    sns.scatterplot(data=frame, x=utility, y=asr, hue=hue, style=style, s=60, ax=ax)
    ax.set_xlabel({"zeroshot": "clean zero-shot top-1", "linear_probe": "linear probe"}.get(utility, utility))
    ax.set_ylabel("attack success rate")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(plt.matplotlib.ticker.PercentFormatter(1.0))
    ax.set_ylim(-0.05, 1.05)
    return ax
