"""Which defence should I use? The comparison chapter's grid (experiments tier): the attacks it compares, the grid of
specs (every cell is ``scenarios.defended(scenarios.attack_spec(profile, poison, seed=s), defence)`` with default
fields, so cells other chapters already trained are reused), the metrics of a cell (stored extra evaluations where
a defence's own spec does not compute one), interval and cost accounting, and the recommendation logic.

Also the diagnostics of the utility question: how often RoCLIP's nearest-pool-caption matching returns a caption
of an image's own category, and how many images of a batch share a matched caption (:func:`pool_matching`).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from . import experiments, scenarios
from .data import ImageCaptionSet, caption_categories
from .profiles import Profile, resolve
from .runs import Run, RunStore, code_identity

__all__ = ["STANDARD_ATTACKS", "ADAPTIVE_ATTACKS", "ADAPTIVE_TARGETS", "ATTACK_LABELS", "DEFENCE_KINDS",
           "MULTI_TRIGGERS", "SIMILAR_PAIRS", "STRUCTURED_TRIGGER", "WANET_STRENGTH", "LABEL_CONSISTENT", "standard_poisons", "adaptive_poisons",
           "badclip_poison", "BUDGET_DEFENCES", "budget_defences", "plan_grid", "grid_specs", "stored_evaluation", "cell_row", "cell_frame",
           "train_seconds", "detection_seconds", "relative_cost", "asr_interval", "summarise_cells", "Budget",
           "BUDGETS", "THREAT_MODELS", "HOLD", "MAX_DROP", "recommend", "pool_matching", "matching_log"]

#: The standard attacks of the grid, in column order.
STANDARD_ATTACKS = ("targeted", "patch", "blended", "sig", "wanet", "label_consistent", "nashville", "multi_trigger")
#: The adaptive attacks (one or more per defence), in column order.
ADAPTIVE_ATTACKS = ("safeclip_aware", "roclip_similar", "roclip_pool_aware", "badclip", "structured",
                    "dense_cluster")
#: The defence each adaptive attack is built to get past.
ADAPTIVE_TARGETS = {"safeclip_aware": "safeclip", "roclip_similar": "roclip", "roclip_pool_aware": "roclip",
                    "badclip": "cleanclip", "structured": "cleanclip", "dense_cluster": "dao_filter"}
ATTACK_LABELS = {"targeted": "targeted", "patch": "BadNet patch", "blended": "Blended", "sig": "SIG",
                 "wanet": "WaNet", "label_consistent": "label-consistent", "nashville": "Nashville",
                 "multi_trigger": "multi-trigger", "safeclip_aware": "SafeCLIP-aware (targeted)",
                 "roclip_similar": "similar classes (targeted)", "roclip_pool_aware": "pool-aware (targeted)",
                 "badclip": "BadCLIP patch", "structured": "structured patch", "dense_cluster": "dense cluster"}
#: How each of the book's defences works, which decides what a defender needs to use it.
DEFENCE_KINDS = {"clip": "none", "clip_aug": "pre-training", "roclip": "pre-training", "safeclip": "pre-training",
                 "cleanclip": "fine-tuning", "sufi": "fine-tuning", "dao_filter": "detect and retrain"}

#: The multi-trigger attack's triggers (the detection paper's ``cc3m_multi_trigger``; the trigger gallery's).
MULTI_TRIGGERS = [{"name": "badnet_checkerboard"}, {"name": "nashville"}, {"name": "wanet"}]
#: RoCLIP Fig. 4's adaptive attack on Fashion-MNIST: the visually closest class pairs (the RoCLIP chapter's).
SIMILAR_PAIRS = [["shirt", "t-shirt"], ["pullover", "coat"], ["sneaker", "ankle boot"], ["sandal", "sneaker"]]
#: WaNet and label-consistent at the weakest strengths that took against plain CLIP in the RoCLIP chapter's Table 6
#: sweep (the book's standard WaNet, s = 0.5, and label-consistent, 2% with a 2-pixel patch, stay below 1% at
#: ``cpu``); the detection chapter uses the same.
WANET_STRENGTH = 2.0
LABEL_CONSISTENT = {"rate": 0.05, "patch_fraction": 0.25}
#: A structured trigger (Perturb-and-Recover's point: structured patterns survive CleanCLIP): a checkerboard a
#: quarter of the image side, at a fixed corner.
STRUCTURED_TRIGGER = {"name": "badnet_checkerboard", "patch_fraction": 0.25, "placement": "top_left"}


def _profile(profile: str | Profile) -> Profile:
    return resolve(profile) if isinstance(profile, str) else profile


def standard_poisons(profile: str | Profile) -> dict[str, dict]:
    """The poison spec of each standard attack at ``profile`` (the same specs the other chapters build: the
    targeted and patch attacks of :mod:`clipguard.scenarios`, the RoCLIP chapter's Blended and its WaNet and
    label-consistent at :data:`WANET_STRENGTH` and :data:`LABEL_CONSISTENT`, the detection chapter's SIG,
    Nashville and multi-trigger), so shared cells are shared runs."""
    p = _profile(profile)
    backdoor = lambda **options: scenarios.backdoor_poison(p, **options)  # noqa: E731
    consistent = {"name": "badnet_htba", "patch_fraction": LABEL_CONSISTENT["patch_fraction"]}
    return {"targeted": scenarios.targeted_poison(p), "patch": backdoor(),
            "blended": backdoor(trigger="blended"), "sig": backdoor(trigger="sig"),
            "wanet": backdoor(trigger={"name": "wanet", "s": WANET_STRENGTH}),
            "label_consistent": backdoor(trigger=consistent, caption_source="keep", rate=LABEL_CONSISTENT["rate"]),
            "nashville": backdoor(trigger="nashville"),
            "multi_trigger": backdoor(trigger={"name": "multi", "triggers": MULTI_TRIGGERS})}


def adaptive_poisons(profile: str | Profile, badclip: dict | None = None) -> dict[str, dict]:
    """The poison spec of each adaptive attack (``badclip``: the poison of :func:`badclip_poison`, which needs a
    trained surrogate; left out when None). The option sets come from :data:`clipguard.attacks.ADAPTIVE_ATTACKS`."""
    from .attacks import adaptive_spec

    p = _profile(profile)
    out = {"safeclip_aware": adaptive_spec(scenarios.targeted_poison(p), "safeclip_aware"),
           "roclip_similar": scenarios.targeted_poison(p, similar_pairs=SIMILAR_PAIRS),
           "roclip_pool_aware": adaptive_spec(scenarios.targeted_poison(p), "roclip_pool_aware"),
           "structured": scenarios.backdoor_poison(p, trigger=STRUCTURED_TRIGGER),
           "dense_cluster": adaptive_spec(scenarios.backdoor_poison(p), "dense_cluster")}
    if badclip is not None:
        out["badclip"] = badclip
    return {name: out[name] for name in ADAPTIVE_ATTACKS if name in out}


def badclip_poison(profile: str | Profile, store: RunStore, surrogate_seed: int = 0, patch_side: int = 4,
                   steps: int = 200, target_class: str = "bag", n_images: int = 2048, seed: int = 0) -> dict:
    """The BadCLIP-style backdoor (:func:`clipguard.attacks.badclip_trigger`): a ``patch_side`` px patch optimised
    on the attacker's clean surrogate (the profile's clean CLIP run of ``surrogate_seed``, trained once) over
    ``n_images`` of its training images towards ``target_class``'s zero-shot embedding, then poisoned like the
    standard backdoor (same rate and target). The optimised trigger is stored (keyed on the surrogate run), so the
    poison spec, and with it every run key, is the same each time the chapter runs."""
    from .attacks import badclip_trigger

    p = _profile(profile)
    surrogate = experiments.run(scenarios.attack_spec(p, None, seed=surrogate_seed), store, progress=False)
    config = {"kind": "badclip-trigger", "surrogate": surrogate.id, "patch_side": patch_side, "steps": steps,
              "target_class": target_class, "n_images": n_images, "seed": seed}

    def compute(work) -> dict:
        model = surrogate.load_model()
        data = experiments.load_dataset(surrogate.config["data"])
        templates = experiments.load_dataset(surrogate.config["test"]).templates
        images = data.float_images(slice(0, min(n_images, len(data))))
        trigger = badclip_trigger(model, images, target_class, templates, patch_side, steps=steps, seed=seed)
        return {"trigger": trigger}

    code = code_identity(["clipguard.attacks", "clipguard.evaluate", "clipguard.models"])
    trigger = store.get_or_compute(config, compute, code=code).metrics["trigger"]
    return scenarios.backdoor_poison(p, trigger=trigger, target_class=target_class)


# --------------------------------------------------------------------------------------------------------------
# The grid
# --------------------------------------------------------------------------------------------------------------

def plan_grid(attacks: Sequence[str], defences: Sequence[str], seeds: Sequence[int],
              multi_seed_attacks: Sequence[str] = ("targeted", "patch"),
              defences_for: Mapping[str, Sequence[str]] | None = None) -> dict[str, dict[str, list[int]]]:
    """attack -> defence -> seeds: every defence (``defences_for[attack]`` where given) on every attack, with all
    ``seeds`` on ``multi_seed_attacks`` and the first seed elsewhere."""
    if not seeds:
        raise ValueError("plan_grid needs at least one seed")
    unknown = set(defences_for or {}) - set(attacks)
    if unknown:
        raise ValueError(f"defences_for names attacks that are not in the grid: {sorted(unknown)}")
    plan = {}
    for attack in attacks:
        chosen = list((defences_for or {}).get(attack, defences))
        plan[attack] = {d: list(seeds) if attack in multi_seed_attacks else [seeds[0]] for d in chosen}
    return plan


#: The ``budget`` grid's defences on the standard attacks beyond targeted and patch (which get every defence): each
#: defence on the backdoors its own paper evaluates (RoCLIP Table 6 and SafeCLIP's main table: Blended, WaNet,
#: label-consistent; the detection paper's: SIG, Nashville, multi-trigger), with augmentation alone wherever a
#: pre-training defence is measured, and the fine-tuning defences (cheap) on all.
BUDGET_DEFENCES = {"blended": ("clip", "clip_aug", "roclip", "safeclip", "cleanclip", "sufi"),
                   "wanet": ("clip", "clip_aug", "roclip", "safeclip", "cleanclip", "sufi"),
                   "label_consistent": ("clip", "clip_aug", "roclip", "safeclip", "cleanclip", "sufi"),
                   "sig": ("clip", "cleanclip", "sufi", "dao_filter"),
                   "nashville": ("clip", "cleanclip", "sufi", "dao_filter"),
                   "multi_trigger": ("clip", "cleanclip", "sufi", "dao_filter")}


#: Defences the ``budget`` grid also measures an adaptive attack against, beyond the one it targets: the detector
#: against the optimised BadCLIP patch (whose poisons need not look like outliers either).
ADAPTIVE_EXTRA = {"badclip": ("dao_filter",)}


def budget_defences(attacks: Sequence[str], adaptive: Sequence[str], grid: str = "budget") -> dict[str, list[str]]:
    """``defences_for`` of :func:`plan_grid`: with ``grid="budget"`` the standard attacks of
    :data:`BUDGET_DEFENCES` get those defences and each adaptive attack plain CLIP and the defence it targets
    (:data:`ADAPTIVE_TARGETS`), plus augmentation alone where that defence is a pre-training one; with ``"full"``,
    every defence faces every attack (an empty mapping)."""
    if grid == "full":
        return {}
    if grid != "budget":
        raise ValueError(f"grid must be 'budget' or 'full', got {grid!r}")
    unknown = [a for a in adaptive if a not in ADAPTIVE_TARGETS]
    if unknown:
        raise ValueError(f"unknown adaptive attack(s) {unknown}; known: {sorted(ADAPTIVE_TARGETS)}")
    out = {a: list(BUDGET_DEFENCES[a]) for a in attacks if a in BUDGET_DEFENCES}
    out.update({a: ["clip"] + (["clip_aug"] if DEFENCE_KINDS[ADAPTIVE_TARGETS[a]] == "pre-training" else [])
                + [ADAPTIVE_TARGETS[a]] + list(ADAPTIVE_EXTRA.get(a, ())) for a in adaptive})
    return out


def grid_specs(profile: str | Profile, poisons: Mapping[str, dict], plan: Mapping[str, Mapping[str, Sequence[int]]],
               registered: Mapping[str, object] | None = None
               ) -> tuple[dict[tuple[str, str, int], dict], list[tuple[str, str]]]:
    """The spec of every planned cell, keyed ``(defence, attack, seed)``:
    ``scenarios.defended(scenarios.attack_spec(profile, poisons[attack], seed=seed), defence)`` with the defence's
    default fields. Cells whose defence is not in ``registered`` (default :data:`clipguard.scenarios.DEFENCES`)
    come back as the list of ``(defence, attack)`` pairs that could not be built."""
    experiments.load_plugins()
    registered = scenarios.DEFENCES if registered is None else registered
    p = _profile(profile)
    missing_attacks = set(plan) - set(poisons)
    if missing_attacks:
        raise ValueError(f"the plan names attacks without a poison spec: {sorted(missing_attacks)}")
    specs, missing = {}, []
    for attack, defences in plan.items():
        for defence, seeds in defences.items():
            if defence not in registered:
                missing.append((defence, attack))
                continue
            for seed in seeds:
                specs[(defence, attack, seed)] = scenarios.defended(
                    scenarios.attack_spec(p, poisons[attack], seed=seed), defence)
    return specs, missing


# --------------------------------------------------------------------------------------------------------------
# Metrics of a cell
# --------------------------------------------------------------------------------------------------------------

def _evaluation_inputs(spec: dict) -> experiments.Prepared:
    """What the evaluators of ``spec`` read. A fine-tuning spec that keeps its parent's test set is evaluated
    against its parent's attack on the parent's test and probe sets (the probe set every other cell of the grid
    uses, also when the fine-tuning spec drops its own to save time), so the parent's prepared inputs serve and the
    clean fine-tuning set, slow to draw, is not built."""
    parent = spec.get("init")
    if parent and spec.get("test") == parent.get("test"):
        return _evaluation_inputs(parent)
    return experiments.prepare(spec).for_evaluation()


def stored_evaluation(run: Run, spec: dict, store: RunStore, evaluators: Sequence[str]) -> dict:
    """Evaluators a run's own spec did not ask for (e.g. the linear probe of a fine-tuned run, whose default spec
    measures zero-shot and backdoor ASR only), computed on the stored model exactly as :func:`experiments.execute`
    would (against the attack of the spec or of the run it was fine-tuned from), and stored, keyed on the run."""
    experiments.load_plugins()
    evaluators = list(evaluators)
    unknown = [e for e in evaluators if e not in experiments.EVALUATORS]
    if unknown:
        raise ValueError(f"unknown evaluator(s) {unknown}; registered: {sorted(experiments.EVALUATORS)}")
    config = {"kind": "extra-evaluation", "run": run.id, "evaluate": evaluators}

    def compute(work) -> dict:
        evaluation = _evaluation_inputs(spec)
        eval_spec = {**spec, "poison": experiments.attack_of(spec)}
        model = run.load_model()
        metrics = {}
        for name in evaluators:
            metrics.update(experiments.EVALUATORS[name](model, eval_spec, evaluation))
        return metrics

    code = experiments.code_key({**spec, "evaluate": evaluators})
    return store.get_or_compute(config, compute, code=code).metrics


def _attack_kind(spec: dict) -> str | None:
    poison = experiments.attack_of(spec) or {}
    return poison.get("kind")


def train_seconds(run: Run) -> float:
    """Training wall time robust to a slow epoch: the median epoch's seconds times the number of epochs (the run's
    ``train_seconds`` when its history holds no timed epochs)."""
    epochs = [h["seconds"] for h in run.history if h.get("kind") == "epoch" and h.get("seconds")]
    if not epochs:
        return float(run.metrics["train_seconds"])
    return statistics.median(epochs) * len(epochs)


def detection_seconds(store: RunStore, scored_run_id: str) -> float | None:
    """Seconds the detect-and-retrain filter spent scoring the pairs of the run ``scored_run_id`` (its stored
    detector scores, variant ``filter``; the newest when there are several), or None when none is stored."""
    found = []
    for path in store.dir.glob("*/config.json"):
        config = json.loads(path.read_text()).get("config", {})
        if (config.get("kind") == "detector-scores" and config.get("run") == scored_run_id
                and "filter" in config.get("variants", {})):
            metrics = json.loads((path.parent / "metrics.json").read_text())
            created = json.loads((path.parent / "provenance.json").read_text()).get("created", "")
            found.append((created, float(metrics["seconds"]["filter"])))
    return max(found)[1] if found else None


def cell_row(run: Run, spec: dict, store: RunStore, extra: bool = True) -> dict:
    """One grid cell's numbers from its stored run: attack success (``asr``, ``successes`` of ``trials``), clean
    zero-shot and linear probe, and the defender's seconds: ``train_s`` (this run's training), ``parent_s`` (the
    poisoned model a fine-tuning or filtering defence starts from), ``detect_s`` (scoring, for detect and
    retrain). With ``extra``, metrics the run's spec did not compute are added by :func:`stored_evaluation`."""
    metrics = dict(run.metrics)
    kind = _attack_kind(spec)
    wanted = []
    if "linear_probe_torch" not in metrics:
        wanted.append("linear_probe")
    if kind == "targeted" and "targeted_top1_asr" not in metrics:
        wanted.append("targeted_asr")
    if kind == "backdoor" and "backdoor_asr" not in metrics:
        wanted.append("backdoor_asr")
    if extra and wanted:
        metrics.update(stored_evaluation(run, spec, store, wanted))
    if kind == "targeted":
        successes, trials = metrics.get("targeted_top1_successes"), metrics.get("targeted_n_targets")
    elif kind == "backdoor":
        successes, trials = metrics.get("backdoor_successes"), metrics.get("backdoor_total")
    else:
        successes = trials = None
    parent_s = detect_s = 0.0
    if spec.get("init"):
        parent_s = train_seconds(experiments.run(spec["init"], store, progress=False))
    if spec.get("filter"):
        scored = experiments.run(spec["filter"]["by"], store, progress=False)
        parent_s = train_seconds(scored)
        detect_s = detection_seconds(store, scored.id) or float("nan")
    return {"run": run.id, "asr": successes / trials if successes is not None and trials else None,
            "successes": successes, "trials": trials, "zeroshot": metrics.get("zeroshot_top1"),
            "linear_probe": metrics.get("linear_probe_torch"), "train_s": train_seconds(run), "parent_s": parent_s,
            "detect_s": detect_s}


