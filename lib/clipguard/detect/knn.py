"""Exact and approximate k-nearest neighbours over embedding matrices (detectors.md Section 7).

Exact search is written by hand because no installed library gives blocked GEMM kNN with index-based exclusion
(self, own caption) on CPU and CUDA with bounded memory: scikit-learn's brute force has no per-row exclusion
lists and faiss has no CUDA here. Approximate search wraps faiss (HNSW or IVF) in the same output format.

Exact search (:func:`knn`): data centred on the reference mean; blocked fp32 GEMM of squared distances; running
lists of ``k + margin`` candidates fed through a threshold filter (group minima of each block); for a set against
itself, only the blocks on and above the diagonal (each pair computed once, rows and columns updated) in a
k-means order of the points; then float64-accurate distances of the candidates and a per-row certificate from a
rigorous bound on the GEMM's rounding (rows that fail are searched again in float64).

Conventions: Euclidean distance, or cosine distance ``1 - cos(q, r)`` (computed as ``||q̂ - r̂||² / 2`` on
L2-normalised rows, scikit-learn's ``metric="cosine"``). Excluded reference points are removed *by index*, never
by distance, so an exact duplicate of a query is a legitimate neighbour at distance 0.
"""

from __future__ import annotations

import contextlib
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


def _refine(Q: torch.Tensor, R: torch.Tensor, idx: torch.Tensor, metric: str, dtype=None) -> np.ndarray:
    """Distances of the selected pairs ``[rows, K]`` (float64, unsorted) recomputed from coordinate differences in
    ``dtype`` (default: the input's), without the GEMM expansion: duplicates give exactly 0 (the expansion leaves
    rounding noise of order sqrt(eps)·||x||) and the relative error is that of the dtype."""
    dtype = dtype or Q.dtype
    q, r = Q.to(dtype), R.index_select(0, idx.reshape(-1)).view(*idx.shape, R.shape[1]).to(dtype)
    if metric == "cosine":   # normalise from the raw rows
        q, r = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(r, dim=-1)
    dist = torch.cdist(q[:, None, :], r, compute_mode="donot_use_mm_for_euclid_dist")[:, 0].double()
    if metric == "cosine":
        dist = dist * dist / 2
    return dist.cpu().numpy()


def _refine_tolerance(dtype: torch.dtype, dim: int) -> float:
    """Bound on the relative error of :func:`_refine`'s squared distances (rounded differences, then a sum of
    ``dim`` squares), doubled; 0 for float64 (taken as exact)."""
    if dtype == torch.float64:
        return 0.0
    return 2 * (dim + 2) * torch.finfo(dtype).eps / 2


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


