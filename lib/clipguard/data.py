"""Image–caption datasets: one in-memory interface, embedded data, external formats.

Every dataset is an :class:`ImageCaptionSet`: a uint8 image tensor ``[N, 3, H, W]``, captions, optional class
labels with class names and zero-shot templates.  Items come out as ``{"image": float [0,1], "caption", "index",
"key"}``; the *content key* (hash of image bytes + caption) identifies a pair independently of its row, so poison
manifests and detector scores survive re-ordering and re-downloading.

Small-scale by design: everything is held in memory, which makes batch indexing (and so CPU training) fast.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import gzip
import hashlib
import io
import os
import random
import re
import struct
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

__all__ = [
    "DataError",
    "ImageCaptionSet",
    "content_key",
    "FASHION_MNIST_DIR",
    "class_synonyms",
    "FASHION_CLASSNAMES",
    "fashion_mnist",
    "caption_for_class",
    "class_of_caption",
    "shapes",
    "load_csv_pairs",
    "load_webdataset",
    "load_image_folder",
    "load_labels_csv",
    "load_torchvision",
    "load_cached",
    "LoadReport",
    "concatenate",
    "CLIP_TEMPLATES",
]


class DataError(ValueError):
    """Bad input data; the message names the file, row or item."""


# --------------------------------------------------------------------------------------------------------------
# The dataset container
# --------------------------------------------------------------------------------------------------------------


def content_key(image: torch.Tensor | np.ndarray, caption: str) -> str:
    """Stable 16-hex-digit key of a pair: SHA-1 of the uint8 image bytes, a separator and the UTF-8 caption."""
    array = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.dtype != np.uint8:
        raise DataError(f"content_key needs a uint8 image, got {array.dtype}")
    digest = hashlib.sha1(np.ascontiguousarray(array).tobytes())
    digest.update(b"\x00")
    digest.update(caption.encode("utf-8"))
    return digest.hexdigest()[:16]


@dataclass
class ImageCaptionSet(torch.utils.data.Dataset):
    """In-memory image–caption (and/or labelled image) dataset.

    images: uint8 ``[N, 3, H, W]``; captions: N strings or None for a labelled-only set; labels: int64 ``[N]``
    (-1 = unknown) or None; classnames/templates: for zero-shot evaluation (templates contain ``{}``).
    ``attributes`` holds extra per-item integer arrays (e.g. colour of a shape) and their names.
    """

    images: torch.Tensor
    captions: list[str] | None = None
    labels: torch.Tensor | None = None
    classnames: list[str] | None = None
    templates: list[str] | None = None
    name: str = "dataset"
    attributes: dict[str, torch.Tensor] = field(default_factory=dict)
    attribute_names: dict[str, list[str]] = field(default_factory=dict)
    _keys: list[str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise DataError(f"{self.name}: images must be a uint8 tensor [N, C, H, W]")
        if self.images.shape[1] != 3:
            raise DataError(f"{self.name}: images must have 3 channels, got {self.images.shape[1]}")
        n = len(self.images)
        if self.captions is not None:
            if len(self.captions) != n:
                raise DataError(f"{self.name}: {len(self.captions)} captions for {n} images")
            for i, caption in enumerate(self.captions):
                if not isinstance(caption, str) or not caption.strip():
                    raise DataError(f"{self.name}: caption of item {i} is empty or not a string: {caption!r}")
        if self.labels is not None:
            self.labels = torch.as_tensor(self.labels, dtype=torch.long)
            if self.labels.shape != (n,):
                raise DataError(f"{self.name}: labels shape {tuple(self.labels.shape)} != ({n},)")
        for attr, values in self.attributes.items():
            if len(values) != n:
                raise DataError(f"{self.name}: attribute {attr!r} has {len(values)} values for {n} images")

    # -- access -------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        item = {"image": self.images[index].float() / 255.0, "index": int(index), "key": self.keys[index]}
        if self.captions is not None:
            item["caption"] = self.captions[index]
        if self.labels is not None:
            item["label"] = int(self.labels[index])
        return item

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def float_images(self, index: torch.Tensor | slice | Sequence[int] | None = None) -> torch.Tensor:
        """Images as float in [0, 1] (all, or the given rows)."""
        images = self.images if index is None else self.images[index]
        return images.float().div_(255.0)

    @property
    def keys(self) -> list[str]:
        """Content keys, computed once (labelled-only sets hash the image with an empty caption)."""
        if self._keys is None:
            captions = self.captions if self.captions is not None else [""] * len(self)
            self._keys = [content_key(self.images[i], captions[i]) for i in range(len(self))]
        return self._keys

    def fingerprint(self) -> str:
        """Hash of all content keys in order, plus labels: the data identity used by the run store."""
        digest = hashlib.sha1(self.name.encode())
        for key in self.keys:
            digest.update(key.encode())
        if self.labels is not None:
            digest.update(self.labels.numpy().tobytes())
        return digest.hexdigest()[:16]

    def subset(self, indices: Sequence[int] | torch.Tensor, name: str | None = None) -> "ImageCaptionSet":
        """A new set holding the given rows (in that order)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        keys = self._keys
        return ImageCaptionSet(
            images=self.images[idx].clone(),
            captions=None if self.captions is None else [self.captions[i] for i in idx.tolist()],
            labels=None if self.labels is None else self.labels[idx].clone(),
            classnames=self.classnames,
            templates=self.templates,
            name=name or self.name,
            attributes={k: v[idx].clone() for k, v in self.attributes.items()},
            attribute_names=dict(self.attribute_names),
            _keys=None if keys is None or name is not None else [keys[i] for i in idx.tolist()],
        )

    def copy(self) -> "ImageCaptionSet":
        """An independent copy (its own tensors and lists), content keys included."""
        out = self.subset(torch.arange(len(self)))
        out.classnames = None if self.classnames is None else list(self.classnames)
        out.templates = None if self.templates is None else list(self.templates)
        return out

    def with_captions(self, captions: list[str], name: str | None = None) -> "ImageCaptionSet":
        """Same images and labels, other captions."""
        return ImageCaptionSet(self.images, list(captions), self.labels, self.classnames, self.templates,
                               name or self.name, dict(self.attributes), dict(self.attribute_names))

    def with_labels(self, attribute: str) -> "ImageCaptionSet":
        """Same images, labelled by another attribute (e.g. shapes by colour) for zero-shot tasks."""
        if attribute not in self.attributes:
            raise DataError(f"{self.name}: no attribute {attribute!r}; have {sorted(self.attributes)}")
        names = self.attribute_names[attribute]
        return ImageCaptionSet(self.images, self.captions, self.attributes[attribute].clone(), list(names),
                               ATTRIBUTE_TEMPLATES.get(attribute, self.templates), f"{self.name}-{attribute}",
                               dict(self.attributes), dict(self.attribute_names))


