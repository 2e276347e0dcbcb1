"""CleanCLIP and supervised fine-tuning (SuFi) as fine-tuning objectives for :func:`clipguard.train.train`.

CleanCLIP (Bansal, Singhi, Yang, Yin, Grover, Chang, ICCV 2023; methods.md section 5) starts from a CLIP that was
poisoned in pre-training and fine-tunes it on a small clean image–caption set with

    L = λ1 · L_MMCL + λ2 · L_SS
    L_MMCL = ½ [CE(s · I Tᵀ) + CE(s · T Iᵀ)]          original image vs original caption
    L_SS   = ½ [CE(s · I Ĩᵀ) + CE(s · T T̃ᵀ)]          each original vs its augmented view

where I, T are the unit embeddings of the batch's images and captions, Ĩ of their AutoAugment views and T̃ of their
EDA views, s the shared learnable temperature, CE the cross-entropy with diagonal targets over in-batch negatives.
Originals and views go through the model in one forward pass, as in the released code. The paper's main table is
one objective with different weights: MMCL-only fine-tuning (λ2 = 0), SSL-only (λ1 = 0), CleanCLIP (1, 1).

A run is a fine-tuning spec (:func:`clipguard.experiments.finetune_spec`): its ``init`` is the attacked spec of
:mod:`clipguard.scenarios`, so the poisoned parent is trained once and shared; the clean set holds images of the
training split that the parent never saw (and the test split is separate); the evaluators measure the child
against the parent's attack. The choices, with the released code one parameter away where it is a choice:

=============================  ============================================  =====================================
choice                         here                                          released code (nishadsinghi/CleanCLIP)
=============================  ============================================  =====================================
schedule                       linear warm-up, then cosine                   one-epoch shift: no warm-up at all
                                                                             (``shifted_schedule=True``)
optimiser                      fresh AdamW                                   AdamW state of the poisoned checkpoint
EDA view of a caption          fixed once per caption (``caption_resample``  fixed once
                               = False), or resampled every epoch
AutoAugment view               fresh draw per image and step, seeded         fresh draw, unseeded
SuFi head                      the frozen zero-shot classifier (see below)   a fresh ``Linear`` trained jointly
zero-shot ASR                  evaluation.md 4.2 (``backdoor_asr``)          accuracy on triggered images
                                                                             (:func:`backdoor_analysis` shows it)
=============================  ============================================  =====================================

Supervised fine-tuning (SuFi, methods.md 5.5) trains the whole image tower with cross-entropy on labelled clean
images. The paper's head is a new linear layer; here the head is the linear layer the model already has for the
task, the zero-shot classifier (class-prompt embeddings of the frozen text tower, scaled by the frozen
temperature), kept fixed. The stored run then stays a CLIP model whose zero-shot accuracy *is* the fine-tuned
classifier's accuracy, so clean accuracy and ASR come from the same evaluators as every other row; the text tower
and the temperature never change.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .. import scenarios
from ..evaluate import image_embeddings, zero_shot_classifier, zero_shot_logits
from ..experiments import attack_of, finetune_spec, load_dataset, register_objective
from ..losses import clip_loss, contrastive_ce, gather_features
from ..train import ClipObjective, Context, Pass
from ..utils import config_from_spec

__all__ = ["cleanclip_loss", "CleanCLIPConfig", "CleanCLIPObjective", "SuFiConfig", "SuFiObjective",
           "freeze_all_but_image_tower", "FinetuneSettings", "spec", "sufi_spec", "finetune", "MAIN_TABLE_ROWS",
           "main_table_spec", "main_table_attacks", "stored_attack", "backdoor_analysis", "embedding_shift"]


# --------------------------------------------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------------------------------------------

def cleanclip_loss(image: torch.Tensor, text: torch.Tensor, image_view: torch.Tensor | None,
                   text_view: torch.Tensor | None, logit_scale: torch.Tensor, mmcl_weight: float = 1.0,
                   ss_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``λ1 · L_MMCL + λ2 · L_SS`` on unit embeddings ``[N, D]`` (rows of the same index belong to one pair and its
    views); returns the loss and its detached terms (``mmcl``, ``ss``, ``ss_image``, ``ss_text``). A term whose
    weight is 0 is not computed (so λ2 = 0 is exactly the CLIP loss and needs no views)."""
    if mmcl_weight < 0 or ss_weight < 0 or (mmcl_weight == 0 and ss_weight == 0):
        raise ValueError(f"weights must be >= 0 and not both 0, got mmcl_weight={mmcl_weight}, ss_weight={ss_weight}")
    terms, parts = [], {}
    if mmcl_weight:
        mmcl = clip_loss(image, text, logit_scale)
        terms.append(mmcl if mmcl_weight == 1 else mmcl_weight * mmcl)
        parts["mmcl"] = mmcl.detach()
    if ss_weight:
        if image_view is None or text_view is None:
            raise ValueError("ss_weight > 0 needs the augmented views of images and captions")
        ss_image = contrastive_ce(image, image_view, logit_scale)
        ss_text = contrastive_ce(text, text_view, logit_scale)
        ss = 0.5 * (ss_image + ss_text)
        terms.append(ss if ss_weight == 1 else ss_weight * ss)
        parts.update(ss=ss.detach(), ss_image=ss_image.detach(), ss_text=ss_text.detach())
    return terms[0] if len(terms) == 1 else terms[0] + terms[1], parts


