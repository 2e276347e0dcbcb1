"""Known-answer tests for clipguard.detect: kNN vs scikit-learn, LOF vs scikit-learn, the released code's
quirks, sign and permutation conventions, metrics vs scikit-learn, input validation."""

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from sklearn.neighbors import LocalOutlierFactor, NearestNeighbors

from clipguard.detect import knn, knn_approx, metrics, neighbour_recall, score, score_many
from clipguard.detect import scores as S

GRAPH = ["k_distance", "lid", "slof", "dao", "lof"]
ALL_EMBEDDING = GRAPH + ["isolation_forest", "clip_score", "gmm"]


def _data(n=300, d=6, seed=0, duplicates=True):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(size=(n // 2, d)), 0.3 * rng.normal(size=(n - n // 2, d)) + 3]).astype(np.float32)
    if duplicates:
        x[7] = x[3]
        x[8] = x[3]      # a triple of identical points
        x[50] = x[40]
    return x.astype(np.float64)    # fp64 rows: the search runs in fp32, the refined distances in fp64


def _planted(seed=0, n=400, d=8, n_out=4):
    """Gaussian clusters of different spreads plus a few far, isolated points (labels 1)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=6, size=(4, d))
    spreads = [0.3, 0.6, 1.0, 1.5]
    x = np.concatenate([c + s * rng.normal(size=(n // 4, d)) for c, s in zip(centres, spreads)])
    outliers = rng.normal(scale=6, size=(n_out, d)) * 3
    x = np.concatenate([x, outliers]).astype(np.float32)
    y = np.r_[np.zeros(n), np.ones(n_out)].astype(int)
    return x, y


def _same_sets(a, b, dist=None):
    """Same neighbour sets per row; with ``dist``, members tied at the k-th distance may differ (either is exact)."""
    for i, (r, s) in enumerate(zip(a.tolist(), b.tolist())):
        if dist is None:
            if set(r) != set(s):
                return False
            continue
        inner = dist[i] < dist[i, -1] - 1e-9
        if set(np.array(r)[inner]) != set(np.array(s)[inner]):
            return False
    return True


def _true_distances(x, q_idx, idx, metric="euclidean"):
    x = x.astype(np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        return 1 - (x[q_idx][:, None] * x[idx]).sum(-1)
    return np.linalg.norm(x[q_idx][:, None] - x[idx], axis=-1)


# ------------------------------------------------------------------ kNN

@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_knn_matches_sklearn_with_small_chunks_and_duplicates(metric):
    x = _data()
    nb = knn(x, k=5, metric=metric, chunk_size=37, ref_chunk_size=50)
    dist, idx = NearestNeighbors(n_neighbors=5, metric=metric, algorithm="brute").fit(x.astype(np.float64)).kneighbors()
    np.testing.assert_allclose(nb.distances, dist, atol=1e-6)
    assert _same_sets(nb.indices, idx, dist)             # tie order among duplicates may differ
    np.testing.assert_allclose(_true_distances(x, np.arange(len(x)), nb.indices, metric), nb.distances, atol=1e-9)
    assert (np.diff(nb.distances, axis=1) >= 0).all()
    assert (nb.indices != np.arange(len(x))[:, None]).all()    # self excluded by index
    # a duplicate of a point is a neighbour at distance exactly 0
    assert set(nb.indices[3, :2]) == {7, 8} and (nb.distances[3, :2] == 0).all()


def test_knn_separate_reference_and_explicit_exclusions():
    x = _data(duplicates=False)
    q, r = x[:40], x[40:]
    nb = knn(q, r, k=4, ref_chunk_size=64)
    dist, idx = NearestNeighbors(n_neighbors=4, algorithm="brute").fit(r.astype(np.float64)).kneighbors(q.astype(np.float64))
    np.testing.assert_allclose(nb.distances, dist, atol=1e-6)
    np.testing.assert_array_equal(nb.indices, idx)
    # excluding each query's true nearest neighbour shifts the list by one
    nb2 = knn(q, r, k=3, exclude=idx[:, :1])
    np.testing.assert_array_equal(nb2.indices, idx[:, 1:4])


def test_knn_unrefined_and_fp32_inputs_are_close():
    x = _data(duplicates=False)
    exact = knn(x, k=5)
    np.testing.assert_allclose(knn(x, k=5, refine=False).distances, exact.distances, atol=1e-4)
    fp32 = knn(x.astype(np.float32), k=5)
    np.testing.assert_allclose(fp32.distances, exact.distances, rtol=1e-6)
    np.testing.assert_array_equal(fp32.indices, exact.indices)


def _cdist_knn(x, k, exclude_self=True):
    """Brute-force reference: float64 distances from coordinate differences (no GEMM expansion)."""
    t = torch.from_numpy(np.asarray(x, dtype=np.float64))
    d = torch.cdist(t, t, compute_mode="donot_use_mm_for_euclid_dist")
    if exclude_self:
        d.fill_diagonal_(float("inf"))
    return d.topk(k, largest=False).indices.numpy(), d.numpy()


def _recall(found, truth):
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found.tolist(), truth.tolist())]))


@pytest.mark.parametrize("offset", [100.0, 1000.0])
def test_knn_exact_far_from_the_origin(offset):
    """Regression: candidates picked in fp32 with ||q||² + ||r||² - 2 q·r missed true neighbours when the vectors
    are long compared with their neighbour distances (recall@17 0.9996 at norm/r_k ≈ 11, 0.980 at ≈ 110 here)."""
    rng = np.random.default_rng(0)
    direction = rng.normal(size=64)
    x = (rng.normal(size=(1500, 64)) + offset * direction / np.linalg.norm(direction)).astype(np.float32)
    truth, d = _cdist_knn(x, 17)
    assert np.linalg.norm(x, axis=1).mean() / np.sort(d, 1)[:, 16].mean() > offset / 10   # the hard regime
    nb = knn(x, k=17, chunk_size=512, ref_chunk_size=512)
    assert _recall(nb.indices, truth) == 1.0
    np.testing.assert_allclose(nb.distances, np.take_along_axis(d, nb.indices, 1), rtol=1e-6)   # fp32 rows


@pytest.mark.parametrize("separation, dtype", [(1e4, np.float32), (1e9, np.float64)])
def test_knn_certificate_falls_back_when_centring_is_not_enough(separation, dtype):
    """Two tight clusters far apart: centred norms stay ~separation x the neighbour distance, fp32 (and at 1e9 even
    fp64) candidates cannot be certified, and the fallback still returns the exact neighbours."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 8))
    x[:150, 0] += separation
    x[150:, 0] -= separation
    x = x.astype(dtype)
    truth, _ = _cdist_knn(x, 5)
    nb = knn(x, k=5)
    assert nb.fallback_rows == len(x)
    assert _recall(nb.indices, truth) == 1.0
    # a separate reference set with exclusions takes the same fallback
    ex = truth[:40, :1]
    sub = knn(x[:40], x, k=4, exclude=np.c_[np.arange(40), ex[:, 0]])
    assert _recall(sub.indices, truth[:40, 1:5]) == 1.0


@pytest.mark.parametrize("exclude", ["self", "partner"])
def test_symmetric_search_equals_one_sided_and_cdist(exclude):
    """The symmetric search (upper-triangle blocks, rows and columns updated) finds exactly the neighbours of the
    one-sided search and of float64 torch.cdist; 1,204 points (not a multiple of the block or group size) in
    blocks of 256 exercise the cluster ordering, padding, and the threshold filter's three outcomes (nothing
    below the thresholds, a few groups or tiles opened, a busy side compared entry by entry)."""
    x, _ = _planted(n=1200, d=12)
    x[7] = x[3]
    x[8] = x[3]                                              # a triple of identical points
    n = len(x)
    ex = "self" if exclude == "self" else np.stack([np.arange(n), np.arange(n) ^ 1], 1)   # own caption-like pairs
    sym = knn(x, k=7, exclude=ex, chunk_size=256, symmetric=True)
    one = knn(x, k=7, exclude=ex, chunk_size=256, ref_chunk_size=200, symmetric=False)
    np.testing.assert_array_equal(sym.indices, one.indices)
    np.testing.assert_array_equal(sym.distances, one.distances)
    _, d = _cdist_knn(x, 7)
    if exclude == "partner":
        d[np.arange(n), np.arange(n) ^ 1] = np.inf
    truth = np.argsort(d, 1, kind="stable")[:, :7]
    assert _same_sets(sym.indices, truth, np.take_along_axis(d, truth, 1))
    assert _recall(sym.indices[9:], truth[9:]) == 1.0       # rows without ties at the k-th distance
    np.testing.assert_allclose(sym.distances, np.take_along_axis(d, truth, 1), rtol=1e-6)
    assert (sym.distances[3, :2] == 0).all()
    # asymmetric exclusions cannot use the symmetric search
    one_way = np.stack([np.arange(n), (np.arange(n) + 1) % n], 1)
    with pytest.raises(ValueError, match="symmetric"):
        knn(x, k=3, exclude=one_way, symmetric=True)
    auto = knn(x, k=3, exclude=one_way, chunk_size=256)
    d[:] = _cdist_knn(x, 3)[1]
    d[np.arange(n), (np.arange(n) + 1) % n] = np.inf
    assert _same_sets(auto.indices, np.argsort(d, 1, kind="stable")[:, :3], np.sort(d, 1)[:, :3])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_knn_cuda_matches_cpu():
    x = _data()
    cpu = knn(x, k=5, chunk_size=64, ref_chunk_size=100)
    gpu = knn(x, k=5, chunk_size=64, ref_chunk_size=100, device="cuda")
    np.testing.assert_allclose(gpu.distances, cpu.distances, atol=1e-9)
    assert _same_sets(gpu.indices, cpu.indices, cpu.distances)


def test_faiss_recall_on_clustered_data():
    x, _ = _planted(n=2000, d=16)
    exact = knn(x, k=10)
    for method in ("hnsw", "ivf"):
        approx = knn_approx(x, k=10, method=method)
        assert neighbour_recall(approx.indices, exact.indices) >= 0.97, method
        assert (approx.indices != np.arange(len(x))[:, None]).all()
        assert (np.diff(approx.distances, axis=1) >= 0).all()
    assert neighbour_recall(exact.indices, exact.indices) == 1.0
    assert neighbour_recall(exact.indices[:, ::-1], exact.indices) == 1.0
    assert neighbour_recall(np.zeros_like(exact.indices[:3]) - 1, exact.indices[:3]) == 0.0


# ------------------------------------------------------------------ detectors

@pytest.mark.filterwarnings("ignore:Duplicate values are leading:UserWarning")   # sklearn's, on purpose
def test_lof_equals_sklearn_including_duplicates():
    x = _data()
    for k in (5, 10):
        ref = LocalOutlierFactor(n_neighbors=k, algorithm="brute").fit(x.astype(np.float64))
        np.testing.assert_allclose(score("lof", x, k=k), -ref.negative_outlier_factor_, rtol=1e-9)
    # more coincident points than k: sklearn's 1e-10 guard, reproduced
    y = np.concatenate([np.repeat(x[:1], 8, 0), x[1:100]])
    ref = LocalOutlierFactor(n_neighbors=5, algorithm="brute").fit(y.astype(np.float64))
    np.testing.assert_allclose(score("lof", y, k=5), -ref.negative_outlier_factor_, rtol=1e-6)


def test_lof_clean_reference_equals_sklearn_novelty():
    x = _data(duplicates=False)
    ref = LocalOutlierFactor(n_neighbors=7, novelty=True, algorithm="brute").fit(x[:200].astype(np.float64))
    ours = score("lof", x[200:], k=7, reference="clean", clean_image=x[:200])
    np.testing.assert_allclose(ours, -ref.score_samples(x[200:].astype(np.float64)), rtol=1e-9)


@pytest.mark.parametrize("space", ["image", "joint"])
def test_clean_reference_excludes_the_query_itself(space):
    """Regression: with reference="clean" a query that is in the clean set found itself at distance 0. Planted
    case: isolated outliers that are also in the clean set must still rank first; with the clean set = the whole
    data, clean mode equals global mode exactly."""
    x, y = _planted()
    t = x + 0.05 * np.random.default_rng(1).normal(size=x.shape).astype(np.float32)
    names = ["k_distance", "lid", "slof", "dao", "lof"]
    clean = score_many(names, x, t, k=8, space=space, reference="clean", clean_image=x, clean_text=t)
    glob = score_many(names, x, t, k=8, space=space)
    for name in names:
        np.testing.assert_allclose(clean[name], glob[name], rtol=1e-12, err_msg=name)
    assert metrics.auroc(y, clean["k_distance"]) == 1.0
    # explicit indices (clean set in another order) give the same; excluding nothing is the old, wrong answer
    perm = np.random.default_rng(2).permutation(len(x))
    where = np.argsort(perm)                      # query i sits at row where[i] of the permuted clean set
    explicit = score("k_distance", x, t, k=1, space=space, reference="clean", clean_image=x[perm],
                     clean_text=t[perm], clean_index=where)
    np.testing.assert_allclose(explicit, score("k_distance", x, t, k=1, space=space))
    unexcluded = score("k_distance", x, t, k=1, space=space, reference="clean", clean_image=x, clean_text=t,
                       clean_index=None)
    assert (unexcluded == 0).all()                # each query's nearest clean point is itself
    # queries outside the clean set are untouched: the last 100 scored against the first 300
    part = score("k_distance", x, t, k=3, space=space, reference="clean", clean_image=x[:300], clean_text=t[:300])
    ref = np.concatenate([x[:300], t[:300]]) if space == "joint" else x[:300]
    d = np.linalg.norm(x[:, None].astype(np.float64) - ref[None].astype(np.float64), axis=-1)
    inside = np.arange(300)
    d[inside, inside] = np.inf
    if space == "joint":
        d[inside, inside + 300] = np.inf          # its own caption
    np.testing.assert_allclose(part, np.sort(d, 1)[:, 2], rtol=1e-6)   # fp32 rows: fp32 differences
    with pytest.raises(ValueError, match="clean_index"):
        score("k_distance", x, k=3, reference="clean", clean_image=x[:300], clean_index=np.zeros(3, int))


def test_matching_rows():
    a = np.array([[0.0, 1.0], [2.0, 3.0], [-0.0, 1.0]])
    b = np.array([[2.0, 3.0], [0.0, 1.0], [5.0, 5.0]], dtype=np.float32)
    np.testing.assert_array_equal(S.matching_rows(a, b), [1, 0, 1])
    np.testing.assert_array_equal(S.matching_rows(b, a), [1, 0, -1])


def test_textbook_formulas_on_hand_graph():
    # one query with neighbours at distances 1, 2, 4 (k = 3); neighbours' k-distances 2, 2, 8
    from clipguard.detect.knn import Neighbours

    q = Neighbours(np.array([[1.0, 2.0, 4.0]]), np.array([[0, 1, 2]]))
    ref = Neighbours(np.array([[1.0, 1.0, 2.0], [1.0, 2.0, 2.0], [2.0, 4.0, 8.0]]), np.array([[1, 2, 0]] * 3))
    assert S.k_distance(q)[0] == 4.0
    lid = -1 / np.mean(np.log([0.25, 0.5, 1.0]))
    np.testing.assert_allclose(S.lid_mle(q)[0], lid)
    np.testing.assert_allclose(S.slof(q, ref)[0], np.mean([4 / 2, 4 / 2, 4 / 8]), rtol=1e-9)
    lids = S.lid_mle(ref)
    np.testing.assert_allclose(S.dao(q, ref)[0], np.mean([2 ** lids[0], 2 ** lids[1], 0.5 ** lids[2]]), rtol=1e-9)
    np.testing.assert_allclose(S.dao(q, ref, form="log")[0],
                               np.mean([lids[0] * np.log(2), lids[1] * np.log(2), lids[2] * np.log(0.5)]), rtol=1e-9)
    # a point mass (all k neighbours at distance 0) has LID 0
    assert S.lid_mle(Neighbours(np.zeros((1, 3)), np.zeros((1, 3), int)))[0] == 0.0


def test_dao_stays_finite_next_to_equidistant_duplicates():
    # the targeted attack's copies of one image: the point at 1 has the 8 copies as neighbours, all at one distance,
    # so its LID MLE is unbounded; the point at 2 has it as a neighbour at ratio 2, raised to that power. Its score
    # saturates at the largest float (it ties at the top of a ranking) instead of overflowing to inf.
    copies = np.zeros((8, 4))
    clean = np.array([[1.0, 0, 0, 0], [2.0, 0, 0, 0], [0, 5.0, 0, 0]])
    x = torch.as_tensor(np.r_[copies, clean], dtype=torch.float32)
    scores = score("dao", x, k=8)
    assert np.isfinite(scores).all()
    assert scores[9] == scores.max() > 1e307 and (scores[:9] < 2).all()


def test_query_radius_switch_uses_r_k_plus_1():
    x = _data(duplicates=False)
    nb = knn(x, k=6)
    np.testing.assert_array_equal(score("k_distance", x, k=5, query_radius="r_k+1"), nb.distances[:, 5])
    np.testing.assert_array_equal(score("k_distance", x, k=5), nb.distances[:, 4])


@pytest.mark.parametrize("name", ["k_distance", "slof", "dao", "lof"])
def test_planted_sparse_outliers_rank_first(name):
    x, y = _planted()
    s = score(name, x, k=8)
    assert set(np.argsort(-s)[:y.sum()]) == set(np.flatnonzero(y))
    assert metrics.auroc(y, s) == 1.0


def test_planted_outliers_other_detectors_and_spaces():
    x, y = _planted()
    rng = np.random.default_rng(1)
    t = x + 0.05 * rng.normal(size=x.shape).astype(np.float32)
    assert metrics.auroc(y, score("isolation_forest", x)) == 1.0
    for space in ("text", "joint"):
        for name in ("k_distance", "slof", "lof"):
            assert metrics.auroc(y, score(name, x, t, k=8, space=space)) == 1.0, (name, space)
    assert metrics.auroc(y, score("slof", x, k=8, normalize=True, metric="euclidean")) > 0.9
    # the same, batch-local with a batch of 100
    assert metrics.auroc(y, score("slof", x, k=8, reference="batch", batch_size=100, seed=3)) == 1.0


def test_pair_detectors():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(200, 5))
    txt = img + 0.1 * rng.normal(size=(200, 5))
    txt[:10] = rng.normal(size=(10, 5))          # mismatched captions
    y = np.r_[np.ones(10), np.zeros(190)].astype(int)
    cos = (img / np.linalg.norm(img, axis=1, keepdims=True) * (txt / np.linalg.norm(txt, axis=1, keepdims=True))).sum(1)
    np.testing.assert_allclose(score("clip_score", img, txt), -cos)
    split = S.gmm_split(img, txt)
    assert split.means[np.argmax(split.means)] > split.means[np.argmin(split.means)]
    np.testing.assert_allclose(split.score, -split.p_clean)
    assert split.safe[10:].mean() > 0.9 and split.safe[:10].mean() < 0.2
    assert metrics.auroc(y, score("gmm", img, txt)) > 0.95


def test_abl_score():
    losses = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [9.0, 9.0, 9.0]])
    np.testing.assert_allclose(S.abl_score(losses, epochs=2), [-2.0, -2.0, -2.0])
    np.testing.assert_allclose(score("abl", losses=losses, abl_epochs=3), [-13 / 3, -13 / 3, -13 / 3])
    with pytest.raises(ValueError, match="needs losses"):
        score("abl", np.zeros((3, 2)))