def cell_frame(runs: Mapping[tuple[str, str, int], Run], specs: Mapping[tuple[str, str, int], dict],
               store: RunStore, extra: bool = True) -> pd.DataFrame:
    """One row per run of the grid (keys ``(defence, attack, seed)``): :func:`cell_row` plus ``defence``,
    ``attack``, ``seed``, ``kind`` (:data:`DEFENCE_KINDS`) and ``cost`` (:func:`relative_cost`)."""
    rows = [{"defence": d, "attack": a, "seed": s, "kind": DEFENCE_KINDS.get(d, "other"),
             **cell_row(run, specs[(d, a, s)], store, extra)} for (d, a, s), run in runs.items()]
    return relative_cost(pd.DataFrame(rows))


def relative_cost(frame: pd.DataFrame, reference: str = "clip") -> pd.DataFrame:
    """``frame`` with ``defender_s`` (what the defender spends: the run's training plus, for fine-tuning and
    filtering, the poisoned model's training and the detection) and ``cost``: that over the ``reference`` run's
    training of the same attack and seed (plain CLIP = 1)."""
    need = {"defence", "attack", "seed", "train_s", "parent_s", "detect_s"}
    if need - set(frame.columns):
        raise KeyError(f"relative_cost: missing column(s) {sorted(need - set(frame.columns))}")
    out = frame.copy()
    out["defender_s"] = out["train_s"] + out["parent_s"] + out["detect_s"].fillna(0.0)
    base = out[out.defence == reference].set_index(["attack", "seed"])["train_s"]
    keys = list(zip(out.attack, out.seed))
    out["cost"] = [row / base[k] if k in base.index else float("nan") for row, k in zip(out.defender_s, keys)]
    return out