# --------------------------------------------------------------------------------------------------------------
# CleanCLIP objective
# --------------------------------------------------------------------------------------------------------------

@dataclass
class CleanCLIPConfig:
    """CleanCLIP's objective settings; an objective spec ``{"name": "cleanclip", ...}`` names any of these."""

    mmcl_weight: float = 1.0          # λ1 (released: --clip_weight, default 1)
    ss_weight: float = 1.0            # λ2 (released: --inmodal_weight, default 1)
    autoaugment_policy: str = "imagenet"   # torchvision AutoAugment policy of the image view
    caption_resample: bool = False    # False: one fixed EDA view per caption (released); True: new every epoch

    def __post_init__(self) -> None:
        if self.mmcl_weight < 0 or self.ss_weight < 0 or (self.mmcl_weight == 0 and self.ss_weight == 0):
            raise ValueError(f"mmcl_weight and ss_weight must be >= 0 and not both 0, got {self.mmcl_weight}, "
                             f"{self.ss_weight}")
        if self.autoaugment_policy not in ("imagenet", "cifar10", "svhn"):
            raise ValueError(f"autoaugment_policy must be 'imagenet', 'cifar10' or 'svhn', got "
                             f"{self.autoaugment_policy!r}")

    @classmethod
    def from_spec(cls, spec: dict) -> "CleanCLIPConfig":
        return config_from_spec(cls, spec, "objective 'cleanclip'")


class CleanCLIPObjective(ClipObjective):
    """CleanCLIP fine-tuning: one pass over the clean pairs per epoch; each batch's originals and views
    (``image_view(images, generator)``, ``text_view(captions, epoch, indices)``) in one forward pass. Logs the
    loss terms per step."""

    name = "cleanclip"

    def __init__(self, config: CleanCLIPConfig, image_view: Callable | None = None,
                 text_view: Callable | None = None, seed: int = 0):
        super().__init__()  # the originals are not augmented
        self.config = config
        if config.ss_weight:
            from ..augment import AutoAugmentImages, CaptionAugmenter

            image_view = image_view or AutoAugmentImages(config.autoaugment_policy)
            text_view = text_view or CaptionAugmenter(seed=seed, resample=config.caption_resample)
        self.image_view, self.text_view = image_view, text_view

    def plan_epoch(self, ctx: Context) -> list[Pass]:
        return [Pass("cleanclip", torch.arange(len(ctx.data)))]

    def loss(self, ctx: Context, pass_name: str, model: torch.nn.Module, indices: torch.Tensor):
        images = ctx.data.float_images(indices)
        captions = [ctx.data.captions[i] for i in indices.tolist()]
        n = len(indices)
        with_views = bool(self.config.ss_weight)
        if with_views:
            views = self.image_view(images, ctx.generator("autoaugment", ctx.step, ctx.rank))
            images = torch.cat([images, views])
            captions = captions + list(self.text_view(captions, ctx.epoch, indices))
        image_features, text_features, scale = model(images.to(ctx.device, non_blocking=True),
                                                     ctx.tokens(indices, captions))
        if with_views:
            features = gather_features(image_features[:n], text_features[:n], image_features[n:], text_features[n:])
        else:
            features = (*gather_features(image_features, text_features), None, None)
        loss, parts = cleanclip_loss(*features, scale, self.config.mmcl_weight, self.config.ss_weight)
        return loss, {k: float(v) for k, v in parts.items()}

    def identity(self) -> dict:
        return {"objective": self.name, **asdict(self.config), "image_view": repr(self.image_view),
                "text_view": repr(self.text_view)}