def test_abl_selects_epochs_by_number():
    """Rows are matched to epochs by their number (per_sample.npz's ``epochs``), not by position."""
    rng = np.random.default_rng(0)
    by_epoch = {e: rng.normal(size=5) for e in range(1, 13)}        # epoch e -> losses of 5 samples
    want = -np.mean([by_epoch[e] for e in range(1, 11)], 0)
    order = rng.permutation(12) + 1                                   # rows stored in shuffled epoch order
    losses = np.stack([by_epoch[e] for e in order])
    np.testing.assert_allclose(S.abl_score(losses, 10, epoch_numbers=order), want)
    np.testing.assert_allclose(score("abl", losses=losses, abl_epochs=10, loss_epochs=order), want)
    assert not np.allclose(S.abl_score(losses, 10), want)           # positions would average the wrong epochs
    # a resumed run that lost epochs 1-2: its first 10 rows are epochs 3..12, which must not pass as 1..10
    resumed = np.arange(3, 13)
    with pytest.raises(ValueError, match=r"lacks epoch\(s\) \[1, 2\]"):
        S.abl_score(np.stack([by_epoch[e] for e in resumed]), 10, epoch_numbers=resumed)
    with pytest.raises(ValueError, match="repeat"):
        S.abl_score(losses[:3], 2, epoch_numbers=np.array([1, 2, 2]))
    with pytest.raises(ValueError, match="one epoch per loss row"):
        S.abl_score(losses, 2, epoch_numbers=np.arange(1, 4))
    # without epoch numbers the first E rows are epochs 1..E (unchanged behaviour)
    np.testing.assert_allclose(S.abl_score(losses, 3), -losses[:3].mean(0))


