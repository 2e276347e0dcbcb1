"""Exact and approximate k-nearest neighbours over embedding matrices (detectors.md Section 7).

Exact search is written by hand because no installed library gives blocked GEMM kNN with index-based exclusion
(self, own caption) on CPU and CUDA with bounded memory: scikit-learn's brute force has no per-row exclusion
lists and faiss has no CUDA here. Approximate search wraps faiss (HNSW or IVF) in the same output format.

Conventions: Euclidean distance, or cosine distance ``1 - cos(q, r)`` (computed as ``||q̂ - r̂||² / 2`` on
L2-normalised rows, scikit-learn's ``metric="cosine"``). Excluded reference points are removed *by index*, never
by distance, so an exact duplicate of a query is a legitimate neighbour at distance 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Neighbours", "knn", "knn_approx", "neighbour_recall", "METRICS"]

METRICS = ("euclidean", "cosine")


@dataclass
class Neighbours:
    """A kNN graph: ``distances`` ``[N, k]`` ascending (float64) and ``indices`` ``[N, k]`` (int64) into the
    reference set. Column ``j`` is the ``(j+1)``-th nearest neighbour, so ``r_k = distances[:, k - 1]``."""

    distances: np.ndarray
    indices: np.ndarray
    metric: str = "euclidean"
    #: rows the exact search could not certify from its fp32 candidates and searched again (diagnostic)
    fallback_rows: int = 0

    @property
    def k(self) -> int:
        return self.distances.shape[1]

    def __len__(self) -> int:
        return self.distances.shape[0]

    def take(self, rows) -> "Neighbours":
        """The graph restricted to query ``rows`` (indices still point into the same reference set)."""
        return Neighbours(self.distances[rows], self.indices[rows], self.metric)


def _as_tensor(x, device, dtype=None) -> torch.Tensor:
    """``x`` on ``device``; ``dtype=None`` keeps a floating dtype (fp64 input stays fp64 for the exact refinement)."""
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    if dtype is None and not t.is_floating_point():
        dtype = torch.float32
    return t.detach().to(device=device, dtype=dtype)


def _check_inputs(query, reference, k: int, metric: str, n_excluded: int) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")
    for name, x in (("query", query),) + ((("reference", reference),) if reference is not query else ()):
        if x.ndim != 2:
            raise ValueError(f"{name} must be a 2-D [N, D] matrix, got shape {tuple(x.shape)}")
        finite = torch.isfinite(x).all(1) if isinstance(x, torch.Tensor) else np.isfinite(x).all(1)
        if not bool(finite.all()):
            bad = int(np.flatnonzero(np.asarray(~finite.cpu() if isinstance(finite, torch.Tensor) else ~finite))[0])
            raise ValueError(f"{name} holds NaN or inf (first bad row: {bad})")
    if query.shape[1] != reference.shape[1]:
        raise ValueError(f"query dimension {query.shape[1]} != reference dimension {reference.shape[1]}")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if reference.shape[0] - n_excluded < k:
        raise ValueError(f"need at least k={k} reference points after exclusions, have "
                         f"{reference.shape[0]} with up to {n_excluded} excluded per query")


def _exclusions(exclude, n_query: int, n_ref: int, same: bool) -> np.ndarray | None:
    """``None`` | ``"self"`` | int array ``[Nq]`` or ``[Nq, m]`` of reference indices (``-1`` = none)."""
    if exclude is None:
        return None
    if isinstance(exclude, str):
        if exclude != "self":
            raise ValueError(f"exclude must be None, 'self' or an index array, got {exclude!r}")
        if not same and n_query != n_ref:
            raise ValueError("exclude='self' needs the query to be the reference set")
        return np.arange(n_query, dtype=np.int64)[:, None]
    ex = np.asarray(exclude, dtype=np.int64)
    ex = ex[:, None] if ex.ndim == 1 else ex
    if ex.ndim != 2 or ex.shape[0] != n_query:
        raise ValueError(f"exclude must have one row per query ({n_query}), got shape {ex.shape}")
    if ex.size and (ex.max() >= n_ref or ex.min() < -1):
        raise ValueError(f"exclude holds indices outside [-1, {n_ref})")
    return ex


def _refine(Q: torch.Tensor, R: torch.Tensor, idx: torch.Tensor, metric: str) -> np.ndarray:
    """Distances of the selected pairs recomputed from coordinate differences in float64 (exact for float32 inputs
    up to fp64 rounding; duplicates give exactly 0, where the GEMM expansion leaves rounding noise of order
    sqrt(eps)·||x||). Returns ``[rows, K]`` float64, unsorted."""
    q, r = Q.double(), R.index_select(0, idx.reshape(-1)).view(*idx.shape, R.shape[1]).double()
    if metric == "cosine":   # normalise from the raw rows
        q, r = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(r, dim=-1)
    dist = torch.linalg.vector_norm(q[:, None, :] - r, dim=-1)
    if metric == "cosine":
        dist = dist * dist / 2
    return dist.cpu().numpy()


def _prepare(query, reference, metric, device, dtype):
    same = reference is None or reference is query
    Q = _as_tensor(query, device)
    R = Q if same else _as_tensor(reference, device)
    return Q, R, same


def _search_space(Q, R, same, metric, dtype=torch.float32):
    """The matrices the search runs on: ``dtype`` copies, L2-normalised for the cosine metric."""
    Q = Q.to(dtype)
    R = Q if same else R.to(dtype)
    if metric != "cosine":
        return Q, R
    Qn = torch.nn.functional.normalize(Q, dim=1)
    return Qn, (Qn if same else torch.nn.functional.normalize(R, dim=1))


def _centred(Q0, R0, same, metric, dtype, step: int = 16384):
    """Search-space rows (L2-normalised for cosine) minus the reference mean, computed in float64 and rounded to
    ``dtype``, plus their float64 norms. Euclidean distances are translation invariant, and the rounding error of
    the expanded ``||q||² + ||r||² - 2 q·r`` scales with the norms, so centring is what keeps far-from-origin
    embeddings (norm >> neighbour distance) searchable in fp32."""
    def space(X):
        X = X.double()
        return torch.nn.functional.normalize(X, dim=1) if metric == "cosine" else X

    mean = sum(space(R0[s:s + step]).sum(0) for s in range(0, len(R0), step)) / len(R0)

    def centre(X):
        rows = [(space(X[s:s + step]) - mean).to(dtype) for s in range(0, len(X), step)]
        out = torch.cat(rows)
        return out, torch.linalg.vector_norm(out.double(), dim=1)

    Q, q_norm = centre(Q0)
    R, r_norm = (Q, q_norm) if same else centre(R0)
    return Q, R, q_norm, r_norm


def _balanced(n: int, chunk: int, align: int = 256) -> int:
    """Near-equal chunks of at most ``chunk`` rows, rounded up to a multiple of ``align``: 10,000 = 2 x 5,120 rather
    than 8,192 + 1,808; unaligned block widths (e.g. 13,334 columns) measured ~1.5x slower in ``torch.mm``."""
    parts = max(1, -(-n // chunk))
    size = -(-n // parts)
    if chunk < align:        # small chunks (tests): no alignment
        return size
    return min(-(-size // align) * align, chunk)


def _augmented(X: torch.Tensor, norms: torch.Tensor, side: str) -> torch.Tensor:
    """``[x, ||x||², 1]`` (``side="query"``) or ``[-2x, 1, ||x||²]`` (``"reference"``): their product is the squared
    distance ``||q||² + ||r||² - 2 q·r`` in ONE plain GEMM (no bias pass); width padded to a multiple of 8."""
    d = X.shape[1]
    width = -(-(d + 2) // 8) * 8
    A = torch.zeros((X.shape[0], width), dtype=X.dtype, device=X.device)
    sq = (norms * norms).to(X.dtype)
    if side == "query":
        A[:, :d], A[:, d], A[:, d + 1] = X, sq, 1.0
    else:
        A[:, :d], A[:, d], A[:, d + 1] = -2 * X, 1.0, sq
    return A


def _unit_roundoff(dtype: torch.dtype, device: torch.device) -> float:
    """Unit roundoff of the GEMM: the dtype's, or TF32's (2^-11) when CUDA may use it for fp32 products."""
    if dtype == torch.float32 and device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return 2.0 ** -11
    return torch.finfo(dtype).eps / 2


def _candidates(Q, R, q_norm, r_norm, K, ex_t, chunk_size, ref_chunk_size):
    """Approximate squared distances ``[nq, K]`` (ascending) and indices of each query's K nearest references by
    the blocked GEMM; excluded references get +inf."""
    nq, nr = Q.shape[0], R.shape[0]
    chunk_size, ref_chunk_size = _balanced(nq, chunk_size), _balanced(nr, ref_chunk_size)
    Ra = _augmented(R, r_norm, "reference")
    all_idx = torch.empty((nq, K), dtype=torch.int64, device=Q.device)
    all_val = torch.empty((nq, K), dtype=Q.dtype, device=Q.device)
    buffer = torch.empty((min(chunk_size, nq), min(ref_chunk_size, nr)), dtype=Q.dtype, device=Q.device)
    for qs in range(0, nq, chunk_size):
        c = min(chunk_size, nq - qs)
        q = _augmented(Q[qs:qs + c], q_norm[qs:qs + c], "query")
        best_v = best_i = None
        for rs in range(0, nr, ref_chunk_size):
            r = Ra[rs:rs + ref_chunk_size]
            # reuse one block buffer (a fresh 128 MB allocation per block costs page faults)
            out = buffer if buffer.shape == (c, r.shape[0]) else None
            block = torch.mm(q, r.T, out=out)
            if ex_t is not None:
                e = ex_t[qs:qs + c]
                rows, cols = torch.nonzero((e >= rs) & (e < rs + r.shape[0]), as_tuple=True)
                block[rows, e[rows, cols] - rs] = float("inf")
            v, i = block.topk(min(K, r.shape[0]), dim=1, largest=False, sorted=False)
            i = i + rs
            if best_v is None:
                best_v, best_i = v, i
            else:
                v, pos = torch.cat([best_v, v], 1).topk(K, dim=1, largest=False, sorted=False)
                best_v, best_i = v, torch.cat([best_i, i], 1).gather(1, pos)
        best_v, order = best_v.sort(dim=1)
        all_val[qs:qs + c], all_idx[qs:qs + c] = best_v, best_i.gather(1, order)
    return all_val, all_idx


def _distinct_exclusions(ex: np.ndarray | None, n: int) -> np.ndarray:
    """Number of distinct valid excluded reference indices per query row."""
    if ex is None:
        return np.zeros(n, dtype=np.int64)
    s = np.sort(ex, axis=1)
    return ((s >= 0) & np.r_['1', np.ones((len(s), 1), bool), s[:, 1:] != s[:, :-1]]).sum(1)


def _certified(approx_kth: np.ndarray, exact_k: np.ndarray, q_norm: np.ndarray, roundoff: float, width: int
               ) -> np.ndarray:
    """Rows whose k exact nearest neighbours are provably among the K candidates.

    Every non-candidate r has approximate squared distance a(r) >= a_K (the worst candidate's). The GEMM's error
    on ``||q||² + ||r||² - 2 q·r`` is at most ``γ (||q|| + ||r||)²`` with ``γ ≈ (width + 4) u`` (dot-product bound
    of the fp GEMM plus the rounding of the inputs and norms; doubled here for safety). A reference with
    ``||r|| > ||q|| + r_k`` is farther than ``r_k`` by the triangle inequality; every other one is within
    ``δ = γ (2||q|| + r_k)²`` of its approximate value, so ``a_K - δ > r_k²`` proves that no non-candidate beats the
    k-th candidate. ``exact_k`` = exact squared distance of the k-th candidate."""
    gamma = 2 * (width + 4) * roundoff
    rk = np.sqrt(exact_k) * (1 + 1e-6)
    delta = gamma * (2 * q_norm + rk) ** 2
    return approx_kth - delta > exact_k * (1 + 1e-9)


@torch.no_grad()
def knn(query, reference=None, k: int = 16, *, metric: str = "euclidean", exclude="auto",
        chunk_size: int = 2048, ref_chunk_size: int = 16384, device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32, refine: bool = True, margin: int = 8) -> Neighbours:
    """Exact kNN of every ``query`` row in ``reference`` (``None``: the query set itself).

    The data are centred on the reference mean (distances are translation invariant; the GEMM's rounding error
    scales with the norms). Blocked GEMM in ``dtype``: for a ``[chunk_size, ref_chunk_size]`` block, the squared
    distances ``||q||² + ||r||² - 2 q·r`` in one ``mm`` of augmented rows into a reused buffer, a per-block
    ``topk`` merged into a running list of ``k + margin`` candidates; peak extra memory is one block. With
    ``refine`` the candidates' distances are recomputed from coordinate differences in float64 and every row is
    *certified* (:func:`_certified`: a rigorous bound on the GEMM's rounding error shows no other reference can be
    nearer than the k-th); rows that fail are searched again in float64 and, should that fail too, by direct
    differences over all references. ``refine=False``: the GEMM's distances, no certificate.
    ``exclude``: ``"auto"`` (= ``"self"`` when ``reference`` is ``None`` or the query object), ``None``, ``"self"``,
    or ``[Nq, m]`` reference indices to skip per query row."""
    Q0, R0, same = _prepare(query, reference, metric, device, dtype)
    if isinstance(exclude, str) and exclude == "auto":
        exclude = "self" if same else None
    ex = _exclusions(exclude, Q0.shape[0], R0.shape[0], same)
    _check_inputs(Q0, R0, k, metric, 0 if ex is None else ex.shape[1])
    if not isinstance(margin, (int, np.integer)) or margin < 0:
        raise ValueError(f"margin must be a non-negative integer, got {margin!r}")
    nq, nr = Q0.shape[0], R0.shape[0]
    K = min(k + margin, nr - (0 if ex is None else ex.shape[1]))
    Q, R, q_norm, r_norm = _centred(Q0, R0, same, metric, dtype)
    ex_t = None if ex is None else torch.from_numpy(ex).to(Q.device)
    approx, idx = _candidates(Q, R, q_norm, r_norm, K, ex_t, chunk_size, ref_chunk_size)
    if not refine:
        sq = approx[:, :k].double().clamp_min(0)
        dist = (sq / 2 if metric == "cosine" else sq.sqrt()).cpu().numpy()
        return Neighbours(dist, idx[:, :k].cpu().numpy(), metric)
    dist, idx = _refined_rows(Q0, R0, approx, idx, metric)
    to_sq = (lambda d: 2 * d) if metric == "cosine" else (lambda d: d * d)
    ok = _certified(approx[:, -1].double().cpu().numpy(), to_sq(dist[:, k - 1]), q_norm.cpu().numpy(),
                    _unit_roundoff(Q.dtype, Q.device), Q.shape[1] + 2)
    ok |= nr - _distinct_exclusions(ex, nq) <= K          # every allowed reference is a candidate
    redo = np.flatnonzero(~ok)
    if redo.size:
        rows = torch.from_numpy(redo).to(Q.device)
        d2, i2 = _exact_rows(Q0, R0, Q.index_select(0, rows).double(), R.double(), q_norm[rows], r_norm, k, K,
                             None if ex_t is None else ex_t[rows], metric, chunk_size, ref_chunk_size, rows)
        dist[redo], idx[redo] = d2, i2
    return Neighbours(dist[:, :k], idx[:, :k], metric, int(redo.size))


def _refined_rows(Q0, R0, approx, idx, metric, step: int = 1024):
    """Exact distances of the candidates, sorted by (distance, index); excluded candidates (approximate +inf)
    stay +inf and sort last."""
    dist_parts = []
    for qs in range(0, len(idx), step):
        dist_parts.append(_refine(Q0[qs:qs + step], R0, idx[qs:qs + step], metric))
    dist = np.concatenate(dist_parts)
    dist[~np.isfinite(approx.double().cpu().numpy())] = np.inf
    idx = idx.cpu().numpy()
    order = np.lexsort((idx, dist))  # row-wise: by distance, ties by index
    return np.take_along_axis(dist, order, 1), np.take_along_axis(idx, order, 1)


def _exact_rows(Q0, R0, Q64, R64, q_norm, r_norm, k, K, ex_t, metric, chunk_size, ref_chunk_size, rows):
    """The fallback for uncertified rows: the same search in float64 (certified with float64's roundoff), then
    plain differences over all references for whatever still fails."""
    approx, idx = _candidates(Q64, R64, q_norm, r_norm, K, ex_t, chunk_size, ref_chunk_size)
    Qr = Q0.index_select(0, rows)
    dist, idx = _refined_rows(Qr, R0, approx, idx, metric)
    to_sq = (lambda d: 2 * d) if metric == "cosine" else (lambda d: d * d)
    ok = _certified(approx[:, -1].cpu().numpy(), to_sq(dist[:, k - 1]), q_norm.cpu().numpy(),
                    torch.finfo(torch.float64).eps / 2, Q64.shape[1] + 2)
    for i in np.flatnonzero(~ok):           # practically never: norms beyond ~1e7 x the neighbour distance
        all_idx = torch.arange(R0.shape[0], device=R0.device)[None]
        d = _refine(Qr[i:i + 1], R0, all_idx, metric)[0]
        if ex_t is not None:
            e = ex_t[i].cpu().numpy()
            d[e[e >= 0]] = np.inf
        order = np.lexsort((np.arange(len(d)), d))[:K]
        dist[i], idx[i] = d[order], order
    return dist, idx


def knn_approx(query, reference=None, k: int = 16, *, metric: str = "euclidean", exclude="auto",
               method: str = "hnsw", hnsw_m: int = 32, ef_construction: int = 80, ef_search: int = 64,
               nlist: int | None = None, nprobe: int = 8, seed: int = 0, threads: int | None = None,
               refine: bool = False, max_points_per_centroid: int = 64) -> Neighbours:
    """Approximate kNN with faiss, same output as :func:`knn`. ``method="hnsw"`` (``IndexHNSWFlat``) or ``"ivf"``
    (``IndexIVFFlat`` with ``nlist`` lists, default ``sqrt(N)``, k-means seeded by ``seed``). Exclusions are applied
    by index after asking faiss for ``k + m`` neighbours. Distances are faiss's (direct fp32 sums of squared
    differences, so duplicates give 0); ``refine=True`` recomputes them in the input precision. IVF k-means trains
    on at most ``max_points_per_centroid`` points per list (faiss's default 256 makes training dominate)."""
    import faiss

    Q0, R0, same = _prepare(query, reference, metric, "cpu", torch.float32)
    if isinstance(exclude, str) and exclude == "auto":
        exclude = "self" if same else None
    ex = _exclusions(exclude, Q0.shape[0], R0.shape[0], same)
    m = 0 if ex is None else ex.shape[1]
    _check_inputs(Q0, R0, k, metric, m)
    Q, R = _search_space(Q0, R0, same, metric)
    if threads is not None:
        faiss.omp_set_num_threads(threads)
    r_np = np.ascontiguousarray(R.numpy())
    q_np = r_np if same else np.ascontiguousarray(Q.numpy())
    d = r_np.shape[1]
    if method == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m)
        index.hnsw.efConstruction = ef_construction
        index.add(r_np)
        index.hnsw.efSearch = max(ef_search, k + m)
    elif method == "ivf":
        lists = nlist or max(1, int(np.sqrt(len(r_np))))
        quantizer = faiss.IndexFlatL2(d)
        index = faiss.IndexIVFFlat(quantizer, d, lists)
        index.cp.seed = seed
        index.cp.max_points_per_centroid = max_points_per_centroid
        index.train(r_np)
        index.add(r_np)
        index.nprobe = nprobe
    else:
        raise ValueError(f"unknown approximate method {method!r}; choose 'hnsw' or 'ivf'")
    sq, found = index.search(q_np, k + m)
    if ex is not None:
        drop = (found[:, :, None] == ex[:, None, :]).any(-1) | (found < 0)
    else:
        drop = found < 0
    # stable partition: kept columns first, in faiss's (ascending) order
    order = np.argsort(drop, axis=1, kind="stable")[:, :k]
    if np.take_along_axis(drop, order, 1).any():
        raise RuntimeError("faiss returned fewer than k usable neighbours; raise ef_search / nprobe")
    kept = np.take_along_axis(found, order, 1).astype(np.int64)
    if refine:
        dist, idx = _refined_rows(Q0, R0, torch.zeros(kept.shape), torch.from_numpy(kept), metric)
        return Neighbours(dist, idx, metric)
    # faiss's flat/HNSW/IVF-Flat distances are direct fp32 sums of squared differences (no GEMM expansion)
    sq = np.maximum(np.take_along_axis(sq, order, 1).astype(np.float64), 0.0)
    dist = sq / 2 if metric == "cosine" else np.sqrt(sq)
    tie = np.lexsort((kept, dist))
    return Neighbours(np.take_along_axis(dist, tie, 1), np.take_along_axis(kept, tie, 1), metric)


def neighbour_recall(approx_idx: np.ndarray, exact_idx: np.ndarray) -> float:
    """Mean over queries of |approx ∩ exact| / k (recall@k of the approximate graph)."""
    a, e = np.asarray(approx_idx), np.asarray(exact_idx)
    if a.shape != e.shape:
        raise ValueError(f"index arrays differ in shape: {a.shape} vs {e.shape}")
    hits = (a[:, :, None] == e[:, None, :]).any(-1).sum(1)
    return float(hits.mean() / e.shape[1])