# --------------------------------------------------------------------------------------------------------------
# SuFi objective
# --------------------------------------------------------------------------------------------------------------

def freeze_all_but_image_tower(model: torch.nn.Module) -> None:
    """``requires_grad`` only for the image tower (``clip.visual.*``): text tower and temperature frozen."""
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith("clip.visual."))


@dataclass
class SuFiConfig:
    """Supervised fine-tuning settings; an objective spec ``{"name": "sufi", ...}``. ``head="zeroshot"``: the
    classifier is the frozen zero-shot classifier of the starting model (module docstring)."""

    head: str = "zeroshot"

    def __post_init__(self) -> None:
        if self.head != "zeroshot":
            raise ValueError(f"head must be 'zeroshot' (the frozen zero-shot classifier), got {self.head!r}")

    @classmethod
    def from_spec(cls, spec: dict) -> "SuFiConfig":
        return config_from_spec(cls, spec, "objective 'sufi'")


class SuFiObjective:
    """Cross-entropy of ``s · normalize(f_I(x)) Wᵀ`` with the dataset's labels, where ``W`` holds the class
    embeddings of the frozen text tower (prompt ensemble of the data's templates) and ``s`` the frozen temperature;
    only the image tower is trained (:func:`freeze_all_but_image_tower`; the loop's AdamW skips parameters that
    get no gradient). Rows labelled -1 are ignored."""

    name = "sufi"

    def __init__(self, config: SuFiConfig | None = None):
        self.config = config or SuFiConfig()
        self.head: torch.Tensor | None = None

    def plan_epoch(self, ctx: Context) -> list[Pass]:
        if ctx.data.labels is None or not ctx.data.classnames or not ctx.data.templates:
            raise ValueError(f"{ctx.data.name}: SuFi needs labels, class names and templates")
        freeze_all_but_image_tower(ctx.model)
        return [Pass("sufi", torch.nonzero(ctx.data.labels >= 0).flatten())]

    def loss(self, ctx: Context, pass_name: str, model: torch.nn.Module, indices: torch.Tensor):
        if self.head is None:  # a function of the frozen text tower only, so a resumed run gets the same head
            self.head = zero_shot_classifier(ctx.model, ctx.data.classnames, ctx.data.templates).to(ctx.device)
        image_features, _, scale = model(ctx.images(indices))
        logits = scale.detach() * image_features @ self.head.to(image_features.dtype).T
        labels = ctx.data.labels[indices].to(ctx.device)
        loss = F.cross_entropy(logits.float(), labels)
        return loss, {"train_accuracy": float(logits.detach().argmax(1).eq(labels).float().mean())}

    def end_epoch(self, ctx: Context) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def identity(self) -> dict:
        return {"objective": self.name, **asdict(self.config)}


# --------------------------------------------------------------------------------------------------------------
# Registration: objective specs, fine-tuning specs, the book's defence entries
# --------------------------------------------------------------------------------------------------------------

def spec(**fields) -> dict:
    """The ``cleanclip`` objective spec with every field written out (one canonical spec per configuration)."""
    return {"name": "cleanclip", **asdict(CleanCLIPConfig.from_spec(fields))}


def sufi_spec(**fields) -> dict:
    return {"name": "sufi", **asdict(SuFiConfig.from_spec(fields))}


def _augment_uses(section: dict) -> tuple[str, ...]:
    return ("clipguard.augment",) if section.get("ss_weight", CleanCLIPConfig.ss_weight) else ()


@register_objective("cleanclip", uses=_augment_uses)
def _cleanclip_objective(objective_spec: dict, train_data, info: dict) -> CleanCLIPObjective:
    return CleanCLIPObjective(CleanCLIPConfig.from_spec(objective_spec), seed=info.get("seed", 0))


@register_objective("sufi")
def _sufi_objective(objective_spec: dict, train_data, info: dict) -> SuFiObjective:
    if train_data.labels is None:
        raise ValueError(f"{train_data.name}: SuFi needs labelled images")
    return SuFiObjective(SuFiConfig.from_spec(objective_spec))