def test_tracked_losses_reads_the_trackers_file(tmp_path):
    from clipguard.detect.pipeline import tracked_losses
    from clipguard.evaluate import PerSampleTracker

    tracker = PerSampleTracker(dataset=None)
    for epoch in (3, 1, 2):
        tracker.records[epoch] = (torch.full((4,), float(epoch)), torch.arange(4.0) + 10 * epoch)

    class Run:
        id = "r"

        def artifact(self, name):
            return tmp_path / name

    tracker.save(tmp_path / "per_sample.npz")
    loss, epochs = tracked_losses(Run())
    np.testing.assert_array_equal(epochs, [1, 2, 3])
    np.testing.assert_allclose(S.abl_score(loss, 2, epoch_numbers=epochs), -(np.arange(4.0) + 15))


@pytest.mark.parametrize("name", ALL_EMBEDDING)
def test_permutation_of_input_permutes_scores(name):
    x = _data(duplicates=False)
    rng = np.random.default_rng(5)
    t = x + 0.3 * rng.normal(size=x.shape).astype(np.float32)
    perm = rng.permutation(len(x))
    for space in (("image", "joint") if name in GRAPH else ("image",)):
        a = score(name, x, t, k=6, space=space)
        b = score(name, x[perm], t[perm], k=6, space=space)
        np.testing.assert_allclose(b, a[perm], rtol=1e-7, atol=1e-12, err_msg=f"{name} {space}")