def asr_interval(successes: Sequence[int], trials: Sequence[int], confidence: float = 0.95
                 ) -> tuple[float, float, float, str]:
    """Mean attack success over seeds and a ``confidence`` interval: over several seeds, Student's t over the
    per-seed rates (:func:`clipguard.attacks.mean_interval`, clipped to [0, 1]); for one seed, the Wilson score
    interval of its ``successes`` of ``trials`` (scipy). Returns ``(mean, low, high, what the interval is)``."""
    from scipy.stats import binomtest

    from .attacks.metrics import mean_interval

    if len(successes) != len(trials) or not successes:
        raise ValueError(f"need as many successes as trials, at least one; got {len(successes)} and {len(trials)}")
    for k, n in zip(successes, trials):
        if not (0 <= k <= n and n > 0):
            raise ValueError(f"successes must lie in 0..trials with trials > 0, got {k} of {n}")
    if len(successes) == 1:
        k, n = int(successes[0]), int(trials[0])
        ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
        return k / n, float(ci.low), float(ci.high), f"Wilson, 1 seed, {n} trials"
    rates = [k / n for k, n in zip(successes, trials)]
    result = mean_interval(rates, confidence=confidence, method="t")
    return (result["mean"], max(0.0, result["low"]), min(1.0, result["high"]),
            f"t over {len(rates)} seeds")