@dataclass
class FinetuneSettings:
    """How the book fine-tunes a poisoned run (CleanCLIP and SuFi rows alike).

    ``n``: clean pairs, drawn from training-split images the parent never saw (None: a fifth of the parent's
    training set). ``epochs``: 10, as the paper. ``lr``: None gives ``lr_ratio`` times the parent's peak learning
    rate. The paper fine-tunes at a fiftieth of its pre-training rate for about 15,600 steps; the book's clean set
    gives about 150 steps, in which a fiftieth moves nothing, so the default is the parent's own peak rate: the
    largest factor of {0.02, 0.3, 1, 3} at which CleanCLIP keeps clean zero-shot accuracy within 3 points of the
    poisoned model (measured at ``cpu``, HTBA patch, seed 0: factor 1 loses 2.1 points, factor 3 loses 3.8; the
    ablations page of the chapter reruns the sweep). ``batch_size``, ``weight_decay``: None keeps the parent's.
    ``warmup_steps``: linear warm-up steps before the cosine (the paper's 50 of 15,600, scaled). ``evaluate``: the
    evaluators of the fine-tuned run (clean zero-shot accuracy and the backdoor ASR; the parent's linear probe is
    left out to keep fine-tuning cheap). ``each_epoch``: also evaluate after every epoch (the run's history then
    holds zero-shot accuracy and ASR per epoch); only the page that plots a history asks for it (the ablations
    page, for its four Figure 2 fine-tunes, which it then trains apart from the main table's identical ones: four
    runs, against an evaluation in each epoch of every other fine-tune of the book). An evaluation costs about a
    fifth of a fine-tuning epoch at ``cpu`` (15 steps), and no result but the history changes."""

    n: int | None = None
    epochs: int = 10
    lr: float | None = None
    lr_ratio: float = 1.0
    batch_size: int | None = None
    warmup_steps: int = 5
    weight_decay: float | None = None
    evaluate: tuple[str, ...] = ("zeroshot", "backdoor_asr")
    each_epoch: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 1 or (self.n is not None and self.n < 1) or self.lr_ratio <= 0 or self.warmup_steps < 0:
            raise ValueError(f"need epochs >= 1, n >= 1, lr_ratio > 0 and warmup_steps >= 0, got {self}")
        self.evaluate = tuple(self.evaluate)


#: SuFi's learning rate relative to CleanCLIP's. The paper's README uses 1e-4 for SuFi and 1e-5 for CleanCLIP
#: (10x); the book applies the same rule to both (the largest rate that keeps clean accuracy within 3 points):
#: at ``cpu`` (HTBA patch, seed 0) SuFi at 3x the parent's rate loses 5.3 points, at 1x 0.6 points.
SUFI_LR_FACTOR = 1.0
#: SuFi's weight decay (released ``get_finetune_metrics``: 0.01 on non-bias parameters).
SUFI_WEIGHT_DECAY = 0.01


def finetune(attacked: dict, objective: dict, **settings) -> dict:
    """The fine-tuning spec of ``attacked`` (a stored run's spec) with ``objective`` and
    :class:`FinetuneSettings` ``settings``."""
    s = config_from_spec(FinetuneSettings, settings, "fine-tuning settings")
    parent_train = attacked["train"]
    train = {"epochs": s.epochs, "lr": s.lr if s.lr is not None else parent_train["lr"] * s.lr_ratio,
             "warmup_steps": s.warmup_steps, "shifted_schedule": False}
    if s.batch_size is not None:
        train["batch_size"] = s.batch_size
    if s.weight_decay is not None:
        train["weight_decay"] = s.weight_decay
    probe = attacked.get("probe_train") if "linear_probe" in s.evaluate else None
    return finetune_spec(attacked, objective=objective, train=train, n=s.n, evaluate=list(s.evaluate),
                         probe_train=probe, evaluate_each_epoch=s.each_epoch)


def _split(fields: dict, cls) -> tuple[dict, dict]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in fields.items() if k in names}, {k: v for k, v in fields.items() if k not in names}


@scenarios.register_defence("cleanclip")
def defend(attacked: dict, **fields) -> dict:
    """CleanCLIP fine-tuning of the poisoned run ``attacked``: :class:`CleanCLIPConfig` fields (``ss_weight=0``
    is MMCL-only, ``mmcl_weight=0`` SSL-only) and :class:`FinetuneSettings` fields."""
    objective_fields, settings = _split(fields, CleanCLIPConfig)
    return finetune(attacked, spec(**objective_fields), **settings)


@scenarios.register_defence("sufi")
def defend_sufi(attacked: dict, **fields) -> dict:
    """Supervised fine-tuning of the image tower of ``attacked`` on the labelled clean images; learning rate
    :data:`SUFI_LR_FACTOR` times CleanCLIP's and weight decay :data:`SUFI_WEIGHT_DECAY` unless given."""
    objective_fields, settings = _split(fields, SuFiConfig)
    settings.setdefault("lr_ratio", FinetuneSettings.lr_ratio * SUFI_LR_FACTOR)
    settings.setdefault("weight_decay", SUFI_WEIGHT_DECAY)
    return finetune(attacked, sufi_spec(**objective_fields), **settings)


