"""Augmentations for RoCLIP / SafeCLIP / CleanCLIP (methods.md section 2).

* :mod:`~clipguard.augment.image`: the image policy (flip, resized crop, colour jitter, grayscale, blur) and
  CleanCLIP's AutoAugment view;
* :mod:`~clipguard.augment.text`: EDA on captions and the caption-augmentation training hook;
* :mod:`~clipguard.augment.wordnet`: WordNet 3.0 for EDA, installed offline from Debian's ``wordnet-base``.

Every public name is re-exported here: ``from clipguard.augment import ImagePolicy, CaptionAugmenter``.
"""

from .image import (AutoAugmentImages, ImagePolicy, apply_image_params, augment_images, autoaugment_images,
                    blur_kernel_size, sample_image_params)
from .text import (EDA, STOP_WORDS, CaptionAugmenter, SynonymTable, augment_captions, caption_rng, clean_caption,
                   default_synonym_table, random_deletion, random_insertion, random_swap, synonym_replacement,
                   synonym_store_identity)
from .wordnet import (LEXNAMES, WORDNET_SOURCE, WordNetUnavailable, default_nltk_data, find_wordnet,
                      install_wordnet, lexnames_text, load_wordnet, sense_index_lines)

__all__ = [
    "ImagePolicy", "augment_images", "sample_image_params", "apply_image_params", "AutoAugmentImages",
    "autoaugment_images", "blur_kernel_size",
    "STOP_WORDS", "clean_caption", "SynonymTable", "default_synonym_table", "synonym_store_identity",
    "synonym_replacement", "random_insertion", "random_swap",
    "random_deletion", "EDA", "caption_rng", "augment_captions", "CaptionAugmenter",
    "WordNetUnavailable", "WORDNET_SOURCE", "LEXNAMES", "lexnames_text", "sense_index_lines", "default_nltk_data",
    "install_wordnet", "find_wordnet", "load_wordnet",
]
