"""open_clip models at every scale, behind one small wrapper.

The project registers its own configs (``model_configs/*.json``) with open_clip, so the standard RN50 / ViT-B-32
and our CPU-sized ``clipguard-tiny`` come from the same factory. :class:`CLIPModel` adds what every caller
needs: the input normalisation (inputs are images in [0, 1]) and the tokenizer (open_clip's BPE, offline).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import open_clip
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # any accidental weight download fails at once

__all__ = ["CLIPModel", "build_model", "available_models", "CONFIG_DIR", "OPENAI_MEAN", "OPENAI_STD"]

CONFIG_DIR = Path(__file__).with_name("model_configs")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_registered = False


def _register_configs() -> None:
    global _registered
    if not _registered:
        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def available_models() -> list[str]:
    """Project configs plus open_clip's standard ones (RN50, ViT-B-32, ...)."""
    _register_configs()
    return open_clip.list_models()


def clean_lower(text: str) -> str:
    """open_clip's caption cleaning (``ftfy.fix_text``, HTML unescaping twice, whitespace, lower case) with a
    shortcut: printable ASCII without ``&`` is what ftfy and ``html.unescape`` leave unchanged, so it only needs the
    whitespace and case steps (the same string; ftfy takes about 0.05 ms a caption, and augmented captions are new
    strings every epoch). Anything else goes through open_clip's own function."""
    if text.isascii() and text.isprintable() and "&" not in text:
        return open_clip.tokenizer.whitespace_clean(text.strip()).lower()
    return open_clip.tokenizer._clean_lower(text)


class CLIPModel(nn.Module):
    """An open_clip CLIP that takes images in [0, 1] and captions as strings or token tensors."""

    def __init__(self, clip: nn.Module, name: str, context_length: int, image_size: int,
                 mean: tuple[float, ...] = OPENAI_MEAN, std: tuple[float, ...] = OPENAI_STD):
        super().__init__()
        self.clip = clip
        self.name = name
        self.context_length = context_length
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self._tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
        if self._tokenizer.clean_fn is open_clip.tokenizer._clean_lower:
            self._tokenizer.clean_fn = clean_lower
        self._token_cache: dict[str, torch.Tensor] = {}

    # -- text ---------------------------------------------------------------------------------------------------
    def tokenize(self, captions: list[str]) -> torch.Tensor:
        """BPE tokens ``[N, context]`` (truncated with EOT kept, as open_clip does); cached per caption string."""
        missing = [c for c in dict.fromkeys(captions) if c not in self._token_cache]
        if missing:
            for caption, tokens in zip(missing, self._tokenizer(missing)):
                self._token_cache[caption] = tokens
        return torch.stack([self._token_cache[c] for c in captions])

    def encode_text(self, text: torch.Tensor | list[str], normalize: bool = True) -> torch.Tensor:
        if isinstance(text, list):
            text = self.tokenize(text)
        return self.clip.encode_text(text.to(self.mean.device), normalize=normalize)

    # -- images -------------------------------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Images in [0, 1], ``[B, 3, S, S]`` at the model's size."""
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            raise ValueError(f"{self.name} expects {self.image_size}px images, got {tuple(images.shape[-2:])}")
        images = (images.to(self.mean.device) - self.mean) / self.std
        return self.clip.encode_image(images, normalize=normalize)

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.clip.logit_scale

    def forward(self, images: torch.Tensor | None = None, text: torch.Tensor | None = None
                ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """Unit image and text embeddings (None where no input was given) and the exponentiated logit scale.

        Training code calls the model (not ``encode_*``) so that DistributedDataParallel sees the forward pass."""
        image_features = self.encode_image(images) if images is not None else None
        text_features = self.encode_text(text) if text is not None else None
        return image_features, text_features, self.clip.logit_scale.exp()

    @torch.no_grad()
    def clamp_logit_scale(self, max_scale: float = 100.0) -> None:
        """Keep s = exp(t) in [1, max_scale] (the papers clamp t to [0, ln 100])."""
        self.clip.logit_scale.clamp_(0, float(torch.log(torch.tensor(max_scale))))


@contextlib.contextmanager
def _quiet_root_logger():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def build_model(name: str = "clipguard-tiny", seed: int = 0) -> CLIPModel:
    """A randomly initialised model from a registered config, deterministic given ``seed``."""
    _register_configs()
    if name not in open_clip.list_models():
        raise ValueError(f"unknown model {name!r}; available: {[m for m in open_clip.list_models() if 'clipguard' in m]}"
                         " plus open_clip's standard configs")
    config = open_clip.get_model_config(name)
    with torch.random.fork_rng(devices=[]), _quiet_root_logger():
        torch.manual_seed(seed)
        clip = open_clip.create_model(name, pretrained=None)  # random init is the point; silence its warning
    vision = config["vision_cfg"]
    image_size = vision["image_size"] if isinstance(vision["image_size"], int) else vision["image_size"][0]
    return CLIPModel(clip, name, config["text_cfg"].get("context_length", 77), image_size)