def summarise_cells(frame: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """One row per (defence, attack): seeds ``n``, ``asr`` with ``asr_low`` / ``asr_high`` (:func:`asr_interval`),
    ``asr_sd`` (over seeds), mean ``zeroshot`` and ``linear_probe``, median ``cost``, ``kind``."""
    rows = []
    for (defence, attack), group in frame.groupby(["defence", "attack"], sort=False):
        usable = group.dropna(subset=["successes", "trials"])
        mean = low = high = float("nan")
        interval = "no attack success measured"
        if len(usable):
            mean, low, high, interval = asr_interval(usable.successes.astype(int).tolist(),
                                                     usable.trials.astype(int).tolist(), confidence)
        rows.append({"defence": defence, "attack": attack, "kind": group["kind"].iloc[0], "n": len(group),
                     "asr": mean, "asr_low": low, "asr_high": high, "interval": interval,
                     "asr_sd": float(group.asr.std()) if len(group) > 1 else float("nan"),
                     "zeroshot": float(group.zeroshot.mean()),
                     "linear_probe": float(group.linear_probe.mean()) if group.linear_probe.notna().any()
                     else float("nan"),
                     "cost": float(group.cost.median())})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------------------
# Recommendation
# --------------------------------------------------------------------------------------------------------------

#: A defence "holds" against an attack when the attack's mean success against it is at most this.
HOLD = 0.10
#: A defence whose mean zero-shot accuracy over a threat model's attacks is more than this below plain CLIP's on
#: the same attacks protects by weakening the model; it is not recommended (it is named as such).
MAX_DROP = 0.10


@dataclass(frozen=True)
class Budget:
    """What a defender can afford: the kinds of defence they can run (a model already pre-trained on the poisoned
    data leaves only fine-tuning) and the largest cost relative to plain CLIP's training."""

    name: str
    kinds: tuple[str, ...]
    max_cost: float = math.inf


BUDGETS = (
    Budget("a poisoned model and a small clean set (fine-tuning only)", ("fine-tuning",)),
    Budget("pre-training at most 1.5× plain CLIP", ("pre-training", "detect and retrain", "fine-tuning"), 1.5),
    Budget("pre-training, any cost", ("pre-training", "detect and retrain", "fine-tuning")),
)
#: Threat models: what the defender fears, as the grid's attacks.
THREAT_MODELS = {
    "targeted poisoning": ("targeted", "safeclip_aware", "roclip_similar", "roclip_pool_aware"),
    "patch backdoor": ("patch", "badclip", "structured", "dense_cluster"),
    "other backdoors": ("blended", "sig", "wanet", "label_consistent", "nashville", "multi_trigger"),
}


def _pct(value: float) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.1%}"


