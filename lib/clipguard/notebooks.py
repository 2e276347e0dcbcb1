"""The one executor: run the book's notebooks with papermill, then build the book.

    python -m clipguard.notebooks run --profile cpu            # execute every notebook into book/executed/
    python -m clipguard.notebooks run --profile smoke --only threat
    python -m clipguard.notebooks build                       # jupyter-book build (execution off, warnings fail)

Parameters are checked against each notebook's ``parameters`` cell before execution: an unknown name fails
(papermill itself only warns). An executed notebook is written to a temporary file and renamed into place only
when execution succeeded, so a failure never replaces the last good copy; the failed copy is kept beside it as
``*.failed.ipynb`` for inspection.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["REPO_ROOT", "NOTEBOOK_DIR", "BOOK_DIR", "KERNEL_NAME", "discover", "check_parameters", "execute",
           "run_all", "build_book"]

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
BOOK_DIR = REPO_ROOT / "book"
KERNEL_NAME = "clipguard"
PROFILES = ("smoke", "cpu", "gpu")


class NotebookError(RuntimeError):
    pass


def discover(root: Path = NOTEBOOK_DIR, only: str | None = None) -> list[Path]:
    """Source notebooks in chapter order (folder names sort as chapters, files within), optionally filtered."""
    found = sorted(p for p in root.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    if only:
        found = [p for p in found if only in str(p.relative_to(root))]
    return found


def check_parameters(notebook: Path, parameters: dict) -> None:
    """Fail when ``parameters`` names something the notebook's ``parameters`` cell does not define, or when the
    notebook has no such cell, uses another kernel, or carries outputs."""
    import papermill

    nb = json.loads(notebook.read_text())
    kernel = nb.get("metadata", {}).get("kernelspec", {}).get("name")
    if kernel != KERNEL_NAME:
        raise NotebookError(f"{notebook}: kernelspec is {kernel!r}; every notebook must name {KERNEL_NAME!r}")
    cells = nb.get("cells", [])
    if not any("parameters" in c.get("metadata", {}).get("tags", []) for c in cells):
        raise NotebookError(f"{notebook}: no cell tagged 'parameters'")
    if any(c.get("outputs") for c in cells if c.get("cell_type") == "code"):
        raise NotebookError(f"{notebook}: source notebooks must carry no outputs (clear them)")
    known = set(papermill.inspect_notebook(str(notebook)))
    unknown = sorted(set(parameters) - known)
    if unknown:
        raise NotebookError(f"{notebook.name}: unknown parameter(s) {unknown}; its parameters are {sorted(known)}")
    profile = parameters.get("profile")
    if profile is not None and profile not in PROFILES:
        raise NotebookError(f"unknown profile {profile!r}; choose one of {PROFILES}")


def execute(notebook: Path, output: Path, parameters: dict, cwd: Path | None = None) -> float:
    """Execute one notebook with papermill into ``output`` (atomically); returns seconds taken."""
    import papermill

    check_parameters(notebook, parameters)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.stem}.running.ipynb")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    try:
        papermill.execute_notebook(str(notebook), str(tmp), parameters=parameters, kernel_name=KERNEL_NAME,
                                   cwd=str(cwd or notebook.parent), progress_bar=False)
    except Exception:
        if tmp.exists():
            os.replace(tmp, output.with_name(f"{output.stem}.failed.ipynb"))
        raise
    os.replace(tmp, output)
    output.with_name(f"{output.stem}.failed.ipynb").unlink(missing_ok=True)
    return time.perf_counter() - started


def run_all(profile: str, out_dir: Path = BOOK_DIR / "executed", only: str | None = None,
            extra: dict | None = None, root: Path = NOTEBOOK_DIR) -> dict[str, float]:
    """Execute every source notebook at ``profile`` into ``out_dir`` mirroring ``notebooks/``; stop at the first
    failure (non-zero exit from the CLI)."""
    notebooks = discover(root, only)
    if not notebooks:
        raise NotebookError(f"no notebooks under {root}" + (f" matching {only!r}" if only else ""))
    timings: dict[str, float] = {}
    for i, notebook in enumerate(notebooks, 1):
        relative = notebook.relative_to(root)
        print(f"[{i}/{len(notebooks)}] {relative} (profile={profile}) ...", flush=True)
        seconds = execute(notebook, out_dir / relative, {"profile": profile, **(extra or {})})
        timings[str(relative)] = round(seconds, 1)
        print(f"    done in {seconds:.1f} s", flush=True)
    summary = out_dir / f"timings-{profile}.json"
    summary.write_text(json.dumps({"profile": profile, "seconds": timings, "total": round(sum(timings.values()), 1)},
                                  indent=2))
    print(f"executed {len(timings)} notebooks in {sum(timings.values()):.0f} s (profile={profile})")
    return timings


def build_book(book_dir: Path = BOOK_DIR) -> None:
    """jupyter-book 1.x build, execution off, warnings as errors; fails on any notebook error output."""
    jb = Path(sys.executable).with_name("jupyter-book")
    command = [str(jb), "build", str(book_dir), "-W", "-n", "--keep-going"]
    print(" ".join(command), flush=True)
    result = subprocess.run(command, cwd=book_dir.parent)
    if result.returncode != 0:
        raise NotebookError(f"book build failed (exit {result.returncode})")
    errors = []
    for executed in (book_dir / "executed").rglob("*.ipynb"):
        if executed.name.endswith(".failed.ipynb") or executed.name.startswith("."):
            continue
        nb = json.loads(executed.read_text())
        for cell in nb.get("cells", []):
            if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
                errors.append(str(executed))
                break
    if errors:
        raise NotebookError(f"executed notebooks contain errors: {errors}")
    print(f"book built: {book_dir / '_build' / 'html' / 'index.html'}")


def _parse_value(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clipguard.notebooks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute notebooks with papermill")
    run.add_argument("--profile", default="cpu", choices=PROFILES)
    run.add_argument("--only", help="substring of the notebook path to select")
    run.add_argument("--out", type=Path, default=BOOK_DIR / "executed")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="extra parameter (JSON value), checked against each notebook's parameters cell")
    build = sub.add_parser("build", help="build the Jupyter Book from executed notebooks")
    build.add_argument("--book", type=Path, default=BOOK_DIR)
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            run_all(args.profile, args.out, args.only, {k: _parse_value(v) for k, v in args.parameter})
        else:
            build_book(args.book)
    except NotebookError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
