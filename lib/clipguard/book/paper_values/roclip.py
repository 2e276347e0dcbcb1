"""RoCLIP's published numbers (Yang, Gao, Mirzasoleiman, NeurIPS 2023), as data, for the "paper" columns.

Source: the paper's full text (figures-and-tables.md section A of the project reference). Values are percentages as
printed. Nothing here is computed; it never enters a run's identity.
"""

from __future__ import annotations

__all__ = ["ROCLIP", "ROCLIP_SETTING", "ROCLIP_ABLATION_SETTING", "SETTING", "ABLATION_SETTING"]

ROCLIP_SETTING = "RN50 on a 1M CC3M subset, batch 512, 24 epochs, pool 2%, K = 3"
ROCLIP_ABLATION_SETTING = "RN50 on a 100K CC3M subset, batch 256, 30 epochs, 15 targeted / 90 backdoored pairs"

ROCLIP = {
    # Table 2: success rate (%), 16 targets x 50 captions; HTBA patch backdoor.
    "table2": {("CLIP", "targeted"): 93.75, ("CLIP", "backdoor"): 78.0,
               ("RoCLIP", "targeted"): 12.5, ("RoCLIP", "backdoor"): 0.0},
    # Table 1 / Table 3: the downstream datasets' abbreviations (Table 3's columns) -> name, classes, train, test.
    "datasets": {"F102": ("Flowers102", 102, 2040, 6149), "Fd101": ("Food101", 101, 75750, 25250),
                 "I1K": ("ImageNet-1K", 1000, 50000, 50000), "Pet": ("Oxford-IIIT Pet", 37, 3680, 3669),
                 "Cars": ("Stanford Cars", 196, 8144, 8041), "Cal101": ("Caltech101", 102, 3060, 6085),
                 "C10": ("CIFAR-10", 10, 50000, 10000), "C100": ("CIFAR-100", 100, 50000, 10000),
                 "DTD": ("Describable Textures", 47, 3760, 1880), "Air.": ("FGVC Aircraft", 100, 6667, 3333)},
    # Table 3: top-1 (%) per downstream dataset.
    "table3": {
        ("RoCLIP", "zero-shot"): {"F102": 0.83, "Fd101": 6.34, "I1K": 6.63, "Pet": 3.68, "Cars": 0.72,
                                  "Cal101": 30.38, "C10": 30.14, "C100": 9.52, "DTD": 3.56, "Air.": 1.11},
        ("RoCLIP", "linear probe"): {"F102": 99.22, "Fd101": 54.05, "I1K": 24.09, "Pet": 52.36, "Cars": 20.35,
                                     "Cal101": 72.15, "C10": 78.99, "C100": 57.82, "DTD": 55.21, "Air.": 32.55},
        ("CLIP", "zero-shot"): {"F102": 1.0, "Fd101": 7.1, "I1K": 9.6, "Pet": 3.4, "Cars": 0.8,
                                "Cal101": 34.9, "C10": 34.9, "C100": 7.3, "DTD": 3.7, "Air.": 0.8},
        ("CLIP", "linear probe"): {"F102": 99.5, "Fd101": 44.9, "I1K": 22.2, "Pet": 48.2, "Cars": 12.9,
                                   "Cal101": 70.4, "C10": 70.5, "C100": 45.8, "DTD": 48.2, "Air.": 24.9},
    },
    # Table 4: targeted success rate (%) at poison rates 0.01%, 0.0512%, 0.5%, 1% (K = 2 for RoCLIP).
    "table4": {"rates": ["0.01%", "0.0512%", "0.5%", "1.0%"],
               "CLIP": [100.0, 100.0, 100.0, 100.0], "RoCLIP": [0.0, 0.0, 0.0, 12.5],
               # the table's accuracy columns (%); which poison rate they belong to is not stated
               "accuracy columns": ["ZS C10", "ZS C100", "ZS FD", "ZS Cal", "LP C10", "LP C100", "LP FD", "LP Cal"],
               "accuracy": {"RoCLIP": [21.3, 7.3, 3.4, 17.0, 69.7, 46.6, 45.6, 59.8],
                            "CLIP": [35.0, 7.3, 7.1, 34.9, 70.5, 45.8, 44.6, 70.4]}},
    # Table 5: pool size (100K data); time is per epoch or per run (unverified), memory in MB.
    "table5": {"columns": ["256 (0.2%)", "2048 (2%)", "21845 (20%)", "0 (CLIP w/ Aug)", "0 (CLIP)"],
               "memory (MB)": [39449, 39627, 39505, 39342, 37459],
               "time (s)": [538.31, 538.69, 539.47, 536.96, 506.02],
               "C10 LP": [64.5, 67.1, 67.9, 72.9, 62.1], "C100 LP": [34.9, 39.6, 41.1, 48.4, 37.4],
               "PSR": [0.0, 0.0, 0.0, 12.5, 75.0], "BSR": [0.0, 0.0, 0.0, 0.33, 37.5]},
    # Table 6: other backdoors (100K data): (rate, BSR %).
    "table6": {("CLIP", "Blended"): ("0.09%", 28.0), ("CLIP", "WaNet"): ("0.256%", 43.4),
               ("CLIP", "Label-consistent"): ("0.512%", 97.3), ("RoCLIP", "Blended"): ("0.09%", 0.33),
               ("RoCLIP", "WaNet"): ("0.256%", 0.67), ("RoCLIP", "Label-consistent"): ("0.512%", 0.0)},
    # Table 7: pool and augmentation ablation (100K data).
    "table7": {"columns": ["P + A (RoCLIP)", "Pool only", "Aug only", "CLIP"],
               "C10 LP": [67.1, 60.1, 72.9, 62.1], "C100 LP": [39.6, 36.5, 48.4, 37.4],
               "PSR": [0.0, 0.0, 12.5, 75.0], "BSR": [0.0, 0.67, 0.33, 42.3]},
}

SETTING, ABLATION_SETTING = ROCLIP_SETTING, ROCLIP_ABLATION_SETTING