@pytest.mark.parametrize("name", ["slof", "dao"])
def test_released_quirks_fail_permutation(name):
    """Documented failure: the released code reads neighbour rows with positions of the self-removed row (5.1), so
    a neighbour's statistics depend on where the query sits in the batch, and reordering changes the scores."""
    x = _data(duplicates=False)
    perm = np.random.default_rng(5).permutation(len(x))
    a = score(name, x, k=6, released_quirks=True)
    b = score(name, x[perm], k=6, released_quirks=True)
    assert not np.allclose(b, a[perm])
    # k-distance (r_{k+1}) and LID have no misalignment and stay permutation-equivariant in released mode
    for ok in ("k_distance", "lid"):
        np.testing.assert_allclose(score(ok, x[perm], k=6, released_quirks=True),
                                   score(ok, x, k=6, released_quirks=True)[perm], rtol=1e-9)


def _released_reference(image, text, k, detector):
    """Literal transcription of the released SLOFDetector / DAODetector forward (one GPU, exact cdist)."""
    def pairwise(data, ref):
        b = data.shape[0]
        r = torch.cdist(data, ref, compute_mode="donot_use_mm_for_euclid_dist")
        mask = torch.diagonal_scatter(torch.zeros((b, ref.shape[0]), dtype=torch.bool), torch.ones(b), 0)
        return r[~mask].view(b, -1)

    v = torch.as_tensor(image, dtype=torch.float64)
    if text is None:
        d, full_ref = pairwise(v, v), v
    else:
        t = torch.as_tensor(text, dtype=torch.float64)
        d, full_ref = torch.cat([pairwise(v, v), pairwise(v, t)], 1), torch.cat([v, t])
    a, idx = torch.sort(d, dim=1)
    a_full, _ = torch.sort(torch.cdist(full_ref, full_ref, compute_mode="donot_use_mm_for_euclid_dist"), dim=1)
    idx_k = idx[:, :k]
    d_k = torch.stack([a_full.index_select(0, row) for row in idx_k])[:, :, k]
    if detector == "slof":
        s = (a[:, k].unsqueeze(-1) / d_k).mean(1)
    else:
        lids = -k / torch.sum(torch.log(a_full[:, :k] / a_full[:, k].unsqueeze(-1) + 1e-4), dim=1)
        lid_k = torch.stack([lids.index_select(0, row) for row in idx_k])
        s = (lid_k * torch.log(a[:, k].unsqueeze(-1) / d_k)).mean(1)
    return torch.nan_to_num(s, nan=1000.0, posinf=1000.0, neginf=0.0).numpy()


