"""Backdoor-sample detectors (detectors.md Sections 3-5), one sign convention: **higher = more suspicious**.

k convention (textbook, detectors.md Section 4): the reference set excludes the query itself (and, in joint space,
the query's own caption); ``r_i(q)`` is the distance to the i-th nearest reference point, ``N_k(q)`` the k nearest,
``k-dist(q) = r_k(q)``. ``query_radius="r_k+1"`` switches the *query's* radius to the released code's
``r_{k+1}``. ``released_quirks=True`` reproduces the released code of Huang et al. (ICLR 2025) exactly, bugs
included (Section 5), for the ablation.

Graph detectors take :class:`~clipguard.detect.knn.Neighbours`: ``query`` (queries vs references) and ``ref``
(references vs references, self excluded; defaults to ``query`` when the queries are the reference set). SLOF,
DAO and LID are written here because no installed library has them (PyOD has no SLOF/DAO/LID; sklearn has only LOF).

The entry point is :func:`score` (one detector) / :func:`score_many` (several detectors sharing one kNN graph).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .knn import Neighbours, knn, knn_approx

__all__ = ["k_distance", "lid_mle", "slof", "dao", "lof", "isolation_forest", "clip_score", "gmm_split",
           "abl_score", "lid_released", "dao_released", "slof_released", "k_distance_released", "released_graph",
           "score", "score_many", "matching_rows", "DETECTORS", "SPACES", "REFERENCES", "GmmSplit"]

#: Added to k-distances in density ratios (SLOF, DAO, LOF) so that more than k coincident points give large but
#: finite scores, as scikit-learn's LOF does (``1e-10``).
TINY = 1e-10
#: Floor of r_i / r_k inside the LID logarithm (guards log 0 for duplicates; has no effect otherwise).
LID_RATIO_FLOOR = 1e-12
#: ln of the largest float64: DAO's power form saturates there instead of overflowing.
LOG_FLOAT_MAX = float(np.log(np.finfo(np.float64).max))
SPACES = ("image", "text", "joint")
REFERENCES = ("global", "batch", "clean")


def _radius(nb: Neighbours, k: int, query_radius: str) -> np.ndarray:
    if query_radius == "r_k":
        return nb.distances[:, k - 1]
    if query_radius == "r_k+1":
        if nb.k < k + 1:
            raise ValueError(f"query_radius='r_k+1' needs a graph with k+1={k + 1} neighbours, got {nb.k}")
        return nb.distances[:, k]
    raise ValueError(f"query_radius must be 'r_k' or 'r_k+1', got {query_radius!r}")


def _k(nb: Neighbours, k: int | None) -> int:
    k = nb.k if k is None else k
    if k < 1 or k > nb.k:
        raise ValueError(f"k={k} but the graph has {nb.k} neighbours per point")
    return k


def k_distance(query: Neighbours, k: int | None = None, query_radius: str = "r_k") -> np.ndarray:
    """k-distance ``r_k(q)`` (Ramaswamy et al. 2000); ``query_radius="r_k+1"``: the released code's ``r_{k+1}``."""
    return _radius(query, _k(query, k), query_radius).astype(np.float64)


