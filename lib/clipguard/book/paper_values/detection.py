"""Published numbers of "Detecting Backdoor Samples in CLIP" (Huang et al., ICLR 2025), as data.

Source: figures-and-tables.md section D of the project reference; most cells of the paper's Table 1 are known only
as ranges ("above 97%") from secondary reviews, and are kept as printed strings. Nothing here is computed.
"""

__all__ = ["SETTING", "TABLE1_AUROC", "TABLE2", "RUNTIME_CC3M_4XA100", "QUICKSTART"]

SETTING = "RN50 (and ViT-B/16) pre-trained on CC3M, poison rate 0.01% (patch) or 0.1% (others), k = 16"

#: Table 1, AUROC (%) of each detector on the patch (BadNets) backdoor, RN50, CC3M.
TABLE1_AUROC = {"k_distance": "> 97", "slof": "> 97", "dao": "> 97", "clip_score": "85.73"}
#: Other reported Table 1 cells: (detector, attack, encoder) -> AUROC (%).
TABLE1_OTHER = {("clip_score", "Nashville", "ViT-B/16"): "23.12", ("cognitive_distillation", "clean-label", "RN50"): "48.68"}

#: Table 2 / Figure 3: remove the top-ranked pairs by DAO and retrain.
TABLE2 = {"removed": "10%", "asr_after": "below 1% for 6 of 8 attacks", "clean_accuracy": "38.1% -> 37.6%",
          "sufficient_removal": "5%"}

#: Runtime to score CC3M on 4 A100 GPUs.
RUNTIME_CC3M_4XA100 = {"dao": "about 15 min", "abl": "4.1 h", "cognitive_distillation": "11.2 h"}

#: The released QuickStart notebook: 4 triggered of 49,950 ImageNet validation images, DAO k = 16, batch 128.
QUICKSTART = {"auroc": 1.0, "zero_shot_top1": 17.0}