@pytest.mark.parametrize("name", ["slof", "dao"])
@pytest.mark.parametrize("joint", [False, True])
def test_released_quirks_reproduce_released_code(name, joint):
    x = _data(n=120, duplicates=False).astype(np.float64)
    t = x[::-1].copy() * 0.7 + 0.2 if joint else None
    ours = score(name, x, t, k=5, space="joint" if joint else "image", released_quirks=True)
    np.testing.assert_allclose(ours, _released_reference(x, t, 5, name), rtol=1e-6)


def test_joint_space_excludes_own_caption():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(50, 4))
    txt = img.copy()                         # every caption sits exactly on its image
    s = score("k_distance", img, txt, k=1, space="joint")
    assert (s > 0).all()                     # its own caption (distance 0) is never a neighbour
    both = np.concatenate([img, txt])
    d = np.linalg.norm(img[:, None] - both[None], axis=-1)
    d[np.arange(50), np.arange(50)] = np.inf
    d[np.arange(50), np.arange(50) + 50] = np.inf
    np.testing.assert_allclose(s, d.min(1))


def test_batch_local_reference():
    x = _data(n=250, duplicates=False)
    s = score("k_distance", x, k=4, reference="batch", batch_size=100, seed=7)
    order = np.random.default_rng(7).permutation(250)
    batches = [order[:100], order[100:200], order[200:]]
    for b in batches:
        np.testing.assert_allclose(s[b], knn(x[b], k=4).distances[:, 3])
    # a tail smaller than k+1 joins the previous batch: every sample is scored exactly once
    s2 = score("k_distance", x, k=4, reference="batch", batch_size=124, seed=7)
    merged = [order[:124], order[124:]]
    for b in merged:
        np.testing.assert_allclose(s2[b], knn(x[b], k=4).distances[:, 3])
    assert np.isfinite(s2).all()


