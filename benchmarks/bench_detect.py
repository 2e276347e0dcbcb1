"""Speed and memory of the local outlier detectors (prints figures; asserts nothing).

    python benchmarks/bench_detect.py                          # N = 10k and 100k, 256 dims, k = 16
    python benchmarks/bench_detect.py --sizes 10000 --skip-sklearn

Data: clustered embeddings like CLIP's (low intrinsic dimension): 64 Gaussian clusters of spreads 0.5-2 in a random
16-dimensional subspace of R^dim plus isotropic noise 0.05, and 0.1% planted sparse outliers (8-12 cluster spreads from a random
cluster centre in a random direction of the subspace; a 16-D cluster's own points lie at about 4 spreads). Per size it reports:

* floor: one blocked N x N x d fp32 matmul with torch (``torch.mm`` into a reused buffer, no selection) = the least
  any exact GEMM search can cost;
* exact kNN graph (:func:`clipguard.detect.knn`), then k-dist / LID / SLOF / DAO each from that ONE graph;
* approximate graphs (faiss HNSW and IVF-Flat, build + search) and the same detectors on them, with neighbour
  recall against the exact graph and AUROC;
* scikit-learn ``LocalOutlierFactor(n_neighbors=k, algorithm="brute")`` (fit = its kNN + LOF), and our LOF.

Memory: peak resident set size (RSS) above the level before the call, sampled every 2 ms by a thread reading
``/proc/self/statm`` (covers torch, numpy and faiss allocations; tracemalloc would miss torch's and faiss's).
Symmetry (query = reference) is not exploited: it halves the GEMM but needs a column-wise top-k of every block
(dim 0, strided); a prototype (upper-triangle blocks of 2,048 or 4,096, row and column top-k, same neighbour sets)
measured slower on this 2-core host at N = 20,000 x 256: 8.0-8.8 s vs 5.9 s one-sided (floor 3.7-4.0 s).
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time

import numpy as np
import torch

from clipguard.detect import auroc, dao, k_distance, knn, knn_approx, lid_mle, lof, neighbour_recall, slof


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
    parser.add_argument("--ef-search", type=int, default=48)
    parser.add_argument("--ef-construction", type=int, default=40)
    parser.add_argument("--hnsw-m", type=int, default=16)
    parser.add_argument("--nprobe", type=int, default=8)
    parser.add_argument("--approx", nargs="+", default=["hnsw", "ivf"], choices=["hnsw", "ivf"])
    parser.add_argument("--ivf-lists-factor", type=float, nargs="+", default=[1.0, 2.0],
                        help="IVF lists = factor * sqrt(N); one IVF row per factor (more lists: faster, lower recall)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import faiss
    import sklearn

    print(f"# bench_detect: dim={args.dim} k={args.k} sizes={args.sizes}")
    print(f"# host: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}, faiss threads {faiss.omp_get_max_threads()}; torch {torch.__version__}, "
          f"faiss {faiss.__version__}, scikit-learn {sklearn.__version__}")
    try:
        print(f"# load average at start: {os.getloadavg()}")
    except OSError:
        pass
    print("# memory = peak RSS above the pre-call level, sampled every 2 ms (/proc/self/statm)")
    k = args.k
    for n in args.sizes:
        x, y = make_data(n, args.dim, args.seed)
        xt = torch.from_numpy(x)
        print(f"\n## N = {n:,} x {args.dim}, {int(y.sum())} planted outliers")
        floor = floor_matmul(xt)
        print(f"floor: blocked N x N x d matmul (torch.mm, fp32)      {floor:8.2f} s")
        with PeakRSS() as m:
            exact = knn(x, k=k)
        graph_s = m.seconds
        print(f"exact kNN graph (knn, fp32 GEMM + top-k + refine)     {m.seconds:8.2f} s   {m.mib:7.0f} MiB   "
              f"= {m.seconds / floor:.2f} x floor")
        ex = detectors(exact, k)
        for name, (s, sec) in ex.items():
            print(f"  {name:6s} from the graph                               {sec:8.3f} s   AUROC {auroc(y, s):.4f}")
        four = graph_s + sum(ex[nm][1] for nm in ("k-dist", "LID", "SLOF", "DAO"))
        print(f"exact k-dist+LID+SLOF+DAO total                        {four:8.2f} s")
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
            recall = neighbour_recall(approx.indices, exact.indices)
            print(f"approx kNN graph (faiss {label}, build+search) {m.seconds:8.2f} s   {m.mib:7.0f} MiB   "
                  f"recall@{k} {recall:.4f}")
            ap = detectors(approx, k)
            for name, (s, sec) in ap.items():
                print(f"  {name:6s} on the approximate graph                   {sec:8.3f} s   AUROC {auroc(y, s):.4f} "
                      f"(exact {auroc(y, ex[name][0]):.4f}, diff {auroc(y, s) - auroc(y, ex[name][0]):+.4f})")
            approx_totals[key] = m.seconds + sum(ap[nm][1] for nm in ("k-dist", "LID", "SLOF", "DAO"))
            print(f"approx ({key}) k-dist+LID+SLOF+DAO total              {approx_totals[key]:8.2f} s")
        if args.skip_sklearn:
            print("sklearn LocalOutlierFactor: skipped (--skip-sklearn)")
            continue
        from sklearn.neighbors import LocalOutlierFactor

        with PeakRSS() as m:
            model = LocalOutlierFactor(n_neighbors=k, algorithm="brute").fit(x)
        sk = -model.negative_outlier_factor_
        ours_lof = ex["LOF"][0]
        print(f"sklearn LocalOutlierFactor(n_neighbors={k}, brute) fit  {m.seconds:8.2f} s   {m.mib:7.0f} MiB   "
              f"AUROC {auroc(y, sk):.4f}; max |ours - sklearn| {np.abs(ours_lof - sk).max():.2e}")
        print(f"  speed-up vs sklearn LOF: exact graph+LOF {m.seconds / (graph_s + ex['LOF'][1]):.1f} x, "
              f"exact four detectors {m.seconds / four:.1f} x, "
              + ", ".join(f"approx {a} four detectors {m.seconds / t:.1f} x" for a, t in approx_totals.items()))


if __name__ == "__main__":
    main()
