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
import threading
import time
import warnings
from pathlib import Path

from . import parallel, progress
from .utils import atomic_write_text

__all__ = ["REPO_ROOT", "NOTEBOOK_DIR", "BOOK_DIR", "KERNEL_NAME", "discover", "check_parameters", "execute",
           "run_all", "default_jobs", "expected_seconds", "longest_first", "time_left", "run_costs", "summary_table",
           "build_book", "progress_label"]

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


def _defaults(notebook: Path) -> dict:
    import papermill

    return {name: info["default"] for name, info in papermill.inspect_notebook(str(notebook)).items()}


def finish_page(nb: dict, parameters: dict, defaults: dict, name: str) -> list[str]:
    """Make an executed notebook read as a page: its title first, a banner stating the profile and every
    non-default parameter, the parameter cells collapsed, and no stderr residue (progress bars, warnings); the
    removed stderr text is returned for the terminal."""
    cells = nb["cells"]
    title = next((c for c in cells if c["cell_type"] == "markdown" and "".join(c["source"]).lstrip().startswith("# ")),
                 None)
    if title is not None:
        cells.remove(title)
        cells.insert(0, title)
    removed = []
    for cell in cells:
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if ("parameters" in tags or "injected-parameters" in tags) and "hide-cell" not in tags:
            tags.append("hide-cell")
        kept = []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                removed.append("".join(output.get("text", "")))
            else:
                kept.append(output)
        if "outputs" in cell:
            cell["outputs"] = kept
    changed = {k: v for k, v in parameters.items() if k != "profile" and defaults.get(k, object()) != repr(v)
               and defaults.get(k) != json.dumps(v)}
    banner = f"Executed at profile `{parameters.get('profile', defaults.get('profile'))}`"
    if changed:
        banner += " with " + ", ".join(f"`{k} = {v!r}`" for k, v in sorted(changed.items()))
    banner += f" (rerun: `python -m clipguard.notebooks run --profile {parameters.get('profile', 'cpu')} --only {name}`)."
    nb.setdefault("metadata", {})["clipguard"] = {"profile": parameters.get("profile"), "parameters": parameters}
    cells.insert(1 if title is not None else 0,
                 {"cell_type": "markdown", "id": "clipguard-banner", "metadata": {"tags": ["clipguard-banner"]},
                  "source": [banner]})
    return removed


def progress_label(notebook: Path) -> str:
    """How the runner's run lines name a notebook: its part and name (``06_cleanclip/exercises``; every chapter
    has an ``exercises`` page)."""
    return f"{notebook.parent.name}/{notebook.stem}"


class _ProgressTail:
    """Prints what the kernel reports through :mod:`clipguard.progress` while a notebook runs."""

    def __init__(self, path: Path, label: str):
        self.path, self.label = path, label
        self.counts = {"trained": 0, "reused": 0}
        self.runs: dict[str, float] = {}  # run id -> seconds it took when it was trained
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._started = time.perf_counter()

    def __enter__(self):
        self.path.write_text("")
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.path.unlink(missing_ok=True)

    def _follow(self) -> None:
        position = 0
        while True:
            stopping = self._stop.is_set()
            with open(self.path) as handle:
                handle.seek(position)
                lines = handle.readlines()
                position = handle.tell()
            for line in lines:
                self._print(json.loads(line))
            if stopping:
                return
            self._stop.wait(1.0)

    def _print(self, record: dict) -> None:
        self.counts[record["status"]] = self.counts.get(record["status"], 0) + 1
        if record.get("run"):
            self.runs[record["run"]] = record.get("cost") or 0.0
        where = f"{record['group']} {record['step']}/{record['total']}: " if record.get("step") else ""
        elapsed = time.perf_counter() - self._started
        print(f"    [{self.label}] {where}{record['what']} — {record['status']} in {record['seconds']:.0f} s "
              f"(notebook elapsed {elapsed / 60:.1f} min)", flush=True)


