"""Run store: compute once, render many.

A run lives in ``results/<profile>/<run-id>/`` where the id hashes the full resolved configuration together with
the identity of the data (dataset fingerprints) and of the code (the library's source and package versions).
``get_or_train`` returns the stored run when one exists and trains otherwise, so notebooks share baselines and
restyling a figure never retrains; a changed config, dataset or library never reuses a stale run.

Layout of a run: ``config.json`` (what was hashed), ``metrics.json`` (what the training function returned),
``metrics.jsonl`` (training history), ``model.safetensors`` (final weights, when there is a model),
``provenance.json`` (commit, versions, device, wall time). A run is built in ``<run-id>.partial/`` (where
interrupted training resumes from its checkpoint) and renamed into place only when complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Callable

import torch

__all__ = ["RunStore", "Run", "code_identity", "provenance", "config_hash", "DEFAULT_ROOT"]

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent.parent
DEFAULT_ROOT = Path(os.environ.get("CLIPGUARD_RESULTS", REPO_ROOT / "results"))
#: Modules that only present results; editing them must not invalidate stored runs.
PRESENTATION_MODULES = {"plots.py", "notebooks.py", "book.py", "tables.py", "paper_values.py"}
#: Modules that only consume stored runs (detectors score embeddings of trained models; they never train one).
CONSUMER_MODULES = {"detect"}
_VERSIONED_PACKAGES = ("torch", "torchvision", "open_clip_torch", "numpy", "scikit-learn", "faiss-cpu", "nltk")


def _canonical(value: object) -> object:
    """JSON-able, order-independent form of a configuration; rejects NaN and unknown types loudly."""
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"configuration holds a non-finite number: {value}")
        return value
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "identity"):
        return _canonical(value.identity())
    raise TypeError(f"cannot hash configuration value of type {type(value).__name__}: {value!r}")


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(_canonical(config), sort_keys=True).encode()).hexdigest()[:16]


def code_identity(package_dir: Path = PACKAGE_DIR) -> str:
    """Hash of the library's computational source files and model configs (presentation modules and the modules
    that only consume runs are excluded, so restyling a plot or tuning a detector never retrains)."""
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*")):
        relative = path.relative_to(package_dir)
        if Path(relative.parts[0]).stem in CONSUMER_MODULES:
            continue
        if path.suffix in (".py", ".json") and path.name not in PRESENTATION_MODULES and "__pycache__" not in path.parts:
            digest.update(str(relative).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _versions() -> dict[str, str]:
    versions = {}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _device_name() -> str:
    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def provenance() -> dict:
    """Where and with what a result was produced."""
    return {
        "commit": _git("rev-parse", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "versions": _versions(),
        "python": platform.python_version(),
        "device": _device_name(),
        "code_identity": code_identity(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


@dataclass
class Run:
    """A completed run as stored."""

    id: str
    path: Path
    config: dict
    metrics: dict
    provenance: dict

    @property
    def history(self) -> list[dict]:
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def epochs(self) -> list[dict]:
        return [h for h in self.history if h.get("kind") == "epoch"]

    def has_model(self) -> bool:
        return (self.path / "model.safetensors").exists()

    def load_model(self):
        """Rebuild the model from ``config['model']`` and load the stored weights."""
        from safetensors.torch import load_file

        from .models import build_model

        if not self.has_model():
            raise FileNotFoundError(f"run {self.id} stored no model")
        model = build_model(self.config["model"])
        model.load_state_dict(load_file(self.path / "model.safetensors"))
        return model.eval()

    def artifact(self, name: str) -> Path:
        return self.path / name


def _atomic_json(path: Path, value: object) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


class RunStore:
    """Get-or-train store under ``root/profile``."""

    def __init__(self, profile: str = "cpu", root: str | Path | None = None):
        self.profile = profile
        self.root = Path(root) if root is not None else DEFAULT_ROOT
        self.dir = self.root / profile

    def run_id(self, config: dict, data: dict[str, str] | None = None) -> str:
        """Hash of config, data fingerprints, code identity and package versions."""
        return config_hash({"config": config, "data": data or {}, "code": code_identity(), "versions": _versions()})

    def find(self, config: dict, data: dict[str, str] | None = None) -> Run | None:
        path = self.dir / self.run_id(config, data)
        return self._load(path) if (path / "provenance.json").exists() else None

    def _load(self, path: Path) -> Run:
        read = lambda name: json.loads((path / name).read_text())  # noqa: E731
        stored = read("config.json")
        return Run(path.name, path, stored["config"], read("metrics.json"), read("provenance.json"))

    @contextlib.contextmanager
    def _lock(self, run_id: str):
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / f".{run_id}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def get_or_train(self, config: dict, train_fn: Callable[[Path], tuple[torch.nn.Module | None, dict]],
                     data: dict[str, str] | None = None, force: bool = False) -> Run:
        """Return the stored run for ``config`` (+ data fingerprints), or call ``train_fn(work_dir)`` to make it.

        ``train_fn`` trains (resuming from ``work_dir/checkpoint.pt`` if present) and returns ``(model or None,
        metrics)``; metrics must be JSON-able. Extra files it writes into ``work_dir`` are kept with the run.
        """
        _canonical(config)  # fail before training on an unhashable or NaN config
        run_id = self.run_id(config, data)
        final = self.dir / run_id
        with self._lock(run_id):
            if (final / "provenance.json").exists() and not force:
                return self._load(final)
            work = self.dir / f"{run_id}.partial"
            work.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            model, metrics = train_fn(work)
            record = provenance()
            record["wall_seconds"] = time.perf_counter() - started
            if model is not None:
                from safetensors.torch import save_file

                state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
                save_file(state, work / "model.safetensors")
            (work / "checkpoint.pt").unlink(missing_ok=True)  # resume state is not needed once complete
            _atomic_json(work / "config.json", {"config": _canonical(config), "data": data or {}})
            _atomic_json(work / "metrics.json", metrics)
            _atomic_json(work / "provenance.json", record)  # written last: marks the run complete
            if final.exists():
                shutil.rmtree(final)
            os.replace(work, final)
            return self._load(final)

    def get_or_compute(self, config: dict, compute_fn: Callable[[Path], dict], data: dict[str, str] | None = None,
                       force: bool = False) -> Run:
        """Like :meth:`get_or_train` for results without a model (detector scores, sweeps of evaluations)."""
        return self.get_or_train(config, lambda work: (None, compute_fn(work)), data, force)

    def runs(self) -> list[Run]:
        if not self.dir.exists():
            return []
        return [self._load(p) for p in sorted(self.dir.iterdir()) if (p / "provenance.json").exists()]
