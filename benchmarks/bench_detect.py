"""Speed and memory of the local outlier detectors (prints figures and targets; asserts nothing).

    python benchmarks/bench_detect.py                          # N = 10k and 100k, 256 dims, k = 16
    python benchmarks/bench_detect.py --sizes 10000 --skip-sklearn --output /tmp/bench.txt

Data: clustered embeddings like CLIP's (low intrinsic dimension): 64 Gaussian clusters of spreads 0.5-2 in a random
16-dimensional subspace of R^dim plus isotropic noise 0.05, and 0.1% planted sparse outliers (8-12 cluster spreads from a random
cluster centre in a random direction of the subspace; a 16-D cluster's own points lie at about 4 spreads). Per size it reports:

* floor: one blocked N x N x d fp32 matmul with torch (``torch.mm`` into a reused buffer, no selection) = what a
  one-sided exact GEMM search cannot go below;
* exact kNN graph (:func:`clipguard.detect.knn`, symmetric: each pair computed once), then k-dist / LID / SLOF / DAO
  each from that ONE graph; the one-sided search (every block, ``symmetric=False``) for comparison up to
  ``--one-sided-max``;
* recall@k of the exact graph against float64 ``torch.cdist`` (direct differences) on a seeded sample of rows;
* approximate graphs (faiss HNSW and IVF-Flat, build + search) and the same detectors on them, with neighbour
  recall against the exact graph and AUROC;
* scikit-learn ``LocalOutlierFactor(n_neighbors=k, algorithm="brute")`` (fit = its kNN + LOF), and our LOF;
* Cognitive Distillation's time per 1,000 images on a clipguard model (``--cd-images``);
* the targets (exact four detectors <= 0.8 x floor, >= 2 x faster than scikit-learn's LOF, recall 1.0) beside the
  measured ratios. The whole report is also written to ``--output`` (default ``benchmarks/results/bench_detect.txt``).

Memory: peak resident set size (RSS) above the level before the call, sampled every 2 ms by a thread reading
``/proc/self/statm`` (covers torch, numpy and faiss allocations; tracemalloc would miss torch's and faiss's).
Times are wall-clock on whatever else the host runs: the load average at start and end is printed.
"""

from __future__ import annotations

import argparse
import inspect
import os
import platform
import threading
import time
from pathlib import Path

import numpy as np
import torch

from clipguard.detect import auroc, dao, k_distance, knn, knn_approx, lid_mle, lof, neighbour_recall, slof
from clipguard.utils import atomic_write_text

TARGET_FLOOR = 0.8       # exact k-dist+LID+SLOF+DAO time / one full N x N x d matmul, at most
TARGET_SKLEARN = 2.0     # scikit-learn LOF time / exact k-dist+LID+SLOF+DAO time, at least
KNN_BLOCK = inspect.signature(knn).parameters["chunk_size"].default
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "bench_detect.txt"