def concatenate(sets: Sequence[ImageCaptionSet], name: str) -> ImageCaptionSet:
    """Rows of several sets with the same image size, in order."""
    if not sets:
        raise DataError("concatenate needs at least one set")
    first = sets[0]
    if any(s.images.shape[1:] != first.images.shape[1:] for s in sets):
        raise DataError(f"{name}: image sizes differ: {[tuple(s.images.shape[1:]) for s in sets]}")
    has_captions = all(s.captions is not None for s in sets)
    has_labels = all(s.labels is not None for s in sets)
    return ImageCaptionSet(
        images=torch.cat([s.images for s in sets]),
        captions=[c for s in sets for c in s.captions] if has_captions else None,
        labels=torch.cat([s.labels for s in sets]) if has_labels else None,
        classnames=first.classnames,
        templates=first.templates,
        name=name,
    )


# --------------------------------------------------------------------------------------------------------------
# Templates and captions
# --------------------------------------------------------------------------------------------------------------

def _openai_templates() -> list[str]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return [template("{}") for template in OPENAI_IMAGENET_TEMPLATES]


#: The 80 public CLIP prompt templates (OpenAI, ImageNet prompt engineering), as format strings.
CLIP_TEMPLATES: list[str] = _openai_templates()

#: Short template sets for the synthetic set's zero-shot tasks.
ATTRIBUTE_TEMPLATES = {
    "shape": ["a {}.", "a picture of a {}.", "a {} on a background.", "a drawing of a {}."],
    "colour": ["something {}.", "a {} shape.", "a {} object.", "a picture of something {}."],
}