def main_table_attacks(profile) -> dict[str, dict]:
    """The backdoors of the chapter's main table at ``profile``: label -> poison section, each at the book's standard
    rate (:func:`clipguard.scenarios.backdoor_poison`). CleanCLIP's four attacks as its generator makes them
    (random-noise BadNet patch, Blended with fresh noise, WaNet with the per-pixel grid, label-consistent with the
    random-noise patch on images whose caption already names the target) and the two the book's other chapters use
    (the HTBA patch, the book's standard backdoor, and Blended with a fixed key), so the parents are shared."""
    poison = scenarios.backdoor_poison
    return {"BadNet (HTBA patch)": poison(profile),
            "BadNet (random noise)": poison(profile, trigger="badnet_random"),
            "Blended (fixed key)": poison(profile, trigger="blended"),
            "Blended (fresh noise)": poison(profile, trigger="blended_noise"),
            "WaNet": poison(profile, trigger="wanet_cleanclip"),
            "Label-consistent": poison(profile, trigger="badnet_random", caption_source="keep")}


#: The rows of CleanCLIP's main table: label -> (defence name in :data:`clipguard.scenarios.DEFENCES`, fields).
MAIN_TABLE_ROWS: dict[str, tuple[str, dict]] = {
    "no defence": ("clip", {}),
    "MMCL only": ("cleanclip", {"ss_weight": 0.0}),
    "SSL only": ("cleanclip", {"mmcl_weight": 0.0}),
    "CleanCLIP": ("cleanclip", {}),
    "SuFi": ("sufi", {}),
}


def main_table_spec(attacked: dict, row: str, **settings) -> dict:
    """The spec of one main-table row (a key of :data:`MAIN_TABLE_ROWS`) for the poisoned spec ``attacked``;
    ``settings`` (fine-tuning settings) apply to the fine-tuned rows only."""
    if row not in MAIN_TABLE_ROWS:
        raise ValueError(f"unknown row {row!r}; rows: {list(MAIN_TABLE_ROWS)}")
    defence, fields = MAIN_TABLE_ROWS[row]
    if defence == "clip":
        return dict(attacked)
    return scenarios.defended(attacked, defence, **fields, **settings)


# --------------------------------------------------------------------------------------------------------------
# Analysis of a stored run under its attack: both ASR definitions and the clean/triggered embedding shift
# --------------------------------------------------------------------------------------------------------------

def embedding_shift(clean: torch.Tensor, triggered: torch.Tensor) -> float:
    """Figure 2's ``d``: the mean Euclidean distance between each image's clean and triggered unit embedding."""
    if clean.shape != triggered.shape:
        raise ValueError(f"embedding shapes differ: {tuple(clean.shape)} vs {tuple(triggered.shape)}")
    return float((F.normalize(clean, dim=1) - F.normalize(triggered, dim=1)).norm(dim=1).mean())


def stored_attack(run, store) -> dict | None:
    """The poison section ``run`` was attacked with: its own, else its parent's (stored configs name the parent
    run by id, ``{"init": {"run": id}}``, which is looked up in ``store``)."""
    config = run.config
    while config is not None:
        if config.get("poison"):
            return config["poison"]
        parent = config.get("init") or {}
        if "run" not in parent:
            return attack_of(parent) if parent else None
        path = store.dir / parent["run"]
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"run {run.id}: its parent run {parent['run']} is not in {store.dir}")
        config = json.loads((path / "config.json").read_text())["config"]
    return None