def test_score_many_shares_one_graph_and_matches_score():
    x, _ = _planted()
    many = score_many(GRAPH, x, k=8)
    for name in GRAPH:
        np.testing.assert_allclose(many[name], score(name, x, k=8))


def test_input_validation_errors():
    x = _data(n=40, duplicates=False)
    bad = x.copy()
    bad[13, 2] = np.nan
    with pytest.raises(ValueError, match="row 13"):
        score("slof", bad)
    with pytest.raises(ValueError, match="at least"):
        score("k_distance", x[:10], k=16)
    with pytest.raises(ValueError, match="same shape"):
        score("clip_score", x, x[:30])
    with pytest.raises(ValueError, match="dimension"):
        score("lof", x, k=3, reference="clean", clean_image=np.zeros((20, 3)))
    with pytest.raises(ValueError, match="unknown detector"):
        score("nope", x)
    with pytest.raises(ValueError, match="2-D"):
        score("lid", x[0])
    with pytest.raises(ValueError, match="need text_emb"):
        score("dao", x, space="joint")
    with pytest.raises(ValueError, match="first bad row: 13"):
        knn(bad, k=3)
    with pytest.raises(ValueError, match="dimension"):
        knn(x, x[:, :3], k=3)


# ------------------------------------------------------------------ metrics

