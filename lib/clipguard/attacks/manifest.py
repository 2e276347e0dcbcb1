"""Poison manifests: one row per poison, naming it by content keys (attacks.md Section 8).

A manifest is a pandas DataFrame with the columns :data:`MANIFEST_COLUMNS` (in that order, typed by
:func:`manifest_frame`); :func:`save_manifest` / :func:`load_manifest` write and read it as CSV or Parquet.
:func:`clipguard.attacks.rebuild_from_manifest` re-materialises the poisons it names on any copy of the data.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..data import DataError
from ..utils import atomic_write

__all__ = ["MANIFEST_COLUMNS", "manifest_frame", "save_manifest", "load_manifest"]

#: Columns of a poison manifest, in order.
MANIFEST_COLUMNS = [
    "poison_id",         # 0..n-1, the order poisons were planned in
    "row",               # row of the poison in the poisoned set (of the copy it was materialised on)
    "kind",              # "backdoor" | "targeted"
    "mode",              # "insert" (appended after the clean rows) | "replace" (overwrites its source row)
    "component",         # index of the backdoor component (trigger/target pair); 0 for targeted
    "source_split",      # "train" (the wrapped set) | "heldout"
    "source_key",        # content key (image + caption) of the source pair
    "source_image_key",  # content key of the source image alone (fallback match when captions differ)
    "source_label",      # true label of the source image (kept as the poisoned row's label)
    "caption",           # caption of the poisoned pair
    "key",               # content key of the poisoned pair (to score detectors)
    "trigger",           # trigger name ("" for none)
    "trigger_params",    # JSON of the trigger's parameters
    "trigger_state",     # JSON of the per-sample state (e.g. patch location)
    "sample_seed",       # seed of this poison's generator
    "noise",             # std of the Gaussian image noise added (targeted copies)
    "overflow",          # float -> uint8 conversion: "clip" | "wrap"
    "target",            # target (backdoor) or adversarial (targeted) class name
    "target_label",      # its index
    "target_id",         # targeted attack: index of the target image; -1 for backdoors
    "seed",              # the build seed
    "spec",              # JSON of the spec identity
    "duplicate",         # 0, or d > 0 for the d-th noisy copy of a poison (duplicates_per_poison; noise seed derived)
]
#: Columns added after manifests were first stored, with the value that older manifests mean.
_LATER_COLUMNS = {"duplicate": 0}
_INT_COLUMNS = ["poison_id", "row", "component", "source_label", "sample_seed", "target_label", "target_id", "seed",
                "duplicate"]
_FLOAT_COLUMNS = ["noise"]
_TEXT_COLUMNS = [c for c in MANIFEST_COLUMNS if c not in _INT_COLUMNS + _FLOAT_COLUMNS]


def missing_columns(frame: pd.DataFrame) -> list[str]:
    """Manifest columns that ``frame`` lacks (columns added later are filled by :func:`manifest_frame`)."""
    return [c for c in MANIFEST_COLUMNS if c not in frame.columns and c not in _LATER_COLUMNS]


def manifest_frame(rows: list[dict]) -> pd.DataFrame:
    """A manifest from row dicts: the columns in order, integers as int64, ``noise`` as float64, the rest as
    objects (so an empty manifest and a read-back one compare equal to the built one). Columns added later
    (``duplicate``) that the rows lack get the value older manifests mean."""
    rows = [{**_LATER_COLUMNS, **row} for row in rows]
    frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    for column in _INT_COLUMNS:
        frame[column] = frame[column].astype("int64")
    for column in _FLOAT_COLUMNS:
        frame[column] = frame[column].astype("float64")
    for column in _TEXT_COLUMNS:
        frame[column] = frame[column].astype(object)
    return frame


def save_manifest(manifest: pd.DataFrame, path: str | Path) -> Path:
    """Write a manifest as CSV (``.csv``) or Parquet (``.parquet``), atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ValueError(f"manifest path must end in .csv or .parquet, got {path.name}")
    if suffix == ".csv":
        return atomic_write(path, lambda tmp: manifest.to_csv(tmp, index=False))
    return atomic_write(path, lambda tmp: manifest.to_parquet(tmp, index=False))


def load_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest written by :func:`save_manifest`, with the column types restored."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"manifest not found: {path}")
    if path.suffix.lower() == ".parquet":
        frame = pd.read_parquet(path)
    else:
        frame = pd.read_csv(path, keep_default_na=False, dtype={c: str for c in _TEXT_COLUMNS})
    missing = missing_columns(frame)
    if missing:
        raise DataError(f"{path}: not a poison manifest (missing column(s) {missing})")
    return manifest_frame(frame[[c for c in MANIFEST_COLUMNS if c in frame.columns]].to_dict("records"))
