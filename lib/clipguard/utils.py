"""Small shared utilities: atomic file writes and seed derivation."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_torch_save",
           "derive_seed", "cpu_threads"]


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(temporary_path)`` in ``path``'s folder, then rename onto ``path``: a crash or an error never
    leaves a half-written file, and the previous content stays until the new one is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(Path(temporary))
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: str | Path, value: object) -> Path:
    return atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True, default=str))


def atomic_torch_save(obj: object, path: str | Path) -> Path:
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


@contextlib.contextmanager
def cpu_threads(threads: int | None):
    """Run the block on exactly ``threads`` threads of torch's CPU pool, restored afterwards; None leaves it alone.
    Float sums split over another number of threads add up in another order, so a run pinned to a thread count
    gives the same numbers in a one-thread book lane and in a notebook run alone on every core."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any printable parts (stable across processes and Python versions)."""
    text = "|".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


def config_from_spec(cls, spec: dict, owner: str, ignore: tuple[str, ...] = ("name",)):
    """A dataclass ``cls`` from a spec dict: the allowed keys are its fields (plus ``ignore``); an unknown key
    fails naming ``owner`` and the allowed keys; lists become tuples where the field's default is a tuple."""
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(spec) - set(fields) - set(ignore)
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)} for {owner}; allowed: {sorted(set(fields) | set(ignore))}")
    values = {}
    for key, value in spec.items():
        if key in ignore:
            continue
        default = fields[key].default
        values[key] = tuple(value) if isinstance(value, list) and isinstance(default, tuple) else value
    return cls(**values)
