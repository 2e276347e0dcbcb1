"""CleanCLIP's published numbers (Bansal et al., ICCV 2023) for the "paper" columns of the CleanCLIP chapter.

Sources: figures-and-tables.md section C and methods.md section 5 of the project reference. Values are percentages
as printed; a cell the available text does not give is ``None`` (shown as "–"), never a guess. Tags: ``paper``
(paper text or captions), ``code`` (the authors' repository, e.g. ``utils/asr_hyper.py``), ``reported`` (issue
threads quoting the authors).
"""

__all__ = ["CLEANCLIP", "CLEANCLIP_SETTING", "CLEANCLIP_FINETUNE_SETTING", "MAIN_TABLE_ATTACKS"]

CLEANCLIP_SETTING = ("RN50 pre-trained from scratch on CC3M (about 3M pairs, 64 epochs, batch 128) with 1,500 "
                     "poisons (0.05%), target 'banana'; ASR and clean accuracy are ImageNet-1K zero-shot")
CLEANCLIP_FINETUNE_SETTING = ("10 epochs on 100K clean CC3M pairs, batch 64, lr 1e-5, AdamW, cosine (the 50 "
                              "warm-up steps are skipped by the released schedule's one-epoch shift); SuFi: the "
                              "image tower and a new linear head on 50 ImageNet images per class, lr 1e-4")

#: The attacks of the main table, in the paper's order: column label -> the book's trigger name.
MAIN_TABLE_ATTACKS = {"BadNet": "badnet_random", "Blended": "blended_noise", "WaNet": "wanet_cleanclip",
                      "Label-consistent": "badnet_random (caption kept)"}

CLEANCLIP = {
    # Figure 2: mean distance between an image's clean and Blended-triggered embedding. Only the unpoisoned
    # model's value is in the caption [paper]; panels (a)-(d) print d in the figure (values not in our text).
    "figure2": {"unpoisoned_d": 0.4,
                "panels": {"poisoned CLIP": "separate cluster", "MMCL only": "separate cluster",
                           "CleanCLIP": "mixed with clean", "SuFi": "mixed with clean"},
                "source": "paper caption; cluster descriptions from the repository's t-SNE images [code]"},
    # Figure 4: Blended attack on CC3M (3M, 1,500 poisons), lambda_1 = 1 [code: utils/asr_hyper.py].
    "figure4": {"lambda2": [0.5, 1.0, 2.0, 4.0, 8.0],
                "asr": [7.48, 7.20, 4.27, 2.89, 1.83],
                "clean_accuracy": [17.8, 18.14, 17.8, 18.0, 17.4]},
    # Main table: (clean accuracy %, ASR %) per (row, attack). Only these cells are known from the available
    # text: the poisoned model's ASR "near 100%" for BadNet/Blended/WaNet and CA about 19% [reported: issue #12];
    # CleanCLIP on Blended (lambda_2 = 1) [code].
    "main_table": {
        ("no defence", "BadNet"): (19.0, "≈100"), ("no defence", "Blended"): (19.0, "≈100"),
        ("no defence", "WaNet"): (19.0, "≈100"), ("no defence", "Label-consistent"): (19.0, None),
        ("CleanCLIP", "Blended"): (18.14, 7.20),
    },
    "main_table_note": ("poisoned-model cells are approximate values reported in the repository's issues (CA 'about "
                        "19%', ASR 'near 100%'); the CleanCLIP Blended cell is from the authors' plotting script; "
                        "the other cells are not in the text available to us"),
    # Hyper-parameters of the released fine-tuning command [code: README, src/parser.py].
    "hyperparameters": {"batch_size": 64, "epochs": 10, "lr": 1e-5, "warmup_steps": 50, "weight_decay": 0.1,
                        "clean_pairs": 100_000, "pretraining_lr": 5e-4, "sufi_lr": 1e-4, "sufi_batch_size": 80,
                        "sufi_images": 50_000},
}
