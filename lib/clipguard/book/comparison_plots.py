"""Figures and tables of the comparison chapter ("Which defence should I use?"; presentation only): the ASR heat
map (defence × attack), utility against attack success per run, cost against protection per defence, and the wide
grid table with intervals."""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.patches import Rectangle

from .formatting import NA

__all__ = ["DEFENCE_LABELS", "points", "holds_text", "cell_text", "grid_table", "asr_heatmap", "utility_vs_asr", "cost_vs_protection", "protection_frame"]

#: How the page names the book's defences (keys: :data:`clipguard.scenarios.DEFENCES`).
DEFENCE_LABELS = {"clip": "CLIP (no defence)", "clip_aug": "CLIP + augmentation", "roclip": "RoCLIP",
                  "safeclip": "SafeCLIP", "cleanclip": "CleanCLIP", "sufi": "SuFi (supervised fine-tuning)",
                  "dao_filter": "DAO filter + retrain"}


def points(drop: float) -> str:
    """An accuracy difference in words: ``0.171`` -> ``"17.1 points below"``, ``-0.02`` -> ``"2.0 points above"``."""
    return f"{abs(drop) * 100:.1f} points {'below' if drop > 0 else 'above'}"


def holds_text(asr: float, took: bool, hold: float = 0.10) -> str:
    """The end of a sentence about a defended run's attack success: "; it still defends (threshold 10%)." or
    "; it no longer defends ..."; just "." when the attack did not take against plain CLIP (nothing to judge)."""
    if not took:
        return "."
    return ("; it still defends" if asr <= hold else "; it no longer defends") + f" (threshold {hold:.0%})."


def cell_text(asr: float, low: float, high: float, n: int | None = None) -> str:
    """``"85% [62–100]"`` (and ``" ×3"`` for three seeds); :data:`NA` when nothing was measured."""
    if asr is None or not math.isfinite(asr):
        return NA
    text = f"{asr:.0%}"
    if math.isfinite(low) and math.isfinite(high):
        text += f" [{low * 100:.0f}–{high * 100:.0f}]"
    if n and n > 1:
        text += f" ×{n}"
    return text


def grid_table(summary: pd.DataFrame, defences: Sequence[str], attacks: Sequence[str],
               defence_labels: Mapping[str, str] | None = None, attack_labels: Mapping[str, str] | None = None,
               not_built: Iterable[tuple[str, str]] = (), untaken: Iterable[str] = ()) -> pd.DataFrame:
    """Defences as rows, attacks as columns, each cell :func:`cell_text` of the summary row; "not yet built" for a
    defence that is not registered, "not run" for a cell outside the plan; a "†" after an attack whose attack did not
    take against plain CLIP."""
    table = summary.set_index(["defence", "attack"])
    not_built, untaken = set(not_built), set(untaken)
    rows = {}
    for defence in defences:
        row = {}
        for attack in attacks:
            column = (attack_labels or {}).get(attack, attack) + (" †" if attack in untaken else "")
            if (defence, attack) in not_built:
                row[column] = "not yet built"
            elif (defence, attack) in table.index:
                r = table.loc[(defence, attack)]
                row[column] = cell_text(r.asr, r.asr_low, r.asr_high, int(r.n))
            else:
                row[column] = "not run"
        rows[(defence_labels or {}).get(defence, defence)] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def asr_heatmap(summary: pd.DataFrame, defences: Sequence[str], attacks: Sequence[str],
                defence_labels: Mapping[str, str] | None = None, attack_labels: Mapping[str, str] | None = None,
                not_built: Iterable[tuple[str, str]] = (), untaken: Iterable[str] = (),
                collapsed: Iterable[tuple[str, str]] = (), ax: plt.Axes | None = None) -> plt.Axes:
    """Mean attack success of every (defence, attack) cell, red = the attack works. Cells outside the plan are grey
    ("not run" / "not yet built"); attacks that did not take against plain CLIP are hatched and marked "†" (their
    low numbers judge nothing); ``collapsed`` cells (the defended model lost too much utility) are framed."""
    table = summary.set_index(["defence", "attack"])
    values = pd.DataFrame(np.nan, index=list(defences), columns=list(attacks))
    annot = pd.DataFrame("", index=list(defences), columns=list(attacks))
    for d in defences:
        for a in attacks:
            if (d, a) in table.index and math.isfinite(table.loc[(d, a), "asr"]):
                r = table.loc[(d, a)]
                values.loc[d, a] = r.asr
                annot.loc[d, a] = f"{r.asr:.0%}" + (f"\n×{int(r.n)}" if r.n > 1 else "")
    if ax is None:
        _, ax = plt.subplots(figsize=(0.95 * len(attacks) + 2.2, 0.55 * len(defences) + 1.6))
    ax.set_facecolor("#e8e8e8")
    sns.heatmap(values.astype(float), annot=annot, fmt="", mask=values.isna(), cmap="Reds", vmin=0, vmax=1,
                linewidths=0.6, linecolor="white", cbar_kws={"label": "attack success"}, ax=ax,
                annot_kws={"fontsize": 7.5})
    if ax.collections and ax.collections[0].colorbar is not None:
        ax.collections[0].colorbar.ax.yaxis.set_major_formatter(plt.matplotlib.ticker.PercentFormatter(1.0))
    ax.grid(False)
    not_built, untaken, collapsed = set(not_built), set(untaken), set(collapsed)
    for i, d in enumerate(defences):
        for j, a in enumerate(attacks):
            if math.isnan(values.loc[d, a]):
                ax.text(j + 0.5, i + 0.5, "not yet\nbuilt" if (d, a) in not_built else "not run", ha="center",
                        va="center", fontsize=6.5, color="#666666")
            if (d, a) in collapsed:
                ax.add_patch(Rectangle((j + 0.04, i + 0.04), 0.92, 0.92, fill=False, edgecolor="black", lw=1.6,
                                       ls="--"))
    for j, a in enumerate(attacks):
        if a in untaken:
            ax.add_patch(Rectangle((j, 0), 1, len(defences), fill=False, hatch="///", edgecolor="#999999", lw=0))
    ax.set_xticklabels([(attack_labels or {}).get(a, a) + (" †" if a in untaken else "") for a in attacks],
                       rotation=35, ha="right")
    ax.set_yticklabels([(defence_labels or {}).get(d, d) for d in defences], rotation=0)
    ax.set_xlabel("")
    ax.set_ylabel("")
    return ax