_DESCRIPTIVE = [
    "a {adj} {name} on a plain background",
    "product photo of a {adj} {name}",
    "{name}, {adj}, catalogue image",
    "a {name} photographed from the front",
    "my new {adj} {name}",
    "a grayscale picture of a {name}",
    "low resolution image of a {adj} {name}",
    "this {name} is {adj}",
    "close-up of a {name}",
    "an online shop listing: {adj} {name}",
]
_ADJECTIVES = ["black", "white", "gray", "dark", "light", "striped", "plain", "patterned", "worn", "new",
               "small", "large", "simple", "classic", "cheap", "stylish"]


def caption_for_class(synonyms: Sequence[str], rng: random.Random, templates: Sequence[str] = CLIP_TEMPLATES,
                      p_template: float = 0.6) -> str:
    """One caption for a class: a random synonym inside a CLIP template (p_template) or a descriptive phrase."""
    name = rng.choice(list(synonyms))
    if rng.random() < p_template:
        return rng.choice(list(templates)).format(name)
    return rng.choice(_DESCRIPTIVE).format(name=name, adj=rng.choice(_ADJECTIVES))


def _synonym_pattern(synonyms_by_class: Sequence[Sequence[str]]) -> list[tuple[re.Pattern, int]]:
    pairs = [(s, c) for c, names in enumerate(synonyms_by_class) for s in names]
    pairs.sort(key=lambda p: -len(p[0]))  # longer phrases first: "ankle boot" before "boot"
    return [(re.compile(rf"(?<![\w-]){re.escape(s)}(?![\w-])", re.IGNORECASE), c) for s, c in pairs]


def class_synonyms(classnames: Sequence[str]) -> list[list[str]]:
    """The words that name each class in captions: Fashion-MNIST's synonym lists for its class names, else each
    class name alone."""
    if list(classnames) == FASHION_CLASSNAMES:
        return [list(s) for s in FASHION_SYNONYMS]
    return [[c] for c in classnames]


def class_of_caption(caption: str, synonyms_by_class: Sequence[Sequence[str]]) -> int | None:
    """Class whose synonym occurs in the caption (whole words; longest phrase wins), or None.

    Used to put captions into categories (RoCLIP Fig. 2, targeted poisons drawn from captions naming a class).
    """
    for pattern, cls in _synonym_pattern_cached(tuple(tuple(s) for s in synonyms_by_class)):
        if pattern.search(caption):
            return cls
    return None


_PATTERN_CACHE: dict = {}


def _synonym_pattern_cached(key):
    if key not in _PATTERN_CACHE:
        _PATTERN_CACHE[key] = _synonym_pattern(key)
    return _PATTERN_CACHE[key]


# --------------------------------------------------------------------------------------------------------------
# Fashion-MNIST (embedded: Debian package dataset-fashion-mnist)
# --------------------------------------------------------------------------------------------------------------

