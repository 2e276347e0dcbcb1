"""Run store: compute once, render many.

A run lives in ``results/<profile>/<run-id>/`` where the id hashes the full resolved configuration together with
the identity of the data (dataset fingerprints) and of the code (the library's source and package versions).
``get_or_train`` returns the stored run when one exists and trains otherwise, so notebooks share baselines and
restyling a figure never retrains; a changed config, dataset or computation never reuses a stale run. The code
part of the key covers only the modules a run executes (:data:`CORE_MODULES` plus what its dataset, poisoner,
objective and evaluators declare), each hashed by its syntax tree without docstrings: rewording a docstring or
adding an unrelated module keeps every stored run.

Layout of a run: ``config.json`` (what was hashed), ``metrics.json`` (what the training function returned),
``metrics.jsonl`` (training history), ``model.safetensors`` (final weights, when there is a model),
``provenance.json`` (commit, versions, device, wall time). A run is built in ``<run-id>.partial/`` (where
interrupted training resumes from its checkpoint) and renamed into place only when complete.
"""

from __future__ import annotations

import ast
import contextlib
import functools
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
from typing import Callable, Iterable

import torch

from .utils import atomic_write_json

__all__ = ["RunStore", "Run", "code_identity", "provenance", "config_hash", "DEFAULT_ROOT"]

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent.parent
DEFAULT_ROOT = Path(os.environ.get("CLIPGUARD_RESULTS", REPO_ROOT / "results"))
#: The modules every training run executes (the loop, the model, the data, the evaluations the run store reports).
#: A run's key adds the modules its dataset, poisoner, objective and evaluators declare when they register.
CORE_MODULES = ("clipguard.data", "clipguard.models", "clipguard.model_configs", "clipguard.losses",
                "clipguard.train", "clipguard.optim", "clipguard.evaluate", "clipguard.experiments", "clipguard.utils")
#: Modules that only present results; never part of a run's key.
PRESENTATION_MODULES = ("clipguard.book", "clipguard.notebooks",
                        "clipguard.browser_check")
#: Packages that only consume stored runs (detectors score embeddings; they key their own results).
CONSUMER_MODULES = ("clipguard.detect",)
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


def _integral_floats_as_ints(value: object) -> object:
    """``2.0`` -> ``2`` throughout: a parameter written ``2`` in one notebook and ``2.0`` in another is one run."""
    if isinstance(value, dict):
        return {k: _integral_floats_as_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral_floats_as_ints(v) for v in value]
    return int(value) if isinstance(value, float) and value.is_integer() else value


def config_hash(config: dict) -> str:
    canonical = _integral_floats_as_ints(_canonical(config))
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()[:16]


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return tree


@functools.lru_cache(maxsize=512)
def _file_hash(path: Path, mtime_ns: int, size: int) -> str:
    """Hash of a source file's meaning: the AST without docstrings (comments and layout never reach the AST);
    other files (model configs) by their bytes."""
    if path.suffix == ".py":
        text = ast.dump(_without_docstrings(ast.parse(path.read_text(), str(path))), include_attributes=False)
        return hashlib.sha256(text.encode()).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def source_hash(path: Path) -> str:
    stat = path.stat()
    return _file_hash(path, stat.st_mtime_ns, stat.st_size)


def module_files(module: str, package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """The files of ``clipguard.a.b``: ``a/b.py``, or every ``.py``/``.json`` below the folder ``a/b``."""
    parts = module.split(".")
    if parts[0] != "clipguard":  # a plug-in registered from outside the library: its own source file
        import sys

        source = getattr(sys.modules.get(module), "__file__", None)
        if source is None:
            raise ValueError(f"module {module!r} is not imported, so its code cannot be keyed")
        return [Path(source)]
    base = package_dir.joinpath(*parts[1:])
    if base.with_suffix(".py").is_file():
        return [base.with_suffix(".py")]
    if base.is_dir():
        return sorted(p for p in base.rglob("*") if p.suffix in (".py", ".json") and "__pycache__" not in p.parts)
    raise ValueError(f"no module {module!r} under {package_dir}")


def _all_modules(package_dir: Path) -> list[str]:
    """Every module and package of the library except the presentation modules and the consumers of runs."""
    names = [f"clipguard.{p.stem}" for p in sorted(package_dir.iterdir())
             if not p.name.startswith((".", "_")) and (p.suffix == ".py" or (p.is_dir() and p.name != "__pycache__"))]
    return [n for n in names if n not in PRESENTATION_MODULES + CONSUMER_MODULES]


def code_identity(modules: Iterable[str] | Path | None = None, package_dir: Path = PACKAGE_DIR) -> str:
    """Hash of the code a result depends on: the named modules (``clipguard.x``; a package means all its files),
    or every file under a folder (a ``Path``), or by default every non-presentation module. Each file counts by
    :func:`source_hash`, so rewording a docstring or a comment keeps every key, and a module a run does not
    execute is not part of its key."""
    if isinstance(modules, Path):
        files = sorted(p for p in modules.rglob("*.py") if "__pycache__" not in p.parts)
        root = modules
    else:
        names = sorted(set(_all_modules(package_dir) if modules is None else modules))
        files = sorted({f for name in names for f in module_files(name, package_dir)})
        root = package_dir
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root) if path.is_relative_to(root) else path.name).encode())
        digest.update(source_hash(path).encode())
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
        "code_identity": code_identity(CORE_MODULES),
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

    def trained_since(self, seconds: float) -> bool:
        """Whether this run was stored within the last ``seconds`` (i.e. trained now rather than reused)."""
        created = datetime.fromisoformat(self.provenance["created"])
        return (datetime.now(timezone.utc) - created).total_seconds() <= seconds + 1