def test_metrics_equal_sklearn_on_random_labels():
    rng = np.random.default_rng(0)
    for trial in range(3):
        y = (rng.random(400) < 0.1).astype(int)
        s = np.round(rng.normal(size=400) + y, 1)            # rounded: many ties
        assert metrics.auroc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
        precision, recall, _ = skm.precision_recall_curve(y, s)
        assert metrics.pr_auc(y, s) == pytest.approx(skm.auc(recall, precision), abs=1e-12)
        assert metrics.average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
        fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
        ours = metrics.roc_points(y, s)
        np.testing.assert_allclose(ours[0], fpr)
        np.testing.assert_allclose(ours[1], tpr)
        assert metrics.fpr_at_tpr(y, s) == pytest.approx(np.interp(0.95, tpr, fpr))
        assert metrics.tpr_at_fpr(y, s, 0.01) == pytest.approx(tpr[fpr <= 0.01].max())


def test_error_at_95_corrected_vs_released_hand_computed():
    # ranking P N N P N N N N N N: TPR 0.95 needs both positives -> threshold at rank 4: TPR 1, FPR 2/8
    y = np.array([1, 0, 0, 1, 0, 0, 0, 0, 0, 0])
    s = np.arange(10)[::-1].astype(float)
    # misclassification rate = pos 0.2 * (1 - 1) + neg 0.8 * 0.25 = 0.2 (two of ten samples misclassified)
    assert metrics.detection_error_at_tpr(y, s) == pytest.approx(0.2)
    # released weighting = 0.8 * 0 + 0.2 * 0.25 = 0.05
    assert metrics.detection_error_at_tpr_released(y, s) == pytest.approx(0.05)
    assert metrics.fpr_at_tpr(y, s) == pytest.approx(0.25)
    assert metrics.precision_at_k(y, s, 4) == pytest.approx(0.5)
    assert metrics.recall_at_fraction(y, s, 0.1) == pytest.approx(0.5)
    assert metrics.tpr_at_fpr(y, s, 0.01) == pytest.approx(0.5)
    report = metrics.detection_report(y, s)
    assert report["error@95tpr"] == pytest.approx(0.2) and report["auroc"] == pytest.approx(14 / 16)