def utility_vs_asr(frame: pd.DataFrame, hue: str = "defence", style: str | None = "attack group",
                   reference: Mapping[str, float] | None = None) -> plt.Figure:
    """Two panels, clean zero-shot and linear probe against attack success, one point per run (``frame``: one row
    per run with ``zeroshot``, ``linear_probe``, ``asr``); the good corner is bottom right. ``reference``: accuracies
    of the clean model (dotted lines). Colours and markers mean the same in both panels."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    hue_order = list(dict.fromkeys(frame[hue]))
    palette = dict(zip(hue_order, sns.color_palette("colorblind", len(hue_order))))
    style_order = list(dict.fromkeys(frame[style])) if style else None
    for ax, utility in zip(axes, ("zeroshot", "linear_probe")):
        part = frame.dropna(subset=[utility, "asr"])
        sns.scatterplot(data=part, x=utility, y="asr", hue=hue, hue_order=hue_order, palette=palette, style=style,
                        style_order=style_order, s=55, alpha=0.85, ax=ax, legend=ax is axes[-1])
        if reference and utility in reference:
            ax.axvline(reference[utility], color="k", ls=":", lw=1)
        ax.set_xlabel({"zeroshot": "clean zero-shot top-1", "linear_probe": "linear probe"}[utility])
        ax.set_ylabel("attack success")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(plt.matplotlib.ticker.PercentFormatter(1.0))
        ax.set_ylim(-0.05, 1.05)
    if axes[-1].get_legend() is not None:
        sns.move_legend(axes[-1], "upper left", bbox_to_anchor=(1.02, 1), fontsize=8)
    fig.tight_layout()
    return fig


def protection_frame(summary: pd.DataFrame, took: str = "attack took", reference: str = "clip") -> pd.DataFrame:
    """One row per defence over the attacks that took against plain CLIP and that it was measured on: ``attacks``
    (how many), mean ``asr``, ``held`` (share with success <= 10%), mean ``zeroshot`` ``drop`` against plain CLIP on
    the same attacks, median ``cost``."""
    live = summary[summary[took].astype(bool)]
    base = live[live.defence == reference].set_index("attack")
    rows = []
    for defence, group in live.groupby("defence", sort=False):
        group = group[group.attack.isin(base.index)]
        if group.empty:
            continue
        rows.append({"defence": defence, "attacks": len(group), "asr": float(group.asr.mean()),
                     "held": float((group.asr <= 0.10).mean()),
                     "drop": float((base.loc[group.attack, "zeroshot"].to_numpy() - group.zeroshot.to_numpy()).mean()),
                     "cost": float(group.cost.median())})
    return pd.DataFrame(rows)


def cost_vs_protection(protection: pd.DataFrame, labels: Mapping[str, str] | None = None,
                       ax: plt.Axes | None = None) -> plt.Axes:
    """Each defence as a point: its cost relative to plain CLIP against the mean attack success over the attacks
    that took (:func:`protection_frame`); colour = zero-shot lost against plain CLIP. The good corner is bottom left."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6.2, 4.2))
    drop = protection["drop"].clip(lower=0)
    points = ax.scatter(protection["cost"], protection["asr"], c=drop * 100, cmap="viridis_r", s=90,
                        vmin=0, vmax=max(20.0, float(drop.max() * 100) if len(drop) else 20.0), edgecolor="k")
    # stagger the labels of points that sit close together (most defences end near 0% success)
    offsets = [(7, 5), (7, -11), (7, 17), (7, -23), (7, 29), (7, -35)]
    placed: list[tuple[float, float]] = []
    for _, row in protection.sort_values(["asr", "cost"]).iterrows():
        near = sum(abs(row.cost - c) < 0.6 and abs(row.asr - a) < 0.08 for c, a in placed)
        placed.append((row.cost, row.asr))
        ax.annotate(f"{(labels or {}).get(row.defence, row.defence)} ({int(row.attacks)})", (row.cost, row.asr),
                    textcoords="offset points", xytext=offsets[near % len(offsets)], fontsize=8)
    fig = ax.get_figure()
    fig.colorbar(points, ax=ax, label="zero-shot points lost vs CLIP")
    ax.set_xlabel("defender's wall time / plain CLIP training")
    ax.set_ylabel("mean attack success (attacks that took)")
    ax.set_title("label: defence (attacks it was measured on)", fontsize=9)
    ax.yaxis.set_major_formatter(plt.matplotlib.ticker.PercentFormatter(1.0))
    ax.set_ylim(-0.05, 1.05)
    ax.axvline(1.0, color="k", ls=":", lw=1)
    return ax