def execute(notebook: Path, output: Path, parameters: dict, cwd: Path | None = None) -> dict:
    """Execute one notebook with papermill into ``output`` (atomically) and finish it as a page (:func:`finish_page`);
    returns seconds taken and the runs trained and reused."""
    import nbformat
    import papermill

    check_parameters(notebook, parameters)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.stem}.running.ipynb")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    log = output.with_name(f".{output.stem}.progress.jsonl")
    os.environ[progress.LOG_VARIABLE] = str(log)
    started = time.perf_counter()
    try:
        with _ProgressTail(log, progress_label(notebook)) as tail, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*without encryption.*")
            papermill.execute_notebook(str(notebook), str(tmp), parameters=parameters, kernel_name=KERNEL_NAME,
                                       cwd=str(cwd or notebook.parent), progress_bar=False,
                                       extra_arguments=["--IPKernelApp.log_level=ERROR"])
    except Exception:
        if tmp.exists():
            os.replace(tmp, output.with_name(f"{output.stem}.failed.ipynb"))
        raise
    finally:
        os.environ.pop(progress.LOG_VARIABLE, None)
    nb = json.loads(tmp.read_text())
    removed = finish_page(nb, parameters, _defaults(notebook), f"{notebook.parent.name}/{notebook.stem}")
    nbformat.validate(nbformat.from_dict(nb))
    atomic_write_text(output, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    tmp.unlink(missing_ok=True)
    output.with_name(f"{output.stem}.failed.ipynb").unlink(missing_ok=True)
    if removed:
        first = next((line for text in removed for line in text.splitlines() if line.strip()), "")
        print(f"    removed {len(removed)} stderr output(s) from the page (first: {first[:100]!r})", flush=True)
    return {"seconds": round(time.perf_counter() - started, 1), **tail.counts, "runs": tail.runs}


def default_jobs(profile: str) -> int:
    """Notebooks executed at once: one per core on the CPU profiles, at most four (each kernel then gets
    ``cores // jobs`` threads), one on ``gpu`` (one accelerator). On two cores two one-thread kernels train
    1.15-1.38x the pairs per second of one two-thread kernel (``benchmarks/bench_train.py --section lanes``); the
    whole book gains less (about 1.1x: evaluation is slower on one thread), the smoke notebooks of the test suite
    more (their time is mostly kernel start-up)."""
    return 1 if profile == "gpu" else max(1, min(4, os.cpu_count() or 1))


def _execute_in_lane(notebook: Path, output: Path, parameters: dict, threads: int) -> dict:
    """:func:`execute` in a worker process whose kernels use ``threads`` threads (set before torch loads)."""
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(threads)
    os.environ[parallel.WORKERS_VARIABLE] = "1"  # the lanes fill the cores: a grid trains its runs one by one
    return execute(notebook, output, parameters)


def run_all(profile: str, out_dir: Path = BOOK_DIR / "executed", only: str | None = None,
            extra: dict | None = None, root: Path = NOTEBOOK_DIR, jobs: int | None = None) -> dict[str, float]:
    """Execute every source notebook at ``profile`` into ``out_dir`` mirroring ``notebooks/``, ``jobs`` at a time
    (default :func:`default_jobs`), the longest first by earlier builds' times (:func:`longest_first`; one at a
    time: in path order; notebooks that need the same run wait on the run store's lock, and
    the first trains it). After a failure no further notebook starts, the running ones finish, and the error is
    raised. Prints each run as it is trained or reused, and a table at the end."""
    notebooks = discover(root, only)
    if not notebooks:
        raise NotebookError(f"no notebooks under {root}" + (f" matching {only!r}" if only else ""))
    jobs = max(1, min(jobs or default_jobs(profile), len(notebooks)))
    parameters = {"profile": profile, **(extra or {})}
    for notebook in notebooks:  # every notebook's parameters are checked before any runs
        check_parameters(notebook, parameters)
    started = time.perf_counter()
    results: dict[str, dict] = {}
    expected = expected_seconds(profile, root, out_dir)
    if jobs > 1:
        notebooks = longest_first(notebooks, root, expected)
    if jobs == 1:
        for i, notebook in enumerate(notebooks, 1):
            relative = notebook.relative_to(root)
            print(f"[{i}/{len(notebooks)}] {relative} (profile={profile}) ...", flush=True)
            results[str(relative)] = execute(notebook, out_dir / relative, parameters)
            waiting = [str(n.relative_to(root)) for n in notebooks[i:]]
            print(f"    done in {results[str(relative)]['seconds']:.1f} s{_eta(expected, waiting, {}, 1)}", flush=True)
    else:
        lanes = _run_lanes(notebooks, root, out_dir, parameters, jobs, expected)
        results = {name: lanes[name] for name in sorted(lanes)}  # reported in path order
    wall = time.perf_counter() - started
    timings = {name: r["seconds"] for name, r in results.items()}
    summary = out_dir / f"timings-{profile}.json"
    atomic_write_text(summary, json.dumps({"profile": profile, "jobs": jobs, "seconds": timings,
                                           "run_costs": run_costs(results), "notebooks": results,
                                           "total": round(sum(timings.values()), 1),
                                           "wall_seconds": round(wall, 1)}, indent=2))
    print(summary_table(results))
    print(f"executed {len(timings)} notebooks in {wall:.0f} s wall time, {jobs} at a time "
          f"({sum(timings.values()):.0f} s summed over notebooks; profile={profile})")
    return timings


def expected_seconds(profile: str, root: Path = NOTEBOOK_DIR, out_dir: Path = BOOK_DIR / "executed") -> dict[str, float]:
    """Seconds per notebook at ``profile`` from earlier builds: the committed ``notebooks/timings-<profile>.json``
    (a measured build), updated by this machine's last build in ``out_dir``. Empty when neither exists."""
    seconds: dict[str, float] = {}
    for path in (root / f"timings-{profile}.json", out_dir / f"timings-{profile}.json"):
        try:
            seconds.update(json.loads(path.read_text())["seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return seconds


def longest_first(notebooks: list[Path], root: Path, seconds: dict[str, float]) -> list[Path]:
    """The order lanes take notebooks in: the longest first (so no long notebook starts last and runs alone), a
    notebook with no measured time before all measured ones, summary parts (``99_*``) last; ties keep path order."""
    def rank(notebook: Path) -> tuple[bool, float]:
        return _reads_the_book(notebook, root), -seconds.get(str(notebook.relative_to(root)), float("inf"))

    return sorted(notebooks, key=rank)


def time_left(expected: dict[str, float], waiting: list[str], running: dict[str, float], jobs: int) -> float | None:
    """Estimated seconds until every notebook is done, from earlier builds' seconds (:func:`expected_seconds`): the
    waiting notebooks' plus what is left of the running ones' (``running``: name -> seconds elapsed), spread over
    ``jobs`` lanes, and never less than the longest remainder of one notebook. None when a notebook has no earlier
    time (the estimate would mislead)."""
    names = [*waiting, *running]
    if any(name not in expected for name in names):
        return None
    remainders = [max(0.0, expected[name] - elapsed) for name, elapsed in running.items()]
    spread = (sum(expected[name] for name in waiting) + sum(remainders)) / max(1, jobs)
    return max(spread, max(remainders, default=0.0))


def _eta(expected: dict[str, float], waiting: list[str], running: dict[str, float], jobs: int) -> str:
    left = time_left(expected, waiting, running, jobs)
    if left is None or not (waiting or running):
        return ""
    when = f"about {left / 60:.0f} min" if left >= 90 else "under 2 min"
    return f"; {when} left (from the last build's times)"


def _reads_the_book(notebook: Path, root: Path) -> bool:
    """Summary parts (``99_*``, e.g. the scorecard) read what every chapter recorded: they run last, alone."""
    return notebook.relative_to(root).parts[0].startswith("99_")


def _run_lanes(notebooks: list[Path], root: Path, out_dir: Path, parameters: dict, jobs: int,
               expected: dict[str, float] | None = None) -> dict[str, dict]:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    threads = max(1, (os.cpu_count() or 1) // jobs)
    print(f"executing {len(notebooks)} notebooks, {jobs} at a time, {threads} thread(s) per kernel", flush=True)
    queue = list(enumerate(notebooks, 1))
    results: dict[str, dict] = {}
    begun: dict[str, float] = {}  # notebook -> when it started
    failure: BaseException | None = None
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        running = {}
        while queue or running:
            while queue and failure is None and len(running) < jobs:
                if running and _reads_the_book(queue[0][1], root):
                    break  # a summary page waits for every page before it
                i, notebook = queue.pop(0)
                relative = notebook.relative_to(root)
                print(f"[{i}/{len(notebooks)}] {relative} (profile={parameters['profile']}) started", flush=True)
                running[pool.submit(_execute_in_lane, notebook, out_dir / relative, parameters, threads)] = relative
                begun[str(relative)] = time.perf_counter()
            if failure is not None:
                queue.clear()
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                relative = running.pop(future)
                try:
                    results[str(relative)] = future.result()
                    now = time.perf_counter()
                    eta = _eta(expected or {}, [str(n.relative_to(root)) for _, n in queue],
                               {str(r): now - begun[str(r)] for r in running.values()}, jobs)
                    print(f"    {relative} done in {results[str(relative)]['seconds']:.1f} s ({len(results)}/"
                          f"{len(notebooks)} notebooks){eta}", flush=True)
                except BaseException as error:  # the first failure is raised once the running notebooks finish
                    print(f"    {relative} FAILED: {type(error).__name__}: {str(error)[:300]}", flush=True)
                    failure = failure or error
    if failure is not None:
        raise failure
    return {str(n.relative_to(root)): results[str(n.relative_to(root))] for n in notebooks}


def summary_table(results: dict[str, dict]) -> str:
    """Seconds, runs trained and reused, and what its runs cost per notebook (:func:`run_costs`), then the same
    cost per part, as plain-text tables."""
    width = max([len(n) for n in results] + [8])
    costs = run_costs(results)
    lines = [f"{'notebook':<{width}}  {'seconds':>8}  {'trained':>7}  {'reused':>6}  {'runs cost':>9}"]
    for name, r in results.items():
        lines.append(f"{name:<{width}}  {r['seconds']:>8.1f}  {r.get('trained', 0):>7}  {r.get('reused', 0):>6}  "
                     f"{sum(r.get('runs', {}).values()):>9.0f}")
    total = sum(r["seconds"] for r in results.values())
    lines.append(f"{'total':<{width}}  {total:>8.1f}  {sum(r.get('trained', 0) for r in results.values()):>7}  "
                 f"{sum(r.get('reused', 0) for r in results.values()):>6}  {costs['all']['seconds']:>9.0f}")
    lines.append("runs cost: seconds the runs a notebook (part) uses took when they were trained, each run once, "
                 "whoever trained it; own: the runs no other part uses")
    for part, cost in costs.items():
        lines.append(f"  {part:<{width - 2}}  {cost['runs']:>4} runs  {cost['seconds']:>8.0f} s   own "
                     f"{cost['own_runs']:>4} runs  {cost['own_seconds']:>8.0f} s")
    return "\n".join(lines)


def run_costs(results: dict[str, dict]) -> dict[str, dict]:
    """Per part (a notebook's first folder, e.g. ``06_cleanclip``) and for ``all``: the distinct runs its notebooks
    used (trained or reused) and the seconds those runs took when they were trained. What a part costs from an empty
    run store when it runs alone, whichever notebook trained its runs in this build (lane seconds: a run trained
    beside another notebook took longer than it would alone). ``own_runs`` and ``own_seconds``: the runs no other
    part uses, what the part adds to a book whose other parts are already built."""
    parts: dict[str, dict[str, float]] = {}
    for name, r in results.items():
        parts.setdefault(Path(name).parts[0], {}).update(r.get("runs", {}))
    users: dict[str, int] = {}
    for runs in parts.values():
        for run in runs:
            users[run] = users.get(run, 0) + 1
    parts["all"] = {run: cost for runs in parts.values() for run, cost in runs.items()}
    out = {}
    for part, runs in parts.items():
        own = [cost for run, cost in runs.items() if part == "all" or users[run] == 1]
        out[part] = {"runs": len(runs), "seconds": round(sum(runs.values()), 1), "own_runs": len(own),
                     "own_seconds": round(sum(own), 1)}
    return out


def page_profiles(book_dir: Path = BOOK_DIR) -> dict[str, str]:
    """The profile each executed page was run at (from the runner's metadata)."""
    found = {}
    for executed in sorted((book_dir / "executed").rglob("*.ipynb")):
        if executed.name.endswith(".failed.ipynb") or executed.name.startswith("."):
            continue
        meta = json.loads(executed.read_text()).get("metadata", {})
        profile = (meta.get("clipguard") or {}).get("profile") or (meta.get("papermill", {}).get("parameters")
                                                                  or {}).get("profile")
        found[str(executed.relative_to(book_dir / "executed"))] = profile or "unknown"
    return found


MATHJAX_DIR = Path("/usr/share/javascript/mathjax")
#: The parts of MathJax 2 that the TeX-AMS_CHTML configuration loads (1.5 MB of the package's 41 MB).
_MATHJAX_PARTS = ("MathJax.js", "config/TeX-AMS_CHTML.js", "extensions", "jax/element", "jax/input",
                  "jax/output/CommonHTML", "fonts/HTML-CSS/TeX/woff", "localization/en")


def vendor_mathjax(book_dir: Path = BOOK_DIR, source: Path = MATHJAX_DIR) -> bool:
    """Copy the MathJax the book needs into ``book_dir/_extra/mathjax`` (Sphinx's ``html_extra_path``: served as
    ``/mathjax``, and not added to every page as ``_static`` scripts would be) for offline formulas; False when
    Debian's ``libjs-mathjax`` is not installed (the formulas then stay as TeX source)."""
    if not (source / "MathJax.js").exists():
        print(f"warning: {source} not found (apt-get install libjs-mathjax): formulas will show as TeX",
              file=sys.stderr)
        return False
    target = book_dir / "_extra" / "mathjax"
    for part in _MATHJAX_PARTS:
        src, dst = source / part, target / part
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        elif src.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    return True


def build_book(book_dir: Path = BOOK_DIR) -> None:
    """jupyter-book 1.x build, execution off, warnings as errors; fails on any notebook error output."""
    profiles = page_profiles(book_dir)
    if len(set(profiles.values())) > 1:
        print("warning: the book mixes pages executed at different profiles: " +
              ", ".join(f"{page} ({profile})" for page, profile in profiles.items()), file=sys.stderr, flush=True)
    vendor_mathjax(book_dir)
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
    run.add_argument("--jobs", type=int, help="notebooks executed at once (default: one per core, at most 4; "
                                              "1 on gpu)")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="extra parameter (JSON value), checked against each notebook's parameters cell")
    build = sub.add_parser("build", help="build the Jupyter Book from executed notebooks")
    build.add_argument("--book", type=Path, default=BOOK_DIR)
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            run_all(args.profile, args.out, args.only, {k: _parse_value(v) for k, v in args.parameter},
                    jobs=args.jobs)
        else:
            build_book(args.book)
    except NotebookError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