def backdoor_analysis(run, store, poison: dict | None = None, n_embed: int = 500, tsne: bool = False,
                      perplexity: float = 10.0, seed: int | None = None, batch_size: int = 256):
    """Stored analysis of ``run``'s model under a backdoor (default: the attack the run or its parent was trained
    with; pass ``poison`` for a clean model). On the run's test set, triggered as the ``backdoor_asr`` evaluator
    does (batches of ``batch_size`` from ``Generator(seed)``, default the model seed, the poison's 8-bit
    conversion):

    * ``clean_top1``; ``asr`` (evaluation.md 4.2) with ``successes``/``total``; ``gray_asr``: the same with every
      triggered image converted to gray (channel mean), i.e. the part of the backdoor that does not need colour
      (the book's images are grayscale, so clean fine-tuning data carry no colour); ``release_top1`` (what the
      released CleanCLIP zero-shot path prints with ``--asr``: accuracy of triggered images against their true
      labels) and ``release_fixed_asr`` (the maintainer's fix: predicted target over all images);
    * ``d`` (:func:`embedding_shift`) over the first ``n_embed`` test images; their clean and triggered unit
      embeddings in ``embeddings.npz``, with ``tsne`` also their joint 2-D t-SNE (scikit-learn, ``perplexity``,
      PCA initialisation; the released script uses perplexity 10 and 1,000 iterations).

    Returns ``(metrics, arrays)``."""
    from ..attacks import backdoor_success, cleanclip_release_asr, make_trigger, poison_spec, triggered_test_images
    from ..runs import code_identity

    poison = poison or stored_attack(run, store)
    if not poison or poison.get("kind") != "backdoor":
        raise ValueError(f"run {run.id}: no backdoor attack to analyse; pass poison=")
    parsed = poison_spec({k: v for k, v in poison.items() if k not in ("seed", "heldout")})
    if len(parsed.components) != 1:
        raise ValueError("backdoor_analysis handles single-trigger attacks")
    seed = int(run.config.get("model_seed", 0) if seed is None else seed)
    key = {"kind": "cleanclip-backdoor-analysis", "run": run.id, "poison": parsed.identity(), "n_embed": n_embed,
           "tsne": perplexity if tsne else None, "seed": seed, "batch_size": batch_size,
           "code": code_identity(["clipguard.defenses.cleanclip", "clipguard.attacks", "clipguard.evaluate"])}

    def compute(work: Path) -> dict:
        from sklearn.manifold import TSNE

        model = run.load_model()
        test = load_dataset(run.config["test"])
        component = parsed.components[0]
        trigger = make_trigger(component["trigger"])
        target = test.classnames.index(component["target_class"])
        classifier = zero_shot_classifier(model, test.classnames, test.templates)
        generator = torch.Generator().manual_seed(seed)
        clean_logits, triggered_logits, gray_logits, triggered_embed = [], [], [], []
        for start in range(0, len(test), batch_size):
            images = test.float_images(slice(start, start + batch_size))
            triggered = triggered_test_images(images, trigger, generator, parsed.overflow)
            clean_logits.append(zero_shot_logits(model, images, classifier))
            embedded = image_embeddings(model, triggered)
            triggered_logits.append(embedded @ classifier.T)
            triggered_embed.append(embedded)
            gray = triggered.mean(1, keepdim=True).expand_as(triggered).contiguous()  # the trigger without colour
            gray_logits.append(zero_shot_logits(model, gray, classifier))
        clean_logits, triggered_logits = torch.cat(clean_logits), torch.cat(triggered_logits)
        corrected = backdoor_success(triggered_logits, test.labels, target)
        gray_asr = backdoor_success(torch.cat(gray_logits), test.labels, target).rate
        release = cleanclip_release_asr(triggered_logits, test.labels, target, "zeroshot")
        fixed = cleanclip_release_asr(triggered_logits, test.labels, target, "zeroshot_fixed")
        n = min(n_embed, len(test))
        clean_embed = image_embeddings(model, test.float_images(slice(0, n)))
        triggered_embed = torch.cat(triggered_embed)[:n]
        arrays = {"clean": clean_embed.numpy(), "triggered": triggered_embed.numpy(), "labels": test.labels[:n].numpy()}
        if tsne:
            joint = torch.cat([clean_embed, triggered_embed]).numpy()
            arrays["tsne"] = TSNE(n_components=2, perplexity=min(perplexity, (2 * n - 1) / 3), max_iter=1000,
                                  init="pca", random_state=seed).fit_transform(joint).astype(np.float32)
        np.savez_compressed(work / "embeddings.npz", **arrays)
        return {"clean_top1": float(clean_logits.argmax(1).eq(test.labels).float().mean()),
                "asr": corrected.rate, "successes": corrected.successes, "total": corrected.total, "gray_asr": gray_asr,
                "release_top1": release.rate, "release_fixed_asr": fixed.rate,
                "d": embedding_shift(clean_embed, triggered_embed), "n_embed": n, "target": component["target_class"],
                "trigger": trigger.name}

    stored = store.get_or_compute(key, compute)
    with np.load(stored.artifact("embeddings.npz")) as arrays:
        return stored.metrics, {name: arrays[name] for name in arrays.files}
