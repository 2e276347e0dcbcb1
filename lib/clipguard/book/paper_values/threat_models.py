"""Published numbers the threat-models chapter compares with: the undefended CLIP rows of RoCLIP's Table 2 and
Table 3, and the poison budgets of Carlini and Terzis (ICLR 2022) as the SafeCLIP and RoCLIP papers quote them.

Source: figures-and-tables.md sections A and B of the project reference. Strings are as printed.
"""

__all__ = ["ATTACKS"]

ATTACKS = {
    "targeted_asr": {"paper": "93.75% (15/16)", "paper poisons": "16 × 50 = 800 in 1M (0.08%)",
                     "source": "RoCLIP Table 2, CLIP"},
    "backdoor_asr": {"paper": "78%", "paper poisons": "150 in 1M (0.015%), HTBA 16×16 top-left",
                     "source": "RoCLIP Table 2, CLIP"},
    "targeted_budget": {"paper": "≈0.0001% of CC3M", "paper poisons": "≈3 in 3M",
                        "source": "Carlini–Terzis via RoCLIP/SafeCLIP"},
    "backdoor_budget": {"paper": "≈0.01% of CC3M", "paper poisons": "≈300 in 3M", "source": "Carlini–Terzis"},
    "poisoned_clean_accuracy": {"paper": "9.6% ImageNet zero-shot (RoCLIP Table 3, 1M)", "paper poisons": "",
                                "source": "RoCLIP Table 3, CLIP"},
}