def _balanced(n: int, chunk: int, align: int = 256, multiple: int = 1) -> int:
    """Near-equal chunks of at most ``chunk`` rows, rounded up to a multiple of ``align``: 10,000 = 2 x 5,120 rather
    than 8,192 + 1,808; unaligned block widths (e.g. 13,334 columns) measured ~1.5x slower in ``torch.mm``. Small
    chunks (tests) are only rounded up to a multiple of ``multiple``."""
    parts = max(1, -(-n // chunk))
    size = -(-n // parts)
    if chunk < align:
        return -(-size // multiple) * multiple
    return min(-(-size // align) * align, -(-chunk // align) * align)


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


#: Threshold filter granularity: a block is scanned as the minima of groups of GROUP strided entries per row (and
#: per column); only groups whose minimum beats the current k-th candidate distance are opened.
GROUP = 16
#: A block side is "busy" when its lists have more than BUSY groups below their thresholds on average (a cluster
#: split between two blocks); it then compares every entry with the thresholds rather than opening groups.
BUSY = 2


def row_group_minima(D: torch.Tensor) -> torch.Tensor:
    """Minima ``[bi / GROUP, bj]`` over the groups of ``GROUP`` strided rows of a block (row group r = rows r,
    r + bi / GROUP, ...): the one pass of the selection over a whole block."""
    return D.view(GROUP, D.shape[0] // GROUP, D.shape[1]).amin(0)


class _Lists:
    """Running candidate lists of every point: ``values`` ``[n, K]`` (approximate squared distances, ascending,
    +inf = empty) and ``indices``; ``values[:, -1]`` is the threshold a new candidate must beat.

    A block is read through the minima of groups of ``GROUP`` strided entries per row (``update_rows``) or per
    column (``update_columns``): a list's K best entries in the block lie in the (at most K) groups of smallest
    minimum, and only groups whose minimum beats the list's threshold can improve it, so each list opens
    ``min(K, groups below its threshold)`` groups and merges those ``GROUP``-entry groups with ``topk``. Lists
    with nothing below their threshold are skipped; no full-width ``topk`` of the block. Blocks above the
    diagonal of a symmetric search (``update_both``) serve rows and columns from one pass of minima, and a
    busy side compares every entry with its thresholds instead (``_below``)."""

    def __init__(self, n: int, K: int, dtype, device):
        self.values = torch.full((n, K), float("inf"), dtype=dtype, device=device)
        self.indices = torch.full((n, K), -1, dtype=torch.int64, device=device)
        self.K = K

    def _merge(self, points: torch.Tensor, values: torch.Tensor, indices: torch.Tensor) -> None:
        """Lists ``points`` merged with their candidates ``[len(points), m]``."""
        v = torch.cat([self.values[points], values], 1)
        v, pos = v.topk(self.K, dim=1, largest=False, sorted=True)
        self.indices[points] = torch.cat([self.indices[points], indices], 1).gather(1, pos)
        self.values[points] = v

    def _merge_triples(self, points: torch.Tensor, neighbours: torch.Tensor, values: torch.Tensor) -> None:
        """Candidates as triples (point, neighbour, value), any number per point: the affected lists and their
        candidates are sorted together by (point, value) and cut at K."""
        if points.numel() == 0:
            return
        rows, group = torch.unique(points, return_inverse=True)
        K, n = self.K, len(rows)
        v = torch.cat([self.values[rows].reshape(-1), values])
        i = torch.cat([self.indices[rows].reshape(-1), neighbours])
        g = torch.cat([torch.arange(n, device=v.device).repeat_interleave(K), group])
        by_value = torch.argsort(v, stable=True)
        order = by_value[torch.argsort(g[by_value], stable=True)]
        g = g[order]
        counts = torch.bincount(g, minlength=n)
        rank = torch.arange(len(g), device=v.device) - (torch.cumsum(counts, 0) - counts)[g]
        keep = rank < K                       # every affected list gets exactly K entries back
        self.values[rows[g[keep]], rank[keep]] = v[order][keep]
        self.indices[rows[g[keep]], rank[keep]] = i[order][keep]

    def _open(self, start: int, minima: torch.Tensor, gather) -> None:
        """Lists ``start + i`` with group minima ``minima[i]`` below their threshold open their smallest-minimum
        groups; ``gather(local ids, groups)`` returns the groups' entries and neighbour ids ``[n, m * GROUP]``.
        Lists are bucketed by how many groups they need (1, 2, 4, ... K), so a few busy lists do not make every
        list open K groups."""
        thr = self.values[start:start + len(minima), -1]
        active = (minima.amin(1) < thr).nonzero()[:, 0]
        if active.numel() == 0:
            return
        count = (minima[active] < thr[active, None]).sum(1)
        cap = min(self.K, minima.shape[1])
        lower = 0
        for m in sorted({min(2 ** i, cap) for i in range(cap.bit_length() + 1)}):
            local = active[(count > lower) & (count <= m)] if m < cap else active[count > lower]
            lower = m
            if local.numel():
                groups = minima[local].topk(m, dim=1, largest=False, sorted=False).indices      # [n, m]
                values, neighbours = gather(local, groups)
                self._merge(start + local, values, neighbours)

    def update_rows(self, D: torch.Tensor, row0: int, col0: int) -> None:
        """Lists of the points of ``D``'s rows (``row0..``) take candidates from its columns (``col0..``)."""
        bi, bj = D.shape
        ng = bj // GROUP
        G = D.view(bi, GROUP, ng)                     # group c = columns c, c + ng, c + 2 ng, ...
        step = torch.arange(GROUP, device=D.device) * ng

        def gather(lists, groups):
            n = len(lists)
            values = G[lists[:, None], :, groups].reshape(n, -1)                          # [n, m * GROUP]
            return values, col0 + (groups[:, :, None] + step).reshape(n, -1)

        self._open(row0, G.amin(1), gather)

    def update_columns(self, D: torch.Tensor, row0: int, col0: int, minima: torch.Tensor) -> None:
        """Lists of the points of ``D``'s columns (``col0..``) take candidates from its rows (``row0..``): the
        transposed half of a symmetric block, read without transposing it. ``minima``: the block's
        :func:`row_group_minima` ``[bi / GROUP, bj]``."""
        bi, bj = D.shape
        ng = bi // GROUP
        G = D.view(GROUP, ng, bj)                     # group r = rows r, r + ng, r + 2 ng, ...
        step = torch.arange(GROUP, device=D.device) * ng

        def gather(lists, groups):
            n = len(lists)
            values = G[:, groups, lists[:, None]].permute(1, 2, 0).reshape(n, -1)         # [n, m * GROUP]
            return values, row0 + (groups[:, :, None] + step).reshape(n, -1)

        self._open(col0, minima.T, gather)

    def update_both(self, D: torch.Tensor, row0: int, col0: int, minima: torch.Tensor) -> None:
        """A block above the diagonal of a symmetric search. One pass gives the row-group minima; they serve the
        columns' lists, and their minima over column groups (``GROUP x GROUP`` strided tiles) the rows' lists,
        which open only the tiles below the largest threshold of the tile's rows. A busy side (a cluster split
        between the two blocks: many groups below the thresholds) takes its entries below threshold straight from
        a comparison of the block instead (:meth:`_below`). ``minima``: :func:`row_group_minima` of ``D``
        (computed by the caller on every thread)."""
        bi, bj = D.shape
        ngr, ngc = bi // GROUP, bj // GROUP
        thr_cols = self.values[col0:col0 + bj, -1]
        if int((minima < thr_cols).sum()) > BUSY * bj:
            self._below(D, thr_cols, col0, row0, columns=True)
        else:
            self.update_columns(D, row0, col0, minima)
        thr = self.values[row0:row0 + bi, -1]
        tiles = minima.view(ngr, GROUP, ngc).amin(1)                             # [ngr, ngc]
        r, c = (tiles < thr.view(GROUP, ngr).amax(0)[:, None]).nonzero(as_tuple=True)
        if r.numel() == 0:
            return
        if r.numel() * GROUP * GROUP > BUSY * bi * GROUP:
            return self._below(D, thr, row0, col0, columns=False)
        step = torch.arange(GROUP, device=D.device)
        rows, cols = r[:, None] + step * ngr, c[:, None] + step * ngc                 # [n, GROUP] each
        values = D[rows[:, :, None], cols[:, None, :]]                                 # [n, GROUP, GROUP]
        keep = values < thr[rows][:, :, None]
        self._merge_triples(row0 + rows[:, :, None].expand_as(values)[keep],
                            col0 + cols[:, None, :].expand_as(values)[keep], values[keep])

    def _below(self, D: torch.Tensor, thr: torch.Tensor, list0: int, other0: int, columns: bool) -> None:
        """Every entry of ``D`` below its row's (``columns``: its column's) threshold, merged per list: grouped by
        list (``nonzero``'s row-major order for rows; one stable sort of the few hits for columns), then padded
        into one row per list of a ``[lists, most candidates]`` matrix."""
        if columns:
            others, lists = (D < thr[None, :]).nonzero(as_tuple=True)
            order = torch.argsort(lists, stable=True)
            others, lists = others[order], lists[order]
            values = D[others, lists]
        else:
            lists, others = (D < thr[:, None]).nonzero(as_tuple=True)
            values = D[lists, others]
        if lists.numel() == 0:
            return
        ids, counts = torch.unique_consecutive(lists, return_counts=True)
        row = torch.repeat_interleave(torch.arange(len(ids), device=D.device), counts)
        rank = torch.arange(len(lists), device=D.device) - (torch.cumsum(counts, 0) - counts)[row]
        padded_v = values.new_full((len(ids), int(counts.max())), float("inf"))
        padded_i = torch.full_like(padded_v, -1, dtype=torch.int64)
        padded_v[row, rank], padded_i[row, rank] = values, other0 + others
        self._merge(list0 + ids, padded_v, padded_i)


@contextlib.contextmanager
def _one_thread():
    """Run the block selection on one CPU thread: its many small ops gain nothing from a second thread and, on a
    busy host, each parallel region waits for a descheduled worker (measured: 4x slower with 2 threads at load
    average 10 on 2 cores). The GEMM and the one pass over the whole block (:func:`row_group_minima`) keep
    every thread (the pass on every thread: 1.07x faster at N = 100k on an idle 2-core host, the same graph)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _padded(A: torch.Tensor, n: int) -> torch.Tensor:
    return A if len(A) == n else torch.cat([A, A.new_zeros((n - len(A), A.shape[1]))])


def _mask(D: torch.Tensor, qs: int, rs: int, nq: int, nr: int, ex_t: torch.Tensor | None) -> None:
    """Block ``D`` (rows ``qs..``, columns ``rs..``) with excluded pairs and padding rows/columns set to +inf."""
    bi, bj = D.shape
    if ex_t is not None:
        e = ex_t[qs:qs + bi]
        rows, cols = torch.nonzero((e >= rs) & (e < rs + bj), as_tuple=True)
        D[rows, e[rows, cols] - rs] = float("inf")
    if qs + bi > nq:
        D[nq - qs:] = float("inf")
    if rs + bj > nr:
        D[:, nr - rs:] = float("inf")


def _candidates(Q, R, q_norm, r_norm, K, ex_t, chunk_size, ref_chunk_size, symmetric=False):
    """Approximate squared distances ``[nq, K]`` (ascending) and indices of each query's K nearest references by
    blocked GEMM with a threshold filter (:class:`_Lists`); excluded references never enter.

    One-sided: every ``[chunk_size, ref_chunk_size]`` block, rows updated. ``symmetric`` (query = reference,
    symmetric exclusions): only the blocks on and above the diagonal; the diagonal blocks seed every list (row
    top-k), each block above it updates both its rows and its columns, so each pair is computed once: half the
    GEMM work of the one-sided search."""
    nq, nr = Q.shape[0], R.shape[0]
    if symmetric:
        chunk_size = ref_chunk_size = _balanced(nq, chunk_size, multiple=GROUP)
    else:
        chunk_size = _balanced(nq, chunk_size, multiple=GROUP)
        ref_chunk_size = _balanced(nr, ref_chunk_size, multiple=GROUP)
    nq_pad, nr_pad = -(-nq // GROUP) * GROUP, -(-nr // GROUP) * GROUP
    Qa = _padded(_augmented(Q, q_norm, "query"), nq_pad)
    Ra = _padded(_augmented(R, r_norm, "reference"), nr_pad)
    if ex_t is not None and nq_pad > nq:
        ex_t = torch.cat([ex_t, ex_t.new_full((nq_pad - nq, ex_t.shape[1]), -1)])
    perm = None
    if symmetric and nq > 2 * chunk_size:
        perm = _cluster_order(Q, -(-nq // chunk_size))
        Qa, Ra = Qa[:nq][perm], Ra[:nq][perm]
        Qa, Ra = _padded(Qa, nq_pad), _padded(Ra, nq_pad)
        if ex_t is not None:
            where = torch.empty_like(perm)
            where[perm] = torch.arange(nq, device=perm.device)
            e = ex_t[:nq][perm]
            ex_t = torch.cat([torch.where(e >= 0, where[e.clamp_min(0)], e), ex_t[nq:]])
    lists = _Lists(nq_pad, K, Q.dtype, Q.device)
    buffer = torch.empty(min(chunk_size, nq_pad) * min(ref_chunk_size, nr_pad), dtype=Q.dtype, device=Q.device)
    q_starts, r_starts = range(0, nq_pad, chunk_size), range(0, nr_pad, ref_chunk_size)
    if symmetric:   # diagonal blocks first: they seed every list; then each block above the diagonal once
        pairs = [(qs, qs) for qs in q_starts] + [(qs, rs) for a, qs in enumerate(q_starts) for rs in r_starts[a + 1:]]
    else:
        pairs = [(qs, rs) for qs in q_starts for rs in r_starts]
    for qs, rs in pairs:
        bi, bj = min(chunk_size, nq_pad - qs), min(ref_chunk_size, nr_pad - rs)
        D = torch.mm(Qa[qs:qs + bi], Ra[rs:rs + bj].T, out=buffer[:bi * bj].view(bi, bj))
        with _one_thread():
            _mask(D, qs, rs, nq, nr, ex_t)
        if symmetric and qs != rs:
            minima = row_group_minima(D)      # one pass over the whole block: on every thread, like the GEMM
            with _one_thread():
                lists.update_both(D, qs, rs, minima)
        else:
            with _one_thread():
                lists.update_rows(D, qs, rs)
    values, indices = lists.values[:nq], lists.indices[:nq]
    if perm is not None:      # back to input order: row p of the lists is point perm[p], neighbour j is perm[j]
        values, indices = values[torch.argsort(perm)], perm[indices[torch.argsort(perm)]]
    return values, indices


def _cluster_order(X: torch.Tensor, n_clusters: int, iters: int = 4, seed: int = 0, step: int = 16384
                   ) -> torch.Tensor:
    """A permutation that puts nearby points next to each other: Lloyd's k-means (``iters`` rounds from
    ``n_clusters`` random points, ``seed``), points sorted by cluster. A block of consecutive points then holds
    most of its members' neighbours, so the diagonal blocks seed near-final candidate lists and most blocks
    above the diagonal have nothing below the thresholds. Speed only: the search stays exact whatever the order.
    Costs ``iters x N x n_clusters x d``, about ``n_clusters · iters / N`` of the search."""
    n = len(X)
    gen = torch.Generator().manual_seed(seed)
    centres = X[torch.randperm(n, generator=gen)[:n_clusters].to(X.device)].clone()

    def labels_of(c):
        c_sq = (c * c).sum(1)
        return torch.cat([(c_sq[None] - 2 * X[s:s + step] @ c.T).argmin(1) for s in range(0, n, step)])

    for _ in range(iters):
        labels = labels_of(centres)
        counts = torch.bincount(labels, minlength=len(centres)).to(X.dtype)
        sums = torch.zeros_like(centres).index_add_(0, labels, X)
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
    return torch.argsort(labels_of(centres), stable=True)


def _symmetric_exclusions(ex: np.ndarray | None, n: int) -> bool:
    """Whether ``j`` excluded for ``i`` implies ``i`` excluded for ``j`` (self, own caption: yes)."""
    if ex is None:
        return True
    rows = np.repeat(np.arange(n, dtype=np.int64), ex.shape[1])
    cols = ex.reshape(-1)
    valid = cols >= 0
    pairs, flipped = rows[valid] * n + cols[valid], cols[valid] * n + rows[valid]
    return np.array_equal(np.unique(pairs), np.unique(flipped))


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
        chunk_size: int = 1536, ref_chunk_size: int = 1536, device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32, refine: bool = True, margin: int = 8,
        symmetric: bool | None = None) -> Neighbours:
    """Exact kNN of every ``query`` row in ``reference`` (``None``: the query set itself).

    The data are centred on the reference mean (distances are translation invariant; the GEMM's rounding error
    scales with the norms). Blocked GEMM in ``dtype``: for a ``[chunk_size, ref_chunk_size]`` block (1,536 a side,
    9 MiB; blocks of 4,096 measured 1.3-1.4x slower at N = 100k on a 2-core Xeon with AMX, the same graph bit for
    bit: ``benchmarks/bench_detect.py --block-sides``), the squared distances ``||q||² + ||r||² - 2 q·r`` in one
    ``mm`` of augmented rows into a reused buffer; a running list of
    ``k + margin`` candidates per point, seeded by one block's ``topk`` and then fed only the entries below its
    current worst candidate (group minima over the block, then the few groups that beat it); peak extra memory
    is one block. ``symmetric`` (default: when the query set is the reference and the exclusions are symmetric,
    as ``"self"`` and own-caption exclusions are) computes each block above the diagonal once and updates both
    its rows and its columns: half the GEMM work. With
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
    if symmetric is None:
        symmetric = same and _symmetric_exclusions(ex, nq)
    elif symmetric and not (same and _symmetric_exclusions(ex, nq)):
        raise ValueError("symmetric=True needs the query set as reference and symmetric exclusions")
    approx, idx = _candidates(Q, R, q_norm, r_norm, K, ex_t, chunk_size, ref_chunk_size, symmetric)
    if not refine:
        sq = approx[:, :k].double().clamp_min(0)
        dist = (sq / 2 if metric == "cosine" else sq.sqrt()).cpu().numpy()
        return Neighbours(dist, idx[:, :k].cpu().numpy(), metric)
    dist, idx = _refined_rows(Q0, R0, approx, idx, metric, k)
    to_sq = (lambda d: 2 * d) if metric == "cosine" else (lambda d: d * d)
    slack = 1 + _refine_tolerance(Q0.dtype, Q0.shape[1])
    ok = _certified(approx[:, -1].double().cpu().numpy(), to_sq(dist[:, k - 1]) * slack, q_norm.cpu().numpy(),
                    _unit_roundoff(Q.dtype, Q.device), Q.shape[1] + 2)
    ok |= nr - _distinct_exclusions(ex, nq) <= K          # every allowed reference is a candidate
    redo = np.flatnonzero(~ok)
    if redo.size:
        rows = torch.from_numpy(redo).to(Q.device)
        d2, i2 = _exact_rows(Q0, R0, Q.index_select(0, rows).double(), R.double(), q_norm[rows], r_norm, k, K,
                             None if ex_t is None else ex_t[rows], metric, chunk_size, ref_chunk_size, rows)
        dist[redo], idx[redo] = d2, i2
    return Neighbours(dist[:, :k], idx[:, :k], metric, int(redo.size))


def _refined_rows(Q0, R0, approx, idx, metric, k: int, step: int = 4096):
    """Distances of the candidates from coordinate differences, sorted by (distance, index); excluded candidates
    (approximate +inf) stay +inf and sort last. Inputs below float64 are refined in their own precision, and
    rows whose k-th and (k+1)-th candidates lie within that precision of each other are refined again in
    float64, so the k nearest are the exact k nearest."""
    parts = [_refine(Q0[s:s + step], R0, idx[s:s + step], metric) for s in range(0, len(idx), step)]
    dist = np.concatenate(parts)
    empty = ~np.isfinite(approx.double().cpu().numpy())
    dist[empty] = np.inf
    idx_np = idx.cpu().numpy()
    tol = _refine_tolerance(Q0.dtype, Q0.shape[1])
    if tol and k < dist.shape[1]:
        part = np.sort(dist, 1)
        close = np.flatnonzero(part[:, k] * part[:, k] <= part[:, k - 1] ** 2 * (1 + 2 * tol) + 1e-300)
        if close.size:
            rows = torch.from_numpy(close).to(idx.device)
            redo = _refine(Q0.index_select(0, rows), R0, idx.index_select(0, rows), metric, torch.float64)
            dist[close] = np.where(empty[close], np.inf, redo)
    order = np.lexsort((idx_np, dist))  # row-wise: by distance, ties by index
    return np.take_along_axis(dist, order, 1), np.take_along_axis(idx_np, order, 1)


def _exact_rows(Q0, R0, Q64, R64, q_norm, r_norm, k, K, ex_t, metric, chunk_size, ref_chunk_size, rows):
    """The fallback for uncertified rows: the same search in float64 (certified with float64's roundoff), then
    plain differences over all references for whatever still fails."""
    approx, idx = _candidates(Q64, R64, q_norm, r_norm, K, ex_t, chunk_size, ref_chunk_size)
    Qr = Q0.index_select(0, rows)
    dist, idx = _refined_rows(Qr, R0, approx, idx, metric, k)
    to_sq = (lambda d: 2 * d) if metric == "cosine" else (lambda d: d * d)
    slack = 1 + _refine_tolerance(Q0.dtype, Q0.shape[1])
    ok = _certified(approx[:, -1].cpu().numpy(), to_sq(dist[:, k - 1]) * slack, q_norm.cpu().numpy(),
                    torch.finfo(torch.float64).eps / 2, Q64.shape[1] + 2)
    for i in np.flatnonzero(~ok):           # practically never: norms beyond ~1e7 x the neighbour distance
        all_idx = torch.arange(R0.shape[0], device=R0.device)[None]
        d = _refine(Qr[i:i + 1], R0, all_idx, metric, torch.float64)[0]
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
        dist, idx = _refined_rows(Q0, R0, torch.zeros(kept.shape), torch.from_numpy(kept), metric, k)
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