def lid_mle(query: Neighbours, k: int | None = None) -> np.ndarray:
    """LID maximum-likelihood estimate (Levina-Bickel; Amsaleg et al. 2015, detectors.md Section 3):
    ``LID = -[ (1/k) sum_{i=1..k} ln(r_i / r_k) ]^{-1}``. Ratios are floored at 1e-12 (log 0 of duplicates only);
    a point whose k neighbours all coincide with it (``r_k = 0``, a point mass) gets LID 0. Note: a tight group of
    duplicated poisons has *low* LID, so LID as an outlier score can be inverted (Section 5.4); the sign is fixed
    as LID itself (higher LID = more suspicious), as in the paper's tables."""
    k = _k(query, k)
    r = query.distances[:, :k]
    rk = r[:, -1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(rk > 0, r / np.where(rk > 0, rk, 1.0), 1.0)
    mean_log = np.log(np.maximum(ratio, LID_RATIO_FLOOR)).mean(1)
    lid = -1.0 / np.minimum(mean_log, -1e-12)
    return np.where(rk[:, 0] > 0, lid, 0.0)


def _ref(query: Neighbours, ref: Neighbours | None) -> Neighbours:
    return query if ref is None else ref


def slof(query: Neighbours, ref: Neighbours | None = None, k: int | None = None,
         query_radius: str = "r_k") -> np.ndarray:
    """Simplified LOF (Schubert, Zimek, Kriegel 2014): ``(1/k) sum_{o in N_k(q)} k-dist(q) / k-dist(o)``, with
    ``k-dist(o)`` from ``o``'s own neighbourhood in the reference set (``o`` excluded). ``TINY`` keeps it finite."""
    ref = _ref(query, ref)
    k = _k(query, k)
    kq = _radius(query, k, query_radius)
    ko = ref.distances[:, _k(ref, k) - 1][query.indices[:, :k]]
    return ((kq[:, None] + TINY) / (ko + TINY)).mean(1)


def dao(query: Neighbours, ref: Neighbours | None = None, k: int | None = None, query_radius: str = "r_k",
        form: str = "power") -> np.ndarray:
    """Dimensionality-aware outlier score (Anderberg et al., SDM 2024; detectors.md Section 3), the paper's power
    form ``(1/k) sum_{o in N_k(q)} (k-dist(q) / k-dist(o))^{LID(o)}`` with LID(o) from o's own neighbours (o
    excluded), evaluated as ``exp(logsumexp(LID(o)·ln ratio) - ln k)`` in fp64 (no overflow below e^709).
    ``form="log"``: the released code's aggregation ``(1/k) sum LID(o)·ln ratio`` (mean of logs; not monotone in
    the power form for k > 1)."""
    from scipy.special import logsumexp

    ref = _ref(query, ref)
    k = _k(query, k)
    kq = _radius(query, k, query_radius)
    nbr = query.indices[:, :k]
    ko = ref.distances[:, _k(ref, k) - 1][nbr]
    lid_o = lid_mle(ref, k)[nbr]
    terms = lid_o * (np.log(kq[:, None] + TINY) - np.log(ko + TINY))
    if form == "log":
        return terms.mean(1)
    if form != "power":
        raise ValueError(f"form must be 'power' or 'log', got {form!r}")
    # Saturate at the largest float64 rather than overflow to inf: a point whose neighbours are equidistant
    # duplicates (e.g. the copies of a targeted-poisoning image) has an unbounded LID MLE, so its power can exceed
    # e^709; such points tie at the top of the ranking.
    return np.exp(np.minimum(logsumexp(terms, axis=1) - np.log(k), LOG_FLOAT_MAX))


def lof(query: Neighbours, ref: Neighbours | None = None, k: int | None = None) -> np.ndarray:
    """Local outlier factor (Breunig et al. 2000) from the kNN graph, equal to scikit-learn's
    ``-LocalOutlierFactor(n_neighbors=k).negative_outlier_factor_`` (``score_samples`` negated for a separate
    reference set): ``reach(p, o) = max(k-dist(o), d(p, o))``, ``lrd(p) = 1 / (mean reach + 1e-10)`` (sklearn's
    guard for more than k duplicates), ``LOF(q) = mean_{o in N_k(q)} lrd(o) / lrd(q)``. Same k convention as
    sklearn: k neighbours with the point itself excluded by index, duplicates kept."""
    ref = _ref(query, ref)
    k = _k(query, k)
    kr = _k(ref, k)
    kdist_ref = ref.distances[:, kr - 1]

    def lrd(nb: Neighbours) -> np.ndarray:
        reach = np.maximum(nb.distances[:, :k], kdist_ref[nb.indices[:, :k]])
        return 1.0 / (reach.mean(1) + 1e-10)

    lrd_ref = lrd(ref) if ref is not query else None
    lrd_q = lrd(query)
    lrd_ref = lrd_q if lrd_ref is None else lrd_ref
    return (lrd_ref[query.indices[:, :k]] / lrd_q[:, None]).mean(1)


def _canonical_order(x: np.ndarray) -> np.ndarray:
    """Row order that depends only on the rows' values (lexicographic), so fitted models ignore input order."""
    return np.lexsort(x.T[::-1]) if x.ndim == 2 else np.argsort(x, kind="stable")


def isolation_forest(query: np.ndarray, reference: np.ndarray | None = None, seed: int = 0,
                     n_estimators: int = 100) -> np.ndarray:
    """Isolation Forest (Liu, Ting, Zhou 2008) via scikit-learn: ``-score_samples`` (= the anomaly score
    ``2^{-E[h]/c(psi)}``). Fitted on ``reference`` (default: the queries) put in canonical row order, so the
    forest, and hence the scores, do not depend on the input order (sklearn's subsampling is positional)."""
    from sklearn.ensemble import IsolationForest

    ref = query if reference is None else reference
    forest = IsolationForest(n_estimators=n_estimators, random_state=seed).fit(ref[_canonical_order(ref)])
    return -forest.score_samples(query)


def _cosine_pairs(image: np.ndarray, text: np.ndarray) -> np.ndarray:
    i = image / np.linalg.norm(image, axis=1, keepdims=True)
    t = text / np.linalg.norm(text, axis=1, keepdims=True)
    return (i * t).sum(1)


def clip_score(image: np.ndarray, text: np.ndarray) -> np.ndarray:
    """CLIPScore baseline (SafeCLIP-style): ``-cos(f_I(x), f_T(t))`` on L2-normalised embeddings."""
    return -_cosine_pairs(image, text)


@dataclass
class GmmSplit:
    """SafeCLIP's split (methods.md 4.2): ``p_clean`` = posterior of the higher-mean component of a 2-component
    1-D GMM on the pair cosines; ``score = -p_clean``; ``safe = p_clean >= threshold``."""

    score: np.ndarray
    p_clean: np.ndarray
    cosine: np.ndarray
    means: np.ndarray
    safe: np.ndarray
    threshold: float


def gmm_split(image: np.ndarray, text: np.ndarray, seed: int = 0, threshold: float = 0.9) -> GmmSplit:
    """2-component GaussianMixture (scikit-learn) on ``cos(f_I, f_T)``, fitted on the cosines in sorted order so
    that the fit does not depend on the input order."""
    from sklearn.mixture import GaussianMixture

    cos = _cosine_pairs(image, text)
    gmm = GaussianMixture(2, random_state=seed).fit(np.sort(cos)[:, None])
    clean = int(np.argmax(gmm.means_[:, 0]))
    p_clean = gmm.predict_proba(cos[:, None])[:, clean]
    return GmmSplit(-p_clean, p_clean, cos, gmm.means_[:, 0].copy(), p_clean >= threshold, threshold)


def abl_score(losses: np.ndarray, epochs: int = 10, epoch_numbers=None) -> np.ndarray:
    """Anti-Backdoor Learning loss tracking (Li et al., NeurIPS 2021): ``-(1/E) sum_{e=1..E} loss_e``, from a
    per-sample loss matrix ``[rows, N]`` (backdoor pairs are learned fast, so low early loss = suspicious).

    ``epoch_numbers``: the 1-based epoch number of each row (``per_sample.npz``'s ``epochs``); the score then
    averages the rows of epochs 1..E *by number*, whatever their order, and names the epochs it lacks (a resumed
    run may have lost some). ``None``: the first E rows are taken to be epochs 1..E."""
    losses = np.asarray(losses, dtype=np.float64)
    if losses.ndim != 2:
        raise ValueError(f"losses must be [epochs, N], got shape {losses.shape}")
    if not np.isfinite(losses).all():
        raise ValueError(f"losses hold NaN/inf (first bad sample: {int(np.flatnonzero(~np.isfinite(losses).all(0))[0])})")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if epoch_numbers is None:
        return -losses[:epochs].mean(0)
    numbers = np.asarray(epoch_numbers)
    if numbers.ndim != 1 or len(numbers) != len(losses):
        raise ValueError(f"epoch_numbers must give one epoch per loss row ({len(losses)}), got shape {numbers.shape}")
    if not np.issubdtype(numbers.dtype, np.integer):
        raise ValueError(f"epoch_numbers must be integers, got dtype {numbers.dtype}")
    values, counts = np.unique(numbers, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"epoch_numbers repeat epoch(s) {values[counts > 1].tolist()}")
    wanted = np.arange(1, epochs + 1)
    missing = np.setdiff1d(wanted, numbers)
    if missing.size:
        raise ValueError(f"ABL over epochs 1..{epochs} needs every one of them; the loss matrix lacks epoch(s) "
                         f"{missing.tolist()} (it has {numbers.tolist()})")
    rows = np.searchsorted(values, wanted)
    return -losses[np.argsort(numbers, kind="stable")[rows]].mean(0)


# --------------------------------------------------------------------------------------------------------------
# The released code (HanxunH/Detect-CLIP-Backdoor-Samples @ ff2399a), reproduced on a kNN graph
# --------------------------------------------------------------------------------------------------------------

@dataclass
class ReleasedGraph:
    """What the released detectors compute from one batch: ``a`` = the query's sorted self-removed distance row
    (first k+1 entries; joint: over [images | texts] with own image and own caption removed), ``rows`` = the
    *misaligned* neighbour row indices (positions in that self-removed row, used as rows of the full matrix,
    Section 5.1), ``full`` = sorted rows of the full reference matrix, self 0 kept (first k+1 entries)."""

    a: np.ndarray
    rows: np.ndarray
    full: np.ndarray


def released_graph(image: np.ndarray, text: np.ndarray | None, k: int, space: str = "image", **knn_options
                   ) -> ReleasedGraph:
    """Build the released code's view of one batch (queries = the batch) from exact kNN graphs."""
    n = len(image)
    if space == "joint":
        points = np.concatenate([image, text])
        partner = np.concatenate([np.arange(n, 2 * n), np.arange(n)])
        ex = np.stack([np.arange(2 * n), partner], 1)
        query = knn(points[:n], points, k + 1, exclude=ex[:n], **knn_options)
        j = query.indices
        # position of reference j in the concatenated self-removed row [d_v without i | d_t without i]
        i = np.arange(n)[:, None]
        rows = np.where(j < n, j - (j > i), (n - 1) + (j - n) - ((j - n) > i))
    else:
        points = image if space == "image" else text
        query = knn(points, None, k + 1, **knn_options)
        rows = query.indices - (query.indices > np.arange(n)[:, None])
    full_nb = knn(points, None, k, **knn_options)   # self excluded by index, own partner kept (as released)
    full = np.concatenate([np.zeros((len(points), 1)), full_nb.distances], 1)
    return ReleasedGraph(query.distances, rows[:, :k], full)


def _nan_to_num(x: np.ndarray) -> np.ndarray:
    return np.nan_to_num(x, nan=1000.0, posinf=1000.0, neginf=0.0)


def k_distance_released(g: ReleasedGraph, k: int) -> np.ndarray:
    """``a[:, k]`` = r_{k+1}."""
    return g.a[:, k].copy()


def lid_released(g: ReleasedGraph, k: int) -> np.ndarray:
    """``-k / sum_{i=1..k} ln(r_i / r_{k+1} + 1e-4)`` (``lid_detection.py``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return -k / np.log(g.a[:, :k] / g.a[:, k:k + 1] + 1e-4).sum(1)


def _full_lid_released(g: ReleasedGraph, k: int) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -k / np.log(g.full[:, :k] / g.full[:, k:k + 1] + 1e-4).sum(1)


def slof_released(g: ReleasedGraph, k: int) -> np.ndarray:
    """``mean(a[:, k] / full[rows, k])`` with the misaligned rows, NaN/inf -> 1000 (``slof.py``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return _nan_to_num((g.a[:, k:k + 1] / g.full[g.rows, k]).mean(1))


def dao_released(g: ReleasedGraph, k: int) -> np.ndarray:
    """``mean(LID_full[rows] · ln(a[:, k] / full[rows, k]))``, LID keeping the self-distance and +1e-4 (``dao.py``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        lid_o = _full_lid_released(g, k)[g.rows]
        return _nan_to_num((lid_o * np.log(g.a[:, k:k + 1] / g.full[g.rows, k])).mean(1))


# --------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Detector:
    name: str
    kind: str            # "graph" | "graph_ref" (needs neighbours' graph) | "features" | "pair" | "loss" | "model"
    description: str


DETECTORS: dict[str, Detector] = {d.name: d for d in [
    Detector("k_distance", "graph", "r_k(q), kNN outlier score"),
    Detector("lid", "graph", "LID MLE of the query"),
    Detector("slof", "graph_ref", "simplified LOF, density ratio"),
    Detector("dao", "graph_ref", "dimensionality-aware outlier score (power form)"),
    Detector("lof", "graph_ref", "local outlier factor = sklearn LocalOutlierFactor"),
    Detector("isolation_forest", "features", "sklearn IsolationForest, -score_samples"),
    Detector("clip_score", "pair", "-cos(image, caption)"),
    Detector("gmm", "pair", "-p_clean of SafeCLIP's 2-component GMM on cos(image, caption)"),
    Detector("abl", "loss", "-mean loss over the first E epochs"),
    Detector("cognitive_distillation", "model", "-||m||_1 of Cognitive Distillation's mask (needs model, images)"),
]}
_RELEASED = {"k_distance": k_distance_released, "lid": lid_released, "slof": slof_released, "dao": dao_released}


def _validate(name: str, x, label: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{label} must be a 2-D [N, D] matrix, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    finite = np.isfinite(x).all(1)
    if not finite.all():
        raise ValueError(f"{label} holds NaN or inf at row {int(np.flatnonzero(~finite)[0])}")
    return x


def _normalise(x: np.ndarray | None) -> np.ndarray | None:
    if x is None:
        return None
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    if (norm == 0).any():
        raise ValueError(f"cannot L2-normalise a zero row (row {int(np.flatnonzero(norm[:, 0] == 0)[0])})")
    return x / norm


def matching_rows(query: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """For each ``query`` row, the index of a reference row with exactly the same values (``-1`` if none): how
    ``reference="clean"`` finds queries that are themselves in the clean set. Rows are compared by the bytes of
    their float64 values (``-0.0`` counted as ``0.0``) through a hash, and hits are checked value by value."""
    import hashlib

    def keys(x: np.ndarray) -> list[bytes]:
        x = np.ascontiguousarray(np.asarray(x, dtype=np.float64) + 0.0)
        return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in x]

    where: dict[bytes, int] = {}
    for j, key in enumerate(keys(reference)):
        where.setdefault(key, j)
    found = np.array([where.get(key, -1) for key in keys(query)], dtype=np.int64)
    hit = found >= 0
    same = np.array_equal(np.asarray(query, np.float64)[hit], np.asarray(reference, np.float64)[found[hit]])
    if hit.any() and not same:
        raise RuntimeError("row hash collision between query and reference rows")
    return found


def _clean_exclusions(clean_index, queries: np.ndarray, references: np.ndarray) -> np.ndarray:
    """``[N]`` index of each query in the clean reference set (``-1``: not in it), from ``clean_index``."""
    if clean_index is None:
        return np.full(len(queries), -1, dtype=np.int64)
    if isinstance(clean_index, str):
        if clean_index != "auto":
            raise ValueError(f"clean_index must be 'auto', None or an index array, got {clean_index!r}")
        return matching_rows(queries, references)
    index = np.asarray(clean_index)
    if index.shape != (len(queries),) or not np.issubdtype(index.dtype, np.integer):
        raise ValueError(f"clean_index must hold one integer per query ({len(queries)}), got {index.dtype} "
                         f"of shape {index.shape}")
    if index.size and (index.min() < -1 or index.max() >= len(references)):
        bad = int(np.flatnonzero((index < -1) | (index >= len(references)))[0])
        raise ValueError(f"clean_index[{bad}] = {index[bad]} is not -1 or an index into the {len(references)} "
                         f"clean points")
    return index.astype(np.int64)


def _blocks(n: int, reference: str, batch_size: int | None, seed: int, minimum: int) -> list[np.ndarray]:
    if reference != "batch":
        return [np.arange(n)]
    if batch_size is None or batch_size < minimum:
        raise ValueError(f"reference='batch' needs batch_size >= {minimum}, got {batch_size}")
    order = np.random.default_rng(seed).permutation(n)
    blocks = [order[s:s + batch_size] for s in range(0, n, batch_size)]
    if len(blocks) > 1 and len(blocks[-1]) < minimum:   # a tail too small to score joins the previous batch
        tail = blocks.pop()
        blocks[-1] = np.concatenate([blocks[-1], tail])
    return blocks


def score_many(names, image_emb=None, text_emb=None, k: int = 16, *, space: str = "image",
               reference: str = "global", batch_size: int | None = None, clean_image=None, clean_text=None,
               normalize: bool = False, metric: str = "euclidean", seed: int = 0, query_radius: str = "r_k",
               released_quirks: bool = False, approximate: str | None = None, losses=None, abl_epochs: int = 10,
               loss_epochs=None, clean_index="auto", model=None, images=None, cd_options: dict | None = None,
               knn_options: dict | None = None) -> dict[str, np.ndarray]:
    """Scores ``[N]`` (higher = more suspicious) of several detectors; graph detectors share one kNN graph per
    reference block.

    * ``space``: ``"image"`` (image queries vs image references), ``"text"``, or ``"joint"`` (image queries vs
      image ∪ caption references, the query's own caption excluded; neighbours' own statistics likewise exclude
      their own pair partner). Pair detectors (``clip_score``, ``gmm``) use both and ignore ``space``/``reference``.
    * ``reference``: ``"global"`` (all N samples), ``"batch"`` (shuffled with ``seed`` into batches of
      ``batch_size``; each sample scored once against its own batch, as the released code), or ``"clean"``
      (queries scored against ``clean_image`` [and ``clean_text``]). A query that is itself in the clean set is
      excluded from its own reference, as in the other modes: ``clean_index`` gives each query's index in the clean
      set (``-1``: not in it); ``"auto"`` (default) finds it as the clean point with exactly the query's values
      (image row, text row or both, by ``space``; so an exact duplicate of a query that is not the query is
      excluded too); ``None`` excludes nothing.
    * ``normalize``: L2-normalise embeddings first (the released code uses un-normalised encoder outputs).
    * ``released_quirks``: the released code's k_distance/lid/slof/dao (Section 5; self-referencing modes only).
    * ``approximate``: ``None`` (exact :func:`knn`) or ``"hnsw"`` / ``"ivf"`` (:func:`knn_approx`).
    * ``losses`` ``[rows, N]``, ``loss_epochs`` (1-based epoch number of each row), ``abl_epochs``: :func:`abl_score`.
    * ``model`` (with ``encode_image``), ``images`` ``[N, C, H, W]`` and ``cd_options`` (fields of
      :class:`~clipguard.detect.cognitive_distillation.CognitiveDistillation`; ``seed`` defaults to ``seed``):
      ``cognitive_distillation``, which ignores the embeddings, ``space`` and ``reference``.
    """
    names = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in DETECTORS]
    if unknown:
        raise ValueError(f"unknown detector(s) {unknown}; registered: {sorted(DETECTORS)}")
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    out: dict[str, np.ndarray] = {}
    if "abl" in names:
        if losses is None:
            raise ValueError("detector 'abl' needs losses=[epochs, N] per-sample losses")
        out["abl"] = abl_score(losses, abl_epochs, loss_epochs)
    if "cognitive_distillation" in names:
        if model is None or images is None:
            raise ValueError("detector 'cognitive_distillation' needs model= (with encode_image) and images=")
        if image_emb is not None and len(images) != len(image_emb):
            raise ValueError(f"images cover {len(images)} samples, embeddings {len(image_emb)}")
        from .cognitive_distillation import cognitive_distillation

        cd = cognitive_distillation(model, images, **{"seed": seed, **(cd_options or {})})
        out["cognitive_distillation"] = cd.score
    rest = [n for n in names if n not in ("abl", "cognitive_distillation")]
    if not rest:
        return {nm: out[nm] for nm in names}
    image = _validate("", image_emb, "image_emb")
    needs_text = space in ("text", "joint") or any(DETECTORS[n].kind == "pair" for n in rest)
    text = None
    if text_emb is not None or needs_text:
        if text_emb is None:
            raise ValueError(f"space={space!r} / detectors {rest} need text_emb")
        text = _validate("", text_emb, "text_emb")
        if text.shape != image.shape:
            raise ValueError(f"image_emb {image.shape} and text_emb {text.shape} must have the same shape")
    if losses is not None and np.asarray(losses).shape[-1] != len(image):
        raise ValueError(f"losses cover {np.asarray(losses).shape[-1]} samples, embeddings {len(image)}")
    n = len(image)
    for name in rest:
        if DETECTORS[name].kind == "pair":
            out[name] = clip_score(image, text) if name == "clip_score" else gmm_split(image, text, seed).score
    local = [nm for nm in rest if DETECTORS[nm].kind != "pair"]
    if not local:
        return {nm: out[nm] for nm in names}
    if released_quirks and reference == "clean":
        raise ValueError("released_quirks reproduces the in-batch code; it has no clean-reference mode")
    if released_quirks and any(nm not in _RELEASED for nm in local):
        raise ValueError(f"released_quirks exists for {sorted(_RELEASED)}, not {[nm for nm in local if nm not in _RELEASED]}")
    if normalize:
        image, text = _normalise(image), _normalise(text)
    if space == "text":
        image, text = text, None   # text queries vs text references: same code path as image-only
        q_space = "image"
    else:
        q_space = space
    extra = 1 if (released_quirks or query_radius == "r_k+1") else 0
    need = k + 1 + extra   # points in a self-referencing block: the query + k (+1) neighbours
    if reference == "clean":
        ref_img = _validate("", clean_image, "clean_image") if clean_image is not None else None
        if ref_img is None:
            raise ValueError("reference='clean' needs clean_image (and clean_text for space='joint')")
        ref_txt = None
        if q_space == "joint":
            if clean_text is None:
                raise ValueError("reference='clean' with space='joint' needs clean_text")
            ref_txt = _validate("", clean_text, "clean_text")
            if ref_txt.shape != ref_img.shape:
                raise ValueError(f"clean_image {ref_img.shape} and clean_text {ref_txt.shape} differ in shape")
        if space == "text":
            ref_img = _validate("", clean_text, "clean_text") if clean_text is not None else None
            if ref_img is None:
                raise ValueError("reference='clean' with space='text' needs clean_text")
        if ref_img.shape[1] != image.shape[1]:
            raise ValueError(f"clean reference dimension {ref_img.shape[1]} != embedding dimension {image.shape[1]}")
        if normalize:
            ref_img, ref_txt = _normalise(ref_img), _normalise(ref_txt)
        if len(ref_img) < k + 1:
            raise ValueError(f"the clean reference set has {len(ref_img)} points; need at least k+1={k + 1}")
        if q_space == "joint":
            own_clean = _clean_exclusions(clean_index, np.concatenate([image, text], 1),
                                          np.concatenate([ref_img, ref_txt], 1))
        else:
            own_clean = _clean_exclusions(clean_index, image, ref_img)
    elif n < need:
        raise ValueError(f"{n} points but k={k} needs at least {need} (the query plus {need - 1} neighbours)")
    scores = {nm: np.empty(n) for nm in local}
    opts = dict(knn_options or {})
    for block in _blocks(n, reference, batch_size, seed, need):
        img_b = image[block]
        txt_b = text[block] if text is not None else None
        if released_quirks:
            g = released_graph(img_b, txt_b, k, q_space, metric=metric, **opts)
            for nm in local:
                scores[nm][block] = _RELEASED[nm](g, k)
            continue
        feats = [nm for nm in local if DETECTORS[nm].kind == "features"]
        for nm in feats:
            q_feat = img_b if q_space != "joint" else np.concatenate([img_b, txt_b], 1)
            r_feat = None
            if reference == "clean":
                r_feat = ref_img if q_space != "joint" else np.concatenate([ref_img, ref_txt], 1)
            scores[nm][block] = isolation_forest(q_feat, r_feat, seed=seed)
        graph_names = [nm for nm in local if DETECTORS[nm].kind.startswith("graph")]
        if not graph_names:
            continue
        kk = k + extra
        search = (lambda q, r, kq, ex: knn(q, r, kq, metric=metric, exclude=ex, **opts)) if approximate is None \
            else (lambda q, r, kq, ex: knn_approx(q, r, kq, metric=metric, exclude=ex, method=approximate, seed=seed,
                                                  **opts))
        needs_ref = any(DETECTORS[nm].kind == "graph_ref" for nm in graph_names)
        if reference == "clean":
            if q_space == "joint":
                refs = np.concatenate([ref_img, ref_txt])
                m = len(ref_img)
                ex_ref = np.stack([np.arange(2 * m), np.concatenate([np.arange(m, 2 * m), np.arange(m)])], 1)
                own = own_clean[block]
                ex_query = np.stack([own, np.where(own >= 0, own + m, -1)], 1)   # own image and own caption
            else:
                refs, ex_ref = ref_img, "self"
                ex_query = own_clean[block][:, None]
            query_nb = search(img_b, refs, kk, ex_query)
            ref_nb = search(refs, refs, k, ex_ref) if needs_ref else None
        elif q_space == "joint":
            m = len(img_b)
            pts = np.concatenate([img_b, txt_b])
            ex = np.stack([np.arange(2 * m), np.concatenate([np.arange(m, 2 * m), np.arange(m)])], 1)
            if needs_ref:
                ref_nb = search(pts, pts, kk, ex)
                query_nb = ref_nb.take(slice(0, m))
            else:
                ref_nb = None
                query_nb = search(img_b, pts, kk, ex[:m])
        else:
            query_nb = search(img_b, None, kk, "self")
            ref_nb = query_nb
        for nm in graph_names:
            if nm == "k_distance":
                s = k_distance(query_nb, k, query_radius)
            elif nm == "lid":
                s = lid_mle(query_nb, k)
            elif nm == "slof":
                s = slof(query_nb, ref_nb, k, query_radius)
            elif nm == "dao":
                s = dao(query_nb, ref_nb, k, query_radius)
            else:
                if query_radius != "r_k":
                    raise ValueError("lof has no query_radius switch (sklearn's convention is r_k)")
                s = lof(query_nb, ref_nb, k)
            scores[nm][block] = s
    out.update(scores)
    return {nm: out[nm] for nm in names}


def score(name: str, image_emb=None, text_emb=None, k: int = 16, **options) -> np.ndarray:
    """Scores ``[N]`` of one detector (higher = more suspicious); see :func:`score_many` for the options."""
    return score_many([name], image_emb, text_emb, k, **options)[name]