def test_fpr_at_tpr_interpolates():
    # P N P N: ROC points (0,0) (0,.5) (.5,.5) (.5,1) (1,1); TPR .95 lies on the vertical segment at FPR .5
    y = np.array([1, 0, 1, 0])
    s = np.array([4.0, 3.0, 2.0, 1.0])
    assert metrics.fpr_at_tpr(y, s, 0.95) == pytest.approx(0.5)
    # P N N P N, then interpolation between (0, .5) ... (2/3, 1)? TPR 0.75 is bracketed by (2/3, 1) and (0, .5)
    y = np.array([1, 0, 0, 1, 0])
    s = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    # points: (0,0),(0,.5),(1/3,.5),(2/3,.5),(2/3,1),(1,1): TPR .75 between (2/3,.5) and (2/3,1) -> FPR 2/3
    assert metrics.fpr_at_tpr(y, s, 0.75) == pytest.approx(2 / 3)


def test_bootstrap_interval_brackets_point_estimate():
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.2).astype(int)
    s = rng.normal(size=300) + 1.5 * y
    lo, hi = metrics.bootstrap_interval(metrics.auroc, y, s, n_boot=200, seed=1)
    assert lo < metrics.auroc(y, s) < hi and hi - lo < 0.2
    assert (lo, hi) == metrics.bootstrap_interval(metrics.auroc, y, s, n_boot=200, seed=1)


def test_metric_validation():
    with pytest.raises(ValueError, match="both classes"):
        metrics.auroc(np.zeros(5), np.arange(5.0))
    with pytest.raises(ValueError, match="NaN"):
        metrics.auroc(np.array([0, 1]), np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="same length"):
        metrics.auroc(np.array([0, 1, 1]), np.array([0.0, 1.0]))


# ------------------------------------------------------------------ pipeline

class _FakeRun:
    id = "fake-run"

    def load_model(self):
        return None


class _FakeDataset:
    def __len__(self):
        return 6

    def fingerprint(self):
        return "fake-data"


def test_stored_scores_are_keyed_by_the_loss_values(tmp_path, monkeypatch):
    """Regression: the store key held only ``losses is not None``, so a second call with other losses returned the
    first call's ABL scores."""
    from clipguard.detect import pipeline
    from clipguard.runs import RunStore

    emb = np.random.default_rng(0).normal(size=(6, 3))
    monkeypatch.setattr(pipeline, "embed", lambda model, dataset, normalize=False: (emb, emb))
    store = RunStore("test", root=tmp_path)
    variants = {"abl": {"names": ["abl"]}}
    first = np.arange(12.0).reshape(2, 6)
    second = first[:, ::-1].copy()
    a, _ = pipeline.stored_scores(store, _FakeRun(), _FakeDataset(), variants, losses=first)
    b, _ = pipeline.stored_scores(store, _FakeRun(), _FakeDataset(), variants, losses=second)
    np.testing.assert_allclose(a["abl/abl"], -first.mean(0))
    np.testing.assert_allclose(b["abl/abl"], -second.mean(0))
    again, _ = pipeline.stored_scores(store, _FakeRun(), _FakeDataset(), variants, losses=first.copy())
    np.testing.assert_array_equal(again["abl/abl"], a["abl/abl"])
    assert len(store.runs()) == 2          # same values -> the stored result, other values -> a new one
    # the epoch numbers of the rows are part of the key too
    first_epoch = {"abl": {"names": ["abl"], "abl_epochs": 1}}
    c, _ = pipeline.stored_scores(store, _FakeRun(), _FakeDataset(), first_epoch, losses=first,
                                  loss_epochs=np.array([1, 2]))
    d, _ = pipeline.stored_scores(store, _FakeRun(), _FakeDataset(), first_epoch, losses=first,
                                  loss_epochs=np.array([2, 1]))
    np.testing.assert_allclose(c["abl/abl"], -first[0])
    np.testing.assert_allclose(d["abl/abl"], -first[1])
    # the fingerprint sees dtype and shape, not only the bytes
    assert pipeline.array_fingerprint(first) != pipeline.array_fingerprint(first.astype(np.float32))
    assert pipeline.array_fingerprint(first) != pipeline.array_fingerprint(first.reshape(3, 4))
    assert pipeline.array_fingerprint(None) is None
