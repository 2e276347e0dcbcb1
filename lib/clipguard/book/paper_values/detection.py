"""Published numbers of "Detecting Backdoor Samples in CLIP" (Huang et al., ICLR 2025), as data.

Source: figures-and-tables.md section D and detectors.md Sections 4 and 7 of the project reference. Most cells of the
paper's Table 1 are known only as ranges ("above 97%") from secondary reviews; they are kept as printed strings.
Nothing here is computed from our runs.
"""

__all__ = ["SETTING", "K", "BATCH_REFERENCE", "POISON_RATES", "TABLE1_AUROC", "TABLE1_OTHER", "TABLE1_KNOWN",
           "TABLE1_RANGES", "TABLE2", "FIGURE3_FRACTIONS", "RUNTIME_CC3M_4XA100", "RUNTIME_SECONDS", "QUICKSTART",
           "poisons_per_batch", "CC3M_PAIRS"]

SETTING = "RN50 (and ViT-B/16) pre-trained on CC3M, poison rate 0.01% (patch) or 0.1% (others), k = 16"

#: The detectors' k in the released code (``--k``, default 16).
K = 16
#: The released code's reference set: the shuffled batch, 512 images per GPU all-gathered over 4 GPUs (+ as many
#: captions in joint mode).
BATCH_REFERENCE = 2048
#: Poison rates of Table 1's rows (code configs): 0.01% for the patch backdoor and targeted poisoning (TDPA), 0.1%
#: for the others. Keys are the chapter's attack families (clipguard.book.detection.FAMILY_LABELS).
POISON_RATES = {"patch": 0.0001, "targeted": 0.0001, "blended": 0.001, "sig": 0.001, "wanet": 0.001,
                "label_consistent": 0.001, "nashville": 0.001, "multi_trigger": 0.001, "multi_target": 0.001}


def poisons_per_batch(rate: float, batch: int = BATCH_REFERENCE) -> float:
    """Expected poisons in one of the paper's reference batches at ``rate``."""
    return rate * batch


#: Table 1, AUROC (%) of each detector on the patch (BadNets) backdoor, RN50, CC3M.
TABLE1_AUROC = {"k_distance": "> 97", "slof": "> 97", "dao": "> 97", "clip_score": "85.73"}
#: Other reported Table 1 cells: (detector, attack, encoder) -> AUROC (%).
TABLE1_OTHER = {("clip_score", "Nashville", "ViT-B/16"): "23.12", ("cognitive_distillation", "clean-label", "RN50"): "48.68"}
#: Every known Table 1 cell by (attack family, detector): (AUROC % as printed, encoder).
TABLE1_KNOWN = {("patch", "clip_score"): ("85.73", "RN50"), ("nashville", "clip_score"): ("23.12", "ViT-B/16"),
                ("label_consistent", "cognitive_distillation"): ("48.68", "RN50")}
#: What is known of the rest of Table 1, by detector: the local detectors above 97% in (almost) every row, the
#: supervised-era baselines mostly between 48% and 85%.
TABLE1_RANGES = {"k_distance": "> 97", "slof": "> 97", "dao": "> 97", "clip_score": "48–85",
                 "abl": "48–85", "cognitive_distillation": "48–85"}

#: Table 2 / Figure 3: remove the top-ranked pairs by DAO and retrain.
TABLE2 = {"removed": "10%", "asr_after": "below 1% for 6 of 8 attacks", "clean_accuracy": "38.1% -> 37.6%",
          "sufficient_removal": "5%", "attacks_below_1pct": 6, "attacks": 8, "removed_fraction": 0.10,
          "sufficient_fraction": 0.05, "asr_threshold": 0.01}
#: Figure 3 (a): ASR of the patch backdoor against the share of the data removed.
FIGURE3_FRACTIONS = (0.0, 0.01, 0.02, 0.05, 0.10)

#: Runtime to score CC3M on 4 A100 GPUs.
RUNTIME_CC3M_4XA100 = {"dao": "about 15 min", "abl": "4.1 h", "cognitive_distillation": "11.2 h"}
#: The same in seconds (DAO's "about 15 min" taken as 15 min); ABL and CD include what they need (per-epoch loss
#: passes during training; 100 optimisation steps per image).
RUNTIME_SECONDS = {"dao": 15 * 60.0, "abl": 4.1 * 3600.0, "cognitive_distillation": 11.2 * 3600.0}

#: The released QuickStart notebook: 4 triggered of 49,950 ImageNet validation images, DAO k = 16, batch 128.
QUICKSTART = {"auroc": 1.0, "zero_shot_top1": 17.0}

#: CC3M's size as the paper's scale (about 3M pairs; the released RN50 was trained on the 2.3M still downloadable).
CC3M_PAIRS = 3.0e6