def recommend(summary: pd.DataFrame, threats: Mapping[str, Sequence[str]] = THREAT_MODELS,
              budgets: Sequence[Budget] = BUDGETS, took: str = "attack took", hold: float = HOLD,
              max_drop: float = MAX_DROP, reference: str = "clip") -> pd.DataFrame:
    """For each threat model and budget, the defence to use and why, from the per-(defence, attack) ``summary``
    (:func:`summarise_cells` with a boolean ``took`` column: did the attack succeed against plain CLIP).

    Only attacks that took against the ``reference`` count. Among the defences the budget allows that were measured
    on at least one of them, a defence is ranked by the share of those attacks it holds (mean success <= ``hold``;
    an attack it was not measured on counts as not held),
    then by its zero-shot drop against the reference on the same attacks, then by cost. A defence that loses more
    than ``max_drop`` zero-shot is never chosen. Each row gives the numbers behind the choice and the attacks the
    chosen defence fails on (success above ``hold``) or was not measured on."""
    need = {"defence", "attack", "kind", "asr", "zeroshot", "cost", took}
    if need - set(summary.columns):
        raise KeyError(f"recommend: missing column(s) {sorted(need - set(summary.columns))}")
    rows = []
    for threat, attacks in threats.items():
        part = summary[summary.attack.isin(attacks)]
        base = part[part.defence == reference].set_index("attack")
        live = [a for a in attacks if a in base.index and bool(base.loc[a, took])]
        for budget in budgets:
            row = {"threat model": threat, "budget": budget.name}
            if not live:
                rows.append({**row, "defence": "—", "why": "no attack of this threat model took against plain CLIP: "
                             "nothing to defend against at this scale", "fails on": "", "not measured": ""})
                continue
            ranked = []
            for defence, group in part[part.attack.isin(live)].groupby("defence", sort=False):
                kind = group["kind"].iloc[0]
                cost = float(group.cost.median())
                if defence == reference or kind not in budget.kinds or not cost <= budget.max_cost:
                    continue
                group = group.set_index("attack")
                held = [a for a in group.index if group.loc[a, "asr"] <= hold]
                drop = float((base.loc[group.index, "zeroshot"] - group["zeroshot"]).mean())
                ranked.append((len(held) / len(live), -drop, -cost, defence, group, held, drop, cost))
            usable = [r for r in ranked if r[6] <= max_drop]
            if not usable:
                weakened = ", ".join(f"{r[3]} ({r[6] * 100:.1f} zero-shot points lost)" for r in ranked) or "none measured"
                rows.append({**row, "defence": "—", "why": f"no affordable defence keeps zero-shot within "
                             f"{max_drop:.0%} of plain CLIP: {weakened}", "fails on": "", "not measured": ""})
                continue
            share, _, _, defence, group, held, drop, cost = max(usable, key=lambda r: r[:3])
            failed = [a for a in group.index if a not in held]
            if not held:
                rows.append({**row, "defence": "—", "why": "no affordable defence holds an attack that took: "
                             + "; ".join(f"{r[3]}: " + ", ".join(f"{a} {_pct(r[4].loc[a, 'asr'])}" for a in r[4].index)
                                         + (" (weakens the model)" if r[6] > max_drop else "") for r in ranked),
                             "fails on": "", "not measured": ""})
                continue
            why = (f"holds {len(held)} of {len(group)} attacks that took ("
                   + ", ".join(f"{a} {_pct(group.loc[a, 'asr'])} vs CLIP {_pct(base.loc[a, 'asr'])}" for a in held)
                   + f"); zero-shot {abs(drop) * 100:.1f} points {'below' if drop > 0 else 'above'} CLIP; "
                   f"cost {cost:.2f}× plain CLIP")
            weakened = [r[3] for r in ranked if r[6] > max_drop]
            if weakened:
                why += f"; not chosen: {', '.join(weakened)} (protect by weakening the model)"
            rows.append({**row, "defence": defence, "why": why,
                         "fails on": ", ".join(f"{a} ({_pct(group.loc[a, 'asr'])})" for a in failed),
                         "not measured": ", ".join(a for a in live if a not in group.index)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------------------
# The utility question: what RoCLIP's matching returns
# --------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def pool_matching(model, data: ImageCaptionSet, pool_size: int, batch_size: int, n_batches: int,
                  generator: torch.Generator) -> dict[str, float]:
    """Emulate RoCLIP's matching with a trained ``model``: a pool of ``pool_size`` captions of ``data`` (drawn
    with ``generator``), then ``n_batches`` batches of ``batch_size`` other images, each matched to its nearest pool
    caption (:func:`clipguard.defenses.nearest_in_pool`). Returns ``same_category`` (share of images whose matched
    caption names the image's own caption's category; images whose caption names none are left out),
    ``pool_share_same`` (the share of pool captions of the image's category: the rate of a random match),
    ``distinct_share`` (distinct matched captions per batch over the batch size: below 1, images of a batch share a
    matched caption, which the contrastive loss then treats as a negative for all but one of them) and
    ``largest_share`` (the largest group of a batch matched to one caption, over the batch size)."""
    from .defenses.roclip import nearest_in_pool
    from .evaluate import image_embeddings, text_embeddings

    if pool_size < 1 or batch_size < 1 or n_batches < 1:
        raise ValueError(f"need pool_size, batch_size, n_batches >= 1, got {pool_size}, {batch_size}, {n_batches}")
    if pool_size + batch_size * n_batches > len(data):
        raise ValueError(f"{data.name}: {len(data)} rows, need {pool_size + batch_size * n_batches} "
                         f"(pool {pool_size} + {n_batches} batches of {batch_size})")
    categories = caption_categories(data)
    order = torch.randperm(len(data), generator=generator)
    pool_rows, image_rows = order[:pool_size], order[pool_size:pool_size + batch_size * n_batches]
    pool = text_embeddings(model, [data.captions[i] for i in pool_rows.tolist()])
    pool_categories = categories[pool_rows]
    same, counted, chance, distinct, largest = 0, 0, [], [], []
    for rows in image_rows.split(batch_size):
        match = nearest_in_pool(image_embeddings(model, data.float_images(rows)), pool)
        own = categories[rows]
        labelled = own >= 0
        same += int((pool_categories[match][labelled] == own[labelled]).sum())
        counted += int(labelled.sum())
        chance += [float((pool_categories == c).float().mean()) for c in own[labelled].tolist()]
        counts = torch.bincount(match, minlength=len(pool))
        distinct.append(float((counts > 0).sum()) / len(rows))
        largest.append(float(counts.max()) / len(rows))
    return {"same_category": same / counted if counted else float("nan"),
            "pool_share_same": float(np.mean(chance)) if chance else float("nan"),
            "distinct_share": float(np.mean(distinct)), "largest_share": float(np.mean(largest))}


def matching_log(run: Run) -> pd.DataFrame:
    """The epoch records of a stored RoCLIP run's matching epochs (``epoch``, ``clean_matched_same_category``,
    ``poison_matched_adversarial_category``, ...); empty for a run without matching epochs."""
    epochs = [h for h in run.history if h.get("kind") == "epoch" and h.get("roclip_epoch") == 1]
    return pd.DataFrame(epochs, columns=None if epochs else ["epoch", "clean_matched_same_category"])