FASHION_MNIST_DIR = Path(os.environ.get("CLIPGUARD_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
FASHION_CLASSNAMES = ["t-shirt", "trousers", "pullover", "dress", "coat",
                      "sandal", "shirt", "sneaker", "bag", "ankle boot"]
#: Caption vocabulary per class; names are distinct across classes so class_of_caption is unambiguous.
FASHION_SYNONYMS = [
    ["t-shirt", "tee", "top"],
    ["trousers", "pants", "slacks", "jeans"],
    ["pullover", "sweater", "jumper"],
    ["dress", "gown", "frock"],
    ["coat", "jacket", "overcoat"],
    ["sandal", "flip-flop"],
    ["shirt", "blouse", "button-down shirt"],
    ["sneaker", "trainer", "running shoe"],
    ["bag", "handbag", "purse", "tote"],
    ["ankle boot", "boot", "bootie"],
]
_FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                  "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not, as a read-only array. Cached per process by path, size
    and modification time: every run of a chapter draws its sets from the same four files (0.2 s a read)."""
    try:
        stat = path.stat()
    except OSError as error:
        raise DataError(f"cannot read IDX file {path}: {error}") from error
    return _read_idx_cached(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _read_idx_cached(path: Path, size: int, mtime_ns: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as error:
        raise DataError(f"cannot read IDX file {path}: {error}") from error
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path}: header says {shape} but holds {body.size} bytes (truncated?)")
    return body.reshape(shape)


def _to_rgb_size(gray: np.ndarray, image_size: int) -> torch.Tensor:
    """[N, h, w] uint8 grayscale -> [N, 3, S, S] uint8: zero-pad when S >= h (keeps pixels), else resize."""
    images = torch.from_numpy(np.ascontiguousarray(gray)).unsqueeze(1)
    h = images.shape[-1]
    if image_size >= h:
        pad = image_size - h
        images = torch.nn.functional.pad(images, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
    else:
        images = torch.nn.functional.interpolate(images.float(), size=image_size, mode="bilinear",
                                                 antialias=True).round().clamp(0, 255).to(torch.uint8)
    return images.expand(-1, 3, -1, -1).contiguous()


def fashion_mnist(split: str = "train", n: int | None = None, seed: int = 0, image_size: int = 32,
                  root: str | Path | None = None, caption_seed: int | None = None) -> ImageCaptionSet:
    """Fashion-MNIST with generated captions.

    ``n`` rows are drawn without replacement (stratified by nothing, uniformly) with ``seed``; captions are drawn
    per row with ``caption_seed`` (default: ``seed``), deterministic and independent of ``n``.
    """
    if split not in _FASHION_FILES:
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root) if root is not None else FASHION_MNIST_DIR
    image_file, label_file = (root / f for f in _FASHION_FILES[split])
    if not image_file.exists() or not label_file.exists():
        raise DataError(
            f"Fashion-MNIST not found at {root} (missing {image_file.name if not image_file.exists() else label_file.name}). "
            "Install it with `apt-get install dataset-fashion-mnist` (Debian) or point CLIPGUARD_FASHION_MNIST "
            "to a folder holding the four IDX .gz files.")
    cseed = seed if caption_seed is None else caption_seed
    stamp = tuple((p.stat().st_size, p.stat().st_mtime_ns) for p in (image_file, label_file))
    drawn = _fashion_mnist_drawn(split, n, seed, image_size, root, cseed, stamp)
    drawn.keys  # computed once on the cached set, then copied with it  # noqa: B018
    return drawn.copy()


@functools.lru_cache(maxsize=24)  # a chapter's seeds x (train, test, probe, fine-tuning) sets; 30 MB at most each
def _fashion_mnist_drawn(split: str, n: int | None, seed: int, image_size: int, root: Path, cseed: int,
                         stamp: tuple) -> ImageCaptionSet:
    """:func:`fashion_mnist`'s set, cached per process by its arguments and the files' size and modification time
    (``stamp``): a chapter draws the same sets for many runs (0.3-0.5 s a set); callers get copies."""
    image_file, label_file = (root / f for f in _FASHION_FILES[split])
    gray, labels = _read_idx(image_file), _read_idx(label_file)
    if len(gray) != len(labels):
        raise DataError(f"{root}: {len(gray)} images but {len(labels)} labels")
    rows = np.arange(len(gray))
    if n is not None:
        if not 0 < n <= len(gray):
            raise DataError(f"n must be in 1..{len(gray)}, got {n}")
        rows = np.sort(np.random.default_rng(seed).choice(len(gray), size=n, replace=False))
    captions = [caption_for_class(FASHION_SYNONYMS[labels[r]], random.Random(f"{cseed}-{split}-{r}"))
                for r in rows]
    return ImageCaptionSet(
        images=_to_rgb_size(gray[rows], image_size),
        captions=captions,
        labels=torch.from_numpy(labels[rows].astype(np.int64)),
        classnames=list(FASHION_CLASSNAMES),
        templates=list(CLIP_TEMPLATES),
        name=f"fashion-mnist-{split}",
    )


# --------------------------------------------------------------------------------------------------------------
# Compositional synthetic set ("shapes")
# --------------------------------------------------------------------------------------------------------------

SHAPES = ["circle", "square", "triangle", "cross", "ring", "diamond"]
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 230), "yellow": (235, 215, 40),
           "purple": (150, 60, 200), "orange": (245, 140, 30), "cyan": (40, 200, 210), "white": (245, 245, 245)}
SIZES = ["small", "large"]
POSITIONS = ["top left", "top right", "bottom left", "bottom right", "center"]
BACKGROUNDS = {"black": (10, 10, 10), "gray": (120, 120, 120), "dark blue": (20, 25, 70)}
_POSITION_XY = {"top left": (0.3, 0.3), "top right": (0.7, 0.3), "bottom left": (0.3, 0.7),
                "bottom right": (0.7, 0.7), "center": (0.5, 0.5)}
_SHAPE_PHRASES = [
    "a {size} {colour} {shape} in the {position} on a {background} background",
    "a {colour} {shape}, {size}, at the {position}, {background} background",
    "on a {background} background, a {size} {colour} {shape} sits in the {position}",
    "{position}: a {colour} {shape} ({size}) over {background}",
    "a picture of a {size} {shape} coloured {colour} in the {position}",
    "{background} background with a {colour} {shape} in the {position}",
    "there is a {colour} {size} {shape} at the {position} of a {background} image",
    "a {shape} that is {colour} and {size}, placed {position}",
]


def _shape_mask(shape: str, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        return dx ** 2 + dy ** 2 <= r ** 2
    if shape == "square":
        return (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)
    if shape == "triangle":
        return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    if shape == "cross":
        return ((np.abs(dx) <= r * 0.3) & (np.abs(dy) <= r)) | ((np.abs(dy) <= r * 0.3) & (np.abs(dx) <= r))
    if shape == "ring":
        d2 = dx ** 2 + dy ** 2
        return (d2 <= r ** 2) & (d2 >= (0.55 * r) ** 2)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    raise DataError(f"unknown shape {shape!r}")


def shapes(n: int, seed: int = 0, image_size: int = 32) -> ImageCaptionSet:
    """Procedural shapes with compositional captions (shape, colour, size, position, background; varied order).

    Labels are shapes; ``with_labels("colour")`` gives the colour task. Deterministic given ``seed``; item i depends
    only on (seed, i), so a larger set extends a smaller one.
    """
    if n <= 0:
        raise DataError(f"n must be positive, got {n}")
    s = image_size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    images = np.empty((n, 3, s, s), dtype=np.uint8)
    attrs = {a: np.empty(n, dtype=np.int64) for a in ("shape", "colour", "size", "position", "background")}
    colour_names, background_names = list(COLOURS), list(BACKGROUNDS)
    captions = []
    for i in range(n):
        rng = random.Random(f"shapes-{seed}-{i}")
        shape, colour, size = rng.randrange(len(SHAPES)), rng.randrange(len(COLOURS)), rng.randrange(2)
        position, background = rng.randrange(len(POSITIONS)), rng.randrange(len(BACKGROUNDS))
        radius = s * (0.13 if size == 0 else 0.22) * rng.uniform(0.9, 1.1)
        cx, cy = (v * s + rng.uniform(-0.04, 0.04) * s for v in _POSITION_XY[POSITIONS[position]])
        mask = _shape_mask(SHAPES[shape], xx, yy, cx, cy, radius)
        canvas = np.empty((3, s, s), dtype=np.float32)
        canvas[:] = np.array(BACKGROUNDS[background_names[background]], dtype=np.float32)[:, None, None]
        canvas[:, mask] = np.array(COLOURS[colour_names[colour]], dtype=np.float32)[:, None]
        canvas += np.random.default_rng(hash((seed, i)) % 2**32).normal(0, 6, canvas.shape)
        images[i] = np.clip(canvas, 0, 255).astype(np.uint8)
        for key, value in zip(attrs, (shape, colour, size, position, background)):
            attrs[key][i] = value
        captions.append(rng.choice(_SHAPE_PHRASES).format(
            shape=SHAPES[shape], colour=colour_names[colour], size=SIZES[size], position=POSITIONS[position],
            background=background_names[background]))
    attribute_names = {"shape": list(SHAPES), "colour": colour_names, "size": list(SIZES),
                       "position": list(POSITIONS), "background": background_names}
    return ImageCaptionSet(
        images=torch.from_numpy(images), captions=captions, labels=torch.from_numpy(attrs["shape"]),
        classnames=list(SHAPES), templates=ATTRIBUTE_TEMPLATES["shape"], name="shapes",
        attributes={k: torch.from_numpy(v) for k, v in attrs.items()}, attribute_names=attribute_names)


# --------------------------------------------------------------------------------------------------------------
# External formats
# --------------------------------------------------------------------------------------------------------------

def _decode_image(data: bytes | Path, image_size: int, where: str) -> torch.Tensor:
    """Decode an image file or bytes to uint8 [3, S, S]: resize shorter side (bicubic) and centre-crop."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            img.load()
            img = img.convert("RGB")
    except FileNotFoundError as error:
        raise DataError(f"{where}: image file not found") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(f"{where}: corrupt or unreadable image ({error})") from error
    w, h = img.size
    scale = image_size / min(w, h)
    img = img.resize((max(image_size, round(w * scale)), max(image_size, round(h * scale))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - image_size) // 2, (h - image_size) // 2
    img = img.crop((left, top, left + image_size, top + image_size))
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


@dataclass
class LoadReport:
    """What a loader kept and skipped (with reasons), when asked to skip bad items."""

    loaded: int = 0
    skipped: list[str] = field(default_factory=list)


def _handle(error: DataError, on_error: str, report: LoadReport) -> None:
    if on_error == "raise":
        raise error
    report.skipped.append(str(error))


def _check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def _utf8_lines(path: Path) -> Iterator[str]:
    """Lines of a UTF-8 text file (a leading BOM is dropped) for :mod:`csv`; bytes that are not UTF-8 raise a
    :class:`DataError` naming the file and the first bad line instead of a bare ``UnicodeDecodeError``."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        try:
            yield from handle
        except UnicodeDecodeError as error:
            raise _not_utf8(path, error) from None


def _not_utf8(path: Path, error: UnicodeDecodeError) -> DataError:
    """Re-read ``path`` as bytes to name the first line that does not decode (the text reader decodes ahead in
    blocks, so its position does not say which row is bad)."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as bad:
                return DataError(f"{path}, line {number}: not UTF-8 text (byte 0x{line[bad.start]:02x} at column "
                                 f"{bad.start + 1}); save the file as UTF-8")
    return DataError(f"{path}: not UTF-8 text ({error.reason})")


def load_csv_pairs(csv_path: str | Path, image_size: int = 32, image_root: str | Path | None = None,
                   image_column: str = "image", caption_column: str = "caption", on_error: str = "raise",
                   report: LoadReport | None = None, delimiter: str = ",") -> ImageCaptionSet:
    """CSV of image path + caption (the CleanCLIP/RoCLIP convention; paths relative to ``image_root`` or the
    CSV's folder). A missing/corrupt image, empty caption or malformed row raises a :class:`DataError` naming the
    row, or is skipped and recorded in ``report`` when ``on_error="skip"``."""
    _check_on_error(on_error)
    csv_path = Path(csv_path)
    root = Path(image_root) if image_root is not None else csv_path.parent
    report = report if report is not None else LoadReport()
    if not csv_path.exists():
        raise DataError(f"CSV file not found: {csv_path}")
    images, captions = [], []
    with contextlib.closing(_utf8_lines(csv_path)) as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{csv_path}: empty file")
        missing = [c for c in (image_column, caption_column) if c not in header]
        if missing:
            raise DataError(f"{csv_path}: missing column(s) {missing}; header is {header}")
        ii, ci = header.index(image_column), header.index(caption_column)
        for line, row in enumerate(reader, start=2):
            where = f"{csv_path}, row {line}"
            try:
                if len(row) != len(header):
                    raise DataError(f"{where}: malformed row ({len(row)} fields, header has {len(header)})")
                caption = row[ci].strip()
                if not caption:
                    raise DataError(f"{where}: empty caption")
                if not row[ii].strip():
                    raise DataError(f"{where}: empty image path")
                image = _decode_image(root / row[ii], image_size, f"{where} ({row[ii]})")
            except DataError as error:
                _handle(error, on_error, report)
                continue
            images.append(image)
            captions.append(caption)
    if not images:
        raise DataError(f"{csv_path}: no usable rows ({len(report.skipped)} skipped)")
    report.loaded = len(images)
    return ImageCaptionSet(torch.stack(images), captions, name=csv_path.stem)


_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def decode_webdataset_sample(parts: dict[str, bytes], image_size: int, where: str) -> tuple[torch.Tensor, str]:
    """One webdataset sample (member extension -> bytes) to a uint8 ``[3, S, S]`` image and its caption; a missing
    image or caption, an empty caption or undecodable image bytes raise a :class:`DataError` starting with
    ``where`` (the shard and sample key). Shared by :func:`load_webdataset` and the streaming reader
    (:mod:`clipguard.shards`), so both give the same pixels and content keys."""
    image_bytes = next((parts[e[1:]] for e in _IMAGE_EXTENSIONS if e[1:] in parts), None)
    if image_bytes is None:
        raise DataError(f"{where}: no image member")
    if "txt" not in parts:
        raise DataError(f"{where}: no caption (.txt) member")
    caption = parts["txt"].decode("utf-8", errors="replace").strip()
    if not caption:
        raise DataError(f"{where}: empty caption")
    return _decode_image(image_bytes, image_size, where), caption


def load_webdataset(shards: str | Path | Iterable[str | Path], image_size: int = 32, on_error: str = "raise",
                    report: LoadReport | None = None, limit: int | None = None) -> ImageCaptionSet:
    """Tar shards as written by img2dataset (CC3M): members ``KEY.jpg`` + ``KEY.txt`` (+ ``KEY.json``).

    Read with the standard ``tarfile`` module rather than the ``webdataset`` pipeline because we need the whole
    (small) set in memory and errors that name the shard and sample key. Sets too large for memory stream from
    their shards instead: :class:`clipguard.shards.ShardStream`.
    """
    _check_on_error(on_error)
    report = report if report is not None else LoadReport()
    if isinstance(shards, (str, Path)):
        path = Path(shards)
        shard_list = sorted(path.glob("*.tar")) if path.is_dir() else [path]
    else:
        shard_list = [Path(s) for s in shards]
    if not shard_list:
        raise DataError(f"no .tar shards found in {shards}")
    images, captions = [], []
    for shard in shard_list:
        try:
            archive = tarfile.open(shard)
        except (OSError, tarfile.TarError) as error:
            raise DataError(f"cannot open shard {shard}: {error}") from error
        samples: dict[str, dict[str, bytes]] = {}
        with archive:
            for member in archive.getmembers():
                if not member.isfile():
                    continue
                key, _, ext = member.name.rpartition(".")
                samples.setdefault(key, {})[ext.lower()] = archive.extractfile(member).read()
        for key in sorted(samples):
            try:
                image, caption = decode_webdataset_sample(samples[key], image_size, f"{shard}, sample {key}")
            except DataError as error:
                _handle(error, on_error, report)
                continue
            images.append(image)
            captions.append(caption)
            if limit is not None and len(images) >= limit:
                break
        if limit is not None and len(images) >= limit:
            break
    if not images:
        raise DataError(f"no usable samples in {[str(s) for s in shard_list]}")
    report.loaded = len(images)
    return ImageCaptionSet(torch.stack(images), captions, name="webdataset")


def load_image_folder(root: str | Path, image_size: int = 32, classnames: Sequence[str] | None = None,
                      templates: Sequence[str] = CLIP_TEMPLATES, on_error: str = "raise",
                      report: LoadReport | None = None) -> ImageCaptionSet:
    """ImageNet-style folder ``root/<class folder>/<image>`` (class folders sorted, as torchvision's ImageFolder).

    ``classnames`` gives readable names per sorted folder (e.g. the OpenAI ImageNet names); default: folder names.
    """
    from torchvision.datasets.folder import find_classes, make_dataset

    _check_on_error(on_error)
    report = report if report is not None else LoadReport()
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    folders, class_to_idx = find_classes(str(root))
    if classnames is not None and len(classnames) != len(folders):
        raise DataError(f"{root}: {len(folders)} class folders but {len(classnames)} class names")
    images, labels = [], []
    for path, label in make_dataset(str(root), class_to_idx, extensions=_IMAGE_EXTENSIONS):
        try:
            images.append(_decode_image(Path(path), image_size, path))
            labels.append(label)
        except DataError as error:
            _handle(error, on_error, report)
    if not images:
        raise DataError(f"{root}: no readable images")
    report.loaded = len(images)
    return ImageCaptionSet(torch.stack(images), None, torch.tensor(labels),
                           list(classnames) if classnames is not None else [f.replace("_", " ") for f in folders],
                           list(templates), name=root.name)


def load_labels_csv(csv_path: str | Path, classnames: Sequence[str], image_size: int = 32,
                    image_root: str | Path | None = None, image_column: str = "image", label_column: str = "label",
                    templates: Sequence[str] = CLIP_TEMPLATES, on_error: str = "raise",
                    report: LoadReport | None = None) -> ImageCaptionSet:
    """Flat folder of images with a labels CSV (``image,label`` with integer labels), e.g. ImageNet validation."""
    _check_on_error(on_error)
    csv_path = Path(csv_path)
    root = Path(image_root) if image_root is not None else csv_path.parent
    report = report if report is not None else LoadReport()
    if not csv_path.exists():
        raise DataError(f"labels CSV not found: {csv_path}")
    images, labels = [], []
    with contextlib.closing(_utf8_lines(csv_path)) as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or image_column not in reader.fieldnames or label_column not in reader.fieldnames:
            raise DataError(f"{csv_path}: needs columns {image_column!r} and {label_column!r}, has {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            where = f"{csv_path}, row {line}"
            try:
                if None in row or any(v is None for v in row.values()):
                    raise DataError(f"{where}: malformed row")
                try:
                    label = int(row[label_column])
                except ValueError:
                    raise DataError(f"{where}: label {row[label_column]!r} is not an integer") from None
                if not 0 <= label < len(classnames):
                    raise DataError(f"{where}: label {label} outside 0..{len(classnames) - 1}")
                images.append(_decode_image(root / row[image_column], image_size, f"{where} ({row[image_column]})"))
                labels.append(label)
            except DataError as error:
                _handle(error, on_error, report)
    if not images:
        raise DataError(f"{csv_path}: no usable rows")
    report.loaded = len(images)
    return ImageCaptionSet(torch.stack(images), None, torch.tensor(labels), list(classnames), list(templates),
                           name=csv_path.stem)


def load_classnames(path: str | Path) -> list[str]:
    """Class names from a UTF-8 text file, one per line (surrounding spaces and blank lines dropped); a missing
    file, no names, repeated names or bytes that are not UTF-8 raise a :class:`DataError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"class names file not found: {path}")
    with contextlib.closing(_utf8_lines(path)) as lines:
        names = [line.strip() for line in lines if line.strip()]
    if not names:
        raise DataError(f"{path}: no class names")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"{path}: class name(s) {repeated} appear more than once")
    return names


def load_torchvision(name: str, root: str | Path, split: str = "test", image_size: int = 32,
                     limit: int | None = None, seed: int = 0) -> ImageCaptionSet:
    """A torchvision classification dataset the user already has on disk (no download here), e.g. ``CIFAR10``.

    Class names come from the dataset (``.classes``); templates are the 80 CLIP templates.
    """
    import torchvision.datasets as tvd

    if not hasattr(tvd, name):
        raise DataError(f"torchvision has no dataset {name!r}")
    cls = getattr(tvd, name)
    try:
        try:
            dataset = cls(str(root), train=(split == "train"), download=False)
        except TypeError:
            dataset = cls(str(root), split=split, download=False)
    except RuntimeError as error:
        raise DataError(f"{name} not found under {root} ({error}); download it there first (no network here)") from error
    n = len(dataset)
    rows = np.arange(n)
    if limit is not None and limit < n:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))
    images, labels = [], []
    for r in rows:
        image, label = dataset[int(r)]
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
        images.append(_decode_image(buffer.getvalue(), image_size, f"{name}[{r}]"))
        labels.append(int(label))
    classnames = [c.replace("_", " ") for c in getattr(dataset, "classes", [str(i) for i in range(max(labels) + 1)])]
    return ImageCaptionSet(torch.stack(images), None, torch.tensor(labels), classnames, list(CLIP_TEMPLATES),
                           name=f"{name.lower()}-{split}")


def load_cached(path: str | Path) -> ImageCaptionSet:
    """A dataset written by ``data_scripts/prepare_external.py``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"cached dataset not found: {path}")
    stored = torch.load(path, weights_only=True)
    return ImageCaptionSet(stored["images"], stored["captions"], stored["labels"], stored["classnames"],
                           stored["templates"], stored["name"])


# --------------------------------------------------------------------------------------------------------------
# Keys and categories over whole sets
# --------------------------------------------------------------------------------------------------------------

def image_keys(dataset: ImageCaptionSet) -> list[str]:
    """Content key of each row's image alone (:func:`content_key` with an empty caption): the same image under
    another caption has the same key."""
    return [content_key(image, "") for image in dataset.images]


def caption_categories(dataset: ImageCaptionSet) -> torch.Tensor:
    """Category of every caption (-1 = none) by class-word match (:func:`class_synonyms` of the set's classes)."""
    if not dataset.classnames:
        return torch.full((len(dataset),), -1, dtype=torch.long)
    synonyms = class_synonyms(dataset.classnames)
    found = [class_of_caption(c, synonyms) for c in dataset.captions]
    return torch.tensor([-1 if c is None else c for c in found], dtype=torch.long)