class PeakRSS:
    """Context manager: peak RSS (MiB) above the starting RSS, sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _watch(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def __enter__(self):
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        self.mib = (self.peak - self.start) / 2 ** 20


def make_data(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(dim, 16)))[0].T            # [16, dim] orthonormal rows
    n_out = max(1, n // 1000)
    centres = rng.normal(scale=6.0, size=(64, 16))
    spreads = rng.uniform(0.5, 2.0, size=64)
    which = rng.integers(0, 64, size=n - n_out)
    inliers = centres[which] + spreads[which, None] * rng.normal(size=(n - n_out, 16))
    # sparse but not far: 8-12 cluster spreads from a random cluster centre (AUROC below 1 for some detectors)
    home = rng.integers(0, 64, size=n_out)
    direction = rng.normal(size=(n_out, 16))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    outliers = centres[home] + direction * (spreads[home] * rng.uniform(8, 12, size=n_out))[:, None]
    x = np.concatenate([inliers, outliers]) @ basis + 0.05 * rng.normal(size=(n, dim))
    y = np.r_[np.zeros(n - n_out), np.ones(n_out)].astype(int)
    return x.astype(np.float32), y


def floor_matmul(x: torch.Tensor, chunk: int = 2048) -> float:
    buffer = torch.empty(min(chunk, len(x)), len(x))
    t0 = time.perf_counter()
    for s in range(0, len(x), chunk):
        rows = x[s:s + chunk]
        torch.mm(rows, x.T, out=buffer[:len(rows)])
    return time.perf_counter() - t0


def cdist_recall(x: np.ndarray, graph, k: int, rows: int, seed: int) -> tuple[float, int]:
    """Recall@k of ``graph`` on a seeded sample of rows against float64 ``torch.cdist`` by direct differences."""
    sample = np.sort(np.random.default_rng(seed).choice(len(x), size=min(rows, len(x)), replace=False))
    ref = torch.from_numpy(x).double()
    hits = 0
    for s in range(0, len(sample), 128):
        rows_ = sample[s:s + 128]
        d = torch.cdist(ref[rows_], ref, compute_mode="donot_use_mm_for_euclid_dist")
        d[torch.arange(len(rows_)), torch.from_numpy(rows_)] = float("inf")      # self excluded
        truth = d.topk(k, largest=False).indices.numpy()
        hits += sum(len(set(a) & set(b)) for a, b in zip(graph.indices[rows_].tolist(), truth.tolist()))
    return hits / (len(sample) * k), len(sample)


def cd_timing(model_name: str, n: int, seed: int, say, load) -> None:
    """Cognitive Distillation (released CLIP settings: 100 Adam steps per image) on random images: seconds per
    1,000 images with a randomly initialised clipguard model (the cost does not depend on the weights)."""
    from clipguard.detect import CognitiveDistillation, cognitive_distillation
    from clipguard.models import build_model

    model = build_model(model_name, seed=seed)
    settings = CognitiveDistillation(seed=seed)
    images = torch.rand(n, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(seed))
    cognitive_distillation(model, images[:2], settings, steps=2)          # one-time initialisation
    say(f"\n## Cognitive Distillation, {model_name} ({model.image_size} px), {n} images; load average {load()}")
    result = cognitive_distillation(model, images, settings)
    say(f"{settings.steps} Adam steps per image, batches of {settings.batch_size}: {result.seconds:.2f} s = "
        f"{result.seconds / n * 1000:.1f} s per 1,000 images")


def detectors(graph, k: int) -> dict[str, tuple[np.ndarray, float]]:
    out = {}
    for name, fn in (("k-dist", lambda: k_distance(graph, k)), ("LID", lambda: lid_mle(graph, k)),
                     ("SLOF", lambda: slof(graph, None, k)), ("DAO", lambda: dao(graph, None, k)),
                     ("LOF", lambda: lof(graph, None, k))):
        t0 = time.perf_counter()
        s = fn()
        out[name] = (s, time.perf_counter() - t0)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--skip-sklearn", action="store_true", help="skip scikit-learn's LOF (minutes at 100k)")
    parser.add_argument("--one-sided-max", type=int, default=20_000,
                        help="largest N at which the one-sided exact search is also timed (0: never)")
    parser.add_argument("--block-sides", type=int, nargs="*", default=[4096, 2048],
                        help="other block sides the exact graph is also timed at (graphs compared bit for bit)")
    parser.add_argument("--recall-rows", type=int, default=500,
                        help="rows checked against float64 torch.cdist (direct differences, slow)")
    parser.add_argument("--ef-search", type=int, default=48)
    parser.add_argument("--ef-construction", type=int, default=40)
    parser.add_argument("--hnsw-m", type=int, default=16)
    parser.add_argument("--nprobe", type=int, default=8)
    parser.add_argument("--approx", nargs="*", default=["hnsw", "ivf"], choices=["hnsw", "ivf"])
    parser.add_argument("--ivf-lists-factor", type=float, nargs="+", default=[1.0, 2.0],
                        help="IVF lists = factor * sqrt(N); one IVF row per factor (more lists: faster, lower recall)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cd-images", type=int, default=64,
                        help="images for the Cognitive Distillation timing (0: skip)")
    parser.add_argument("--cd-model", default="clipguard-tiny")
    parser.add_argument("--note", default="", help="a line about the host's state, written into the report")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where the report is written")
    args = parser.parse_args(argv)
    import faiss
    import sklearn

    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    def load() -> str:
        try:
            return "(" + ", ".join(f"{v:.2f}" for v in os.getloadavg()) + ")"
        except OSError:
            return "unavailable"

    say(f"# bench_detect: dim={args.dim} k={args.k} sizes={args.sizes}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    if args.note:
        say(f"# note: {args.note}")
    say(f"# host: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}, faiss threads {faiss.omp_get_max_threads()}; torch {torch.__version__}, "
        f"faiss {faiss.__version__}, scikit-learn {sklearn.__version__}")
    say(f"# load average (1, 5, 15 min) at start: {load()}")
    say("# memory = peak RSS above the pre-call level, sampled every 2 ms (/proc/self/statm)")
    k = args.k
    summary = []
    for n in args.sizes:
        x, y = make_data(n, args.dim, args.seed)
        xt = torch.from_numpy(x)
        say(f"\n## N = {n:,} x {args.dim}, {int(y.sum())} planted outliers; load average {load()}")
        floor = floor_matmul(xt)
        say(f"floor: blocked N x N x d matmul (torch.mm, fp32)          {floor:8.2f} s")
        with PeakRSS() as m:
            exact = knn(x, k=k)
        graph_s = m.seconds
        say(f"exact kNN graph (knn, symmetric: upper-triangle blocks) {m.seconds:8.2f} s   {m.mib:7.0f} MiB   "
            f"= {m.seconds / floor:.2f} x floor; {exact.fallback_rows} rows re-searched in float64")
        ex = detectors(exact, k)
        for name, (s, sec) in ex.items():
            say(f"  {name:6s} from the graph                                 {sec:8.3f} s   AUROC {auroc(y, s):.4f}")
        four = graph_s + sum(ex[nm][1] for nm in ("k-dist", "LID", "SLOF", "DAO"))
        say(f"exact k-dist+LID+SLOF+DAO total                          {four:8.2f} s   = {four / floor:.2f} x floor")
        for side in args.block_sides:
            with PeakRSS() as m:
                other = knn(x, k=k, chunk_size=side, ref_chunk_size=side)
            same = bool((other.indices == exact.indices).all() and (other.distances == exact.distances).all())
            say(f"exact kNN graph, blocks of {side:>5} (default {KNN_BLOCK})         {m.seconds:8.2f} s   "
                f"{m.mib:7.0f} MiB   = {m.seconds / floor:.2f} x floor; identical to the default's graph: {same}")
        if n <= args.one_sided_max:
            with PeakRSS() as m:
                one = knn(x, k=k, symmetric=False)
            same = bool((one.indices == exact.indices).all() and (one.distances == exact.distances).all())
            say(f"exact kNN graph, one-sided (every block)                 {m.seconds:8.2f} s   {m.mib:7.0f} MiB   "
                f"= {m.seconds / floor:.2f} x floor; identical to the symmetric graph: {same}")
        t0 = time.perf_counter()
        recall, checked = cdist_recall(x, exact, k, args.recall_rows, args.seed)
        say(f"recall@{k} of the exact graph vs float64 torch.cdist on {checked} sampled rows: {recall:.6f} "
            f"({time.perf_counter() - t0:.1f} s)")
        approx_totals = {}
        variants = []
        for method in args.approx:
            if method == "hnsw":
                variants.append(("hnsw", method, dict(hnsw_m=args.hnsw_m, ef_search=args.ef_search,
                                                      ef_construction=args.ef_construction),
                                 f"HNSW M={args.hnsw_m} efC={args.ef_construction} efSearch={args.ef_search}"))
            else:
                for factor in args.ivf_lists_factor:
                    lists = max(1, int(factor * np.sqrt(n)))
                    variants.append((f"ivf {factor:g}sqrtN", method, dict(nprobe=args.nprobe, nlist=lists),
                                     f"IVF-Flat nlist={factor:g}*sqrt(N)={lists} nprobe={args.nprobe}"))
        for key, method, options, label in variants:
            with PeakRSS() as m:
                approx = knn_approx(x, k=k, method=method, seed=args.seed, **options)
            approx_recall = neighbour_recall(approx.indices, exact.indices)
            say(f"approx kNN graph (faiss {label}, build+search) {m.seconds:8.2f} s   {m.mib:7.0f} MiB   "
                f"recall@{k} {approx_recall:.4f}")
            ap = detectors(approx, k)
            for name, (s, sec) in ap.items():
                say(f"  {name:6s} on the approximate graph                   {sec:8.3f} s   AUROC {auroc(y, s):.4f} "
                    f"(exact {auroc(y, ex[name][0]):.4f}, diff {auroc(y, s) - auroc(y, ex[name][0]):+.4f})")
            approx_totals[key] = m.seconds + sum(ap[nm][1] for nm in ("k-dist", "LID", "SLOF", "DAO"))
            say(f"approx ({key}) k-dist+LID+SLOF+DAO total              {approx_totals[key]:8.2f} s")
        sk_ratio = None
        if args.skip_sklearn:
            say("sklearn LocalOutlierFactor: skipped (--skip-sklearn)")
        else:
            from sklearn.neighbors import LocalOutlierFactor

            with PeakRSS() as m:
                model = LocalOutlierFactor(n_neighbors=k, algorithm="brute").fit(x)
            sk = -model.negative_outlier_factor_
            sk_ratio = m.seconds / four
            say(f"sklearn LocalOutlierFactor(n_neighbors={k}, brute) fit   {m.seconds:8.2f} s   {m.mib:7.0f} MiB   "
                f"AUROC {auroc(y, sk):.4f}; max |ours - sklearn| {np.abs(ex['LOF'][0] - sk).max():.2e} (sklearn: fp32)")
            say(f"  speed-up vs sklearn LOF: exact graph+LOF {m.seconds / (graph_s + ex['LOF'][1]):.1f} x, "
                f"exact four detectors {sk_ratio:.1f} x, "
                + ", ".join(f"approx {a} four detectors {m.seconds / t:.1f} x" for a, t in approx_totals.items()))
        summary.append((n, four / floor, sk_ratio, recall))
    if args.cd_images:
        cd_timing(args.cd_model, args.cd_images, args.seed, say, load)
    say(f"\n## targets (exact k-dist+LID+SLOF+DAO); load average at end {load()}")
    say(f"{'N':>9}  {'time / floor':>14} {'target':>8}  {'sklearn LOF / ours':>19} {'target':>8}  "
        f"{'recall vs cdist':>15} {'target':>7}")
    for n, r_floor, r_sk, rec in summary:
        sk_text = "skipped" if r_sk is None else f"{r_sk:.2f} x"
        say(f"{n:>9,}  {r_floor:>12.2f} x {'<= ' + str(TARGET_FLOOR):>8}  {sk_text:>19} "
            f"{'>= ' + str(TARGET_SKLEARN):>8}  {rec:>15.6f} {'1.0':>7}")
    atomic_write_text(args.output, "\n".join(lines) + "\n")
    print(f"# written to {args.output}")


if __name__ == "__main__":
    main()