def _profile_threads(profile: str) -> int | None:
    """The CPU thread count results of ``profile`` are computed on (None: the process's own, or not a profile)."""
    from .profiles import PROFILES

    return PROFILES[profile].cpu_threads if profile in PROFILES else None


class RunStore:
    """Get-or-train store under ``root/profile``."""

    def __init__(self, profile: str = "cpu", root: str | Path | None = None):
        self.profile = profile
        self.root = Path(root) if root is not None else DEFAULT_ROOT
        self.dir = self.root / profile

    def run_id(self, config: dict, data: dict[str, str] | None = None, code: str | None = None,
               environment: dict | None = None) -> str:
        """Hash of config, data fingerprints, code identity (default: every computational module), package
        versions and the ``environment`` that changes numbers (e.g. the device type: autocast runs on CUDA only)."""
        key = {"config": config, "data": data or {}, "code": code or code_identity(), "versions": _versions()}
        if environment:
            key["environment"] = environment
        return config_hash(key)

    def find(self, config: dict, data: dict[str, str] | None = None, code: str | None = None,
             environment: dict | None = None) -> Run | None:
        return self.get(self.run_id(config, data, code, environment))

    def get(self, run_id: str) -> Run | None:
        """The complete stored run ``run_id``, or None."""
        path = self.dir / run_id
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
                     data: dict[str, str] | None = None, force: bool = False, code: str | None = None,
                     environment: dict | None = None) -> Run:
        """Return the stored run for ``config`` (+ data fingerprints, + ``code``: the :func:`code_identity` of the
        modules it runs), or call ``train_fn(work_dir)`` to make it.

        ``train_fn`` trains (resuming from ``work_dir/checkpoint.pt`` if present) and returns ``(model or None,
        metrics)``; metrics must be JSON-able. Extra files it writes into ``work_dir`` are kept with the run.
        """
        _canonical(config)  # fail before training on an unhashable or NaN config
        run_id = self.run_id(config, data, code, environment)
        final = self.dir / run_id
        with self._lock(run_id):
            if (final / "provenance.json").exists() and not force:
                return self._load(final)
            work = self.dir / f"{run_id}.partial"
            work.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            model, metrics = train_fn(work)
            record = provenance()
            record["run_code_identity"] = code or code_identity()
            record["wall_seconds"] = time.perf_counter() - started
            if model is not None:
                from safetensors.torch import save_file

                state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
                save_file(state, work / "model.safetensors")
            (work / "checkpoint.pt").unlink(missing_ok=True)  # resume state is not needed once complete
            atomic_write_json(work / "config.json", {"config": _canonical(config), "data": data or {},
                                                     "environment": environment or {}})
            atomic_write_json(work / "metrics.json", metrics)
            atomic_write_json(work / "provenance.json", record)  # written last: marks the run complete
            if final.exists():
                shutil.rmtree(final)
            os.replace(work, final)
            return self._load(final)

    def get_or_compute(self, config: dict, compute_fn: Callable[[Path], dict], data: dict[str, str] | None = None,
                       force: bool = False, code: str | None = None) -> Run:
        """Like :meth:`get_or_train` for results without a model (detector scores, sweeps of evaluations). It
        computes on the store's profile's CPU thread count (``cpu_threads``: one at ``smoke`` and ``cpu``), as a
        run trains on its spec's: the key does not hold the thread count, so a page run alone on every core must
        store what a one-thread book lane would (detector scores pick the pairs a filter removes; an optimised
        trigger becomes a poison)."""
        from .utils import cpu_threads

        threads = _profile_threads(self.profile)

        def compute(work: Path) -> tuple[None, dict]:
            with cpu_threads(threads):
                return None, compute_fn(work)
        return self.get_or_train(config, compute, data, force, code)

    def runs(self) -> list[Run]:
        if not self.dir.exists():
            return []
        return [self._load(p) for p in sorted(self.dir.iterdir()) if (p / "provenance.json").exists()]
