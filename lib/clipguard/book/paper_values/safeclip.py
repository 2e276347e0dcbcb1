"""SafeCLIP's published numbers ("Better Safe than Sorry", Yang, Gao, Mirzasoleiman, ICML 2024), as data, for the
"paper" columns of the SafeCLIP chapter.

Sources (figures-and-tables.md section B and methods.md section 4 of the project reference): the abstract and figure
captions [paper]; the released code's defaults [code: HangerYang/SafeCLIP ``src/parser.py``]; the authors'
development notebooks [dev: HangerYang/RoCLIP branch ``inmodal``, ``CyCLIP/fig.ipynb``, ``draw_plot.ipynb``], whose
mapping to the paper's tables is unverified. Percentages as printed. Nothing here is computed; it never enters a
run's identity.
"""

from __future__ import annotations

__all__ = ["SAFECLIP", "SAFECLIP_SETTING", "SAFECLIP_HYPERPARAMETERS", "SAFECLIP_ABLATIONS", "SAFECLIP_SPLIT_LOGS",
           "SAFECLIP_ABLATION_SETTING", "POISON_RANK_HIGHLIGHT"]

SAFECLIP_SETTING = ("RN50 on a 1M CC3M subset (also Visual Genome and MSCOCO), 32 epochs: 5 unimodal warm-up, "
                    "1 low-lr CLIP, 26 main")

SAFECLIP = {
    # abstract [paper]: CC3M targeted poisoning (16 targets) and backdoors, CLIP -> SafeCLIP
    "targeted_asr": {"CLIP": "93.75%", "SafeCLIP": "0%"},
    "backdoor_asr": {"CLIP": "up to 100%", "SafeCLIP": "0%"},
    "utility": "zero-shot and linear probe comparable to CLIP",
    "vs_roclip": "better than RoCLIP in stability and efficacy [reported: summary page]",
    "cost": "moderate hardware overhead [reported: summary page]",
    # Figure 2 caption [paper]: the poison rate inside the safe set after the first split
    "safe_set_poison_rate": "as low as 3.75e-4 %",
    "safe_set_poison_rate_percent": 3.75e-4,
    # abstract [paper]: poisons that suffice against undefended CLIP
    "poisons_needed": "0.0001% of the pre-training data",
    "targets": 16,
}

#: The released code's defaults [code] (the 1M run's differences in brackets [dev]).
SAFECLIP_HYPERPARAMETERS = {
    "epochs": "32 (5 unimodal + 1 low-lr CLIP + 26 main)",
    "batch": "128 [1M run: 512 on 4 GPUs]",
    "lr (unimodal and main)": "5e-4",
    "low lr (CLIP warm-up epoch)": "5e-6 (0.01 x lr)",
    "low lr x steps of that epoch": "0.01 (1M pairs, batch 512: 5e-6 x 1,953 steps) to 0.04 (batch 128: x 7,812)",
    "unimodal share of the epochs": "5 of 32",
    "warm-up steps": "10,000 [1M run: 1,000]",
    "first-split threshold": "0.9",
    "safe-set step per epoch": "0.01",
    "safe-set cap": "0.85",
    "memory bank": "off by default; 256 when on [1M run: on, 21,845]",
    "GMM": "2 components, random_state 0",
}

SAFECLIP_ABLATION_SETTING = "RN50 on CC3M subsets with 0.01%-0.05% poisons (development notebooks)"

#: Development-notebook ablations [dev] (figures-and-tables.md B, items ii-vi); PSR = targeted attack success.
SAFECLIP_ABLATIONS = {
    # ii: poisons per target that survive into the safe set, with vs without the NN memory bank
    "memory_bank": {"100 poisons per target": {"with NN": 0.68, "without NN": 0.63},
                    "500 poisons per target": {"with NN": 8.0, "without NN": 44.5}},
    # iii: data poison rate after the warm-up, low vs high CLIP warm-up lr (initial poison rate -> rate)
    "warmup_lr": {"0.01% poisons": {"low lr": "0.7%", "high lr": "1.3%"},
                  "0.05% poisons": {"low lr": "1.6%", "high lr": "4.9%"}},
    # v: safe-set increment per epoch
    "step": {"1%": "6.25%", "5%": "43.75%"},
    # vi: unimodal CL on the risky set
    "risky_unimodal": {"with": "6.25%", "without": "18.75%"},
}

#: What the development logs record about the split [dev].
SAFECLIP_SPLIT_LOGS = {
    "3M run, first split": "17.8% of the data safe; 55 of 24,000 poisons inside (a top-15% cut by cosine: 33)",
    "1M run, epoch 17": "top 21.4% by p(clean) holds 303 of 8,000 poisons (top 26% by raw cosine: 331)",
    "first-split boundary": "cosine about 0.195",
    "poison rank plot": "percentile of the poisons in the similarity ranking, first 15% highlighted",
}
#: The band the development notebooks' poison-rank plot highlights (percent of the ranking) [dev].
POISON_RANK_HIGHLIGHT = 15
