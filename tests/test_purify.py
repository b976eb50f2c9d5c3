"""The batched JAX Self-Centered filter against networkx / scipy / the numpy pipeline of docs/algorithm.md section 3."""
import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pytest

from spr_jax.filters import centrality
from spr_jax.testing import reference_filter as ref

clustered_chunk = ref.clustered_chunk


def _draws(seed, size, num_graphs=5):
    graph_u, keep_u = centrality.filter_draws(jax.random.PRNGKey(seed), size, num_graphs)
    return np.asarray(graph_u), np.asarray(keep_u)


# One compiled function per role, shared by the tests.
_filter = centrality.self_centered_filter  # jitted: compiled once per chunk shape
_centrality = jax.jit(centrality.eigenvector_centrality, static_argnames=("num_classes", "max_iter"))
_posterior = jax.jit(centrality.centrality_clean_posterior, static_argnames=("num_classes",))


@jax.jit
def _stochastic_centrality4(edges, labels, max_iter):
    return centrality.stochastic_graph_centrality(edges, labels, num_classes=4, max_iter=max_iter)


def _stochastic_centrality(edges, labels, max_iter=6000):
    with jax.enable_x64(True):
        return np.asarray(_stochastic_centrality4(edges, labels, max_iter))


def test_filter_draws_shapes_and_determinism():
    key = jax.random.PRNGKey(3)
    graph_u, keep_u = centrality.filter_draws(key, 7, 4)
    assert graph_u.shape == (4, 7, 7) and keep_u.shape == (7,)
    assert graph_u.dtype == jnp.float32 and keep_u.dtype == jnp.float32
    again = centrality.filter_draws(key, 7, 4)
    np.testing.assert_array_equal(graph_u, again[0])
    np.testing.assert_array_equal(keep_u, again[1])
    other = centrality.filter_draws(jax.random.PRNGKey(4), 7, 4)
    assert not np.array_equal(graph_u, other[0])


def test_graph_weights_are_the_networkx_graph_of_each_class():
    feats, labels, _ = clustered_chunk(0, 40, 3, spread=1.5)
    graph_u, _ = _draws(0, 40, num_graphs=2)
    weights = np.asarray(jax.jit(lambda f, l, u: centrality.graph_weights(centrality.similarity(f), l, u))(
        feats, labels, graph_u))
    sim = ref.similarity(feats)
    for k in range(3):
        idx = np.flatnonzero(labels == k)
        others = np.flatnonzero(labels != k)
        for e in range(2):
            raw = ref.class_graph_weights(sim[np.ix_(idx, idx)], graph_u[e][np.ix_(idx, idx)])
            want = nx.to_numpy_array(nx.from_numpy_array(raw))
            np.testing.assert_allclose(weights[e][np.ix_(idx, idx)], want, rtol=1e-6)
            assert not weights[e][np.ix_(idx, others)].any()


def test_centrality_matches_networkx_on_random_weighted_graphs():
    # Several classes of 2..500 nodes in one masked [E, D, D] call, samples interleaved.
    rng = np.random.default_rng(0)
    sizes = [2, 3, 9, 40, 150, 500]
    labels = rng.permutation(np.repeat(np.arange(len(sizes)), sizes)).astype(np.int32)
    d, num_graphs = labels.size, 1
    weights = np.zeros((num_graphs, d, d))
    blocks = []
    for e in range(num_graphs):
        for k in range(len(sizes)):
            idx = np.flatnonzero(labels == k)
            w = rng.random((idx.size, idx.size)) ** 3  # skewed weights: a real eigen-gap structure
            w = np.tril(w) + np.tril(w, -1).T
            weights[e][np.ix_(idx, idx)] = w
            blocks.append((e, idx, w))
    cent = np.asarray(_centrality(weights.astype(np.float32), labels, num_classes=len(sizes)))
    for e, idx, w in blocks:
        graph = nx.from_numpy_array(w.astype(np.float32).astype(np.float64))
        want = nx.eigenvector_centrality(graph, max_iter=6000, tol=1e-6, weight="weight")
        want = np.array([want[i] for i in range(idx.size)])
        assert np.abs(cent[e, idx] - want).max() <= 1e-5


def _sparse_chunk():
    # Near-random features make sparse graphs whose top eigenvalues nearly coincide: networkx needs
    # hundreds to thousands of iterations and stops far from the eigenvector, where float32 drifts.
    feats, labels, _ = clustered_chunk(31, 160, 4, dim=128, spread=10.0)
    graph_u, _ = _draws(31, 160, num_graphs=2)
    edges = centrality.edge_matrix(centrality.similarity(feats), labels, graph_u)
    return ref.similarity(feats), labels, graph_u, edges


def test_stochastic_graph_centrality_is_float64_exact_even_when_slow():
    sim, labels, graph_u, edges = _sparse_chunk()
    cent = _stochastic_centrality(edges, labels)
    worst = 0.0
    for k in range(4):
        idx = np.flatnonzero(labels == k)
        for e in range(2):
            want = ref.eigenvector_centrality(ref.class_graph_weights(sim[np.ix_(idx, idx)],
                                                                      graph_u[e][np.ix_(idx, idx)]))
            worst = max(worst, np.abs(cent[e, idx] - want).max())
    assert worst <= 1e-12


def test_centrality_stops_after_max_iter_with_the_last_iterate():
    sim, labels, graph_u, edges = _sparse_chunk()
    cent = _stochastic_centrality(edges, labels, max_iter=3)
    for k in range(4):
        idx = np.flatnonzero(labels == k)
        raw = ref.class_graph_weights(sim[np.ix_(idx, idx)], graph_u[0][np.ix_(idx, idx)])
        np.testing.assert_allclose(cent[0, idx], ref.eigenvector_centrality(raw, max_iter=3), atol=1e-12)


def _random_centralities(rng, sizes, num_graphs):
    """[E, D] positive values per class: unimodal, bimodal, heavy-tailed, with tied clusters."""
    labels = rng.permutation(np.repeat(np.arange(len(sizes)), sizes)).astype(np.int32)
    cent = np.zeros((num_graphs, labels.size))
    for e in range(num_graphs):
        for k, n in enumerate(sizes):
            kind = (e + k) % 4
            if kind == 0:
                v = rng.beta(2, 5, n)
            elif kind == 1:
                v = np.where(rng.random(n) < 0.6, rng.normal(0.3, 0.02, n), rng.normal(0.05, 0.02, n))
            elif kind == 2:
                v = rng.lognormal(-3, 1, n)
            else:
                v = np.where(rng.random(n) < 0.3, 1e-5, rng.beta(5, 2, n))  # tied isolated nodes
            v = np.abs(v) + 1e-6
            cent[e, labels == k] = v / np.linalg.norm(v)
    return cent, labels


def test_beta_mixture_lookup_matches_scipy():
    rng = np.random.default_rng(1)
    sizes = [4, 7, 25, 60, 150, 300]
    cent, labels = _random_centralities(rng, sizes, num_graphs=4)
    ours = np.asarray(_posterior(cent.astype(np.float32), labels, num_classes=len(sizes)))
    cent32 = cent.astype(np.float32).astype(np.float64)  # the same inputs for both
    for e in range(cent.shape[0]):
        for k in range(len(sizes)):
            idx = np.flatnonzero(labels == k)
            np.testing.assert_allclose(ours[e, idx], ref.class_clean_posterior(cent32[e, idx]), atol=1e-4)


# The filter at one chunk shape (one compilation): 200 samples, 10 classes.
D, K = 200, 10


@pytest.mark.parametrize("seed,spread", [(0, 0.3), (1, 0.8), (2, 1.5), (3, 3.0), (4, 10.0)])
def test_filter_matches_numpy_networkx_pipeline(seed, spread):
    # Features from tight clusters to nearly random (sparse, slowly converging graphs, tied centralities).
    feats, labels, _ = clustered_chunk(seed, D, K, spread=spread)
    graph_u, keep_u = _draws(seed, D)
    clean_p, keep = _filter(feats, labels, graph_u, keep_u, num_classes=K)
    assert_matches_release(clean_p, keep, *ref.self_centered_filter(feats, labels, graph_u, keep_u))


def assert_matches_release(clean_p, keep, want_p, want_keep):
    """Same keep decisions; same clean_p where the release's is defined, UNDEFINED_P (finite) where not."""
    clean_p, keep = np.asarray(clean_p), np.asarray(keep)
    assert np.isfinite(clean_p).all()
    np.testing.assert_array_equal(keep, want_keep)
    defined = np.isfinite(want_p)
    np.testing.assert_allclose(clean_p[defined], want_p[defined], atol=1e-4)
    assert (clean_p[~defined] == centrality.UNDEFINED_P).all() and not keep[~defined].any()


def many_small_classes(seed, size=600, num_classes=100):
    """The cifar100 regime: a chunk of `size` samples over `num_classes` classes of 1-13 samples each."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 14, num_classes)
    sizes = np.maximum(1, np.round(sizes * size / sizes.sum())).astype(int)
    sizes[np.argmax(sizes)] += size - sizes.sum()
    labels = rng.permutation(np.repeat(np.arange(num_classes), sizes)).astype(np.int32)
    feats, _, _ = clustered_chunk(seed, size, 10, dim=64, spread=1.5)
    return feats, labels, sizes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_filter_matches_the_release_on_many_small_classes(seed):
    feats, labels, sizes = many_small_classes(seed)
    assert sizes.min() >= 1 and sizes.max() <= 30 and (sizes <= 3).any()
    d = labels.shape[0]
    graph_u, keep_u = centrality.filter_draws(jax.random.PRNGKey(100 + seed), d, 5)
    clean_p, keep = jax.jit(centrality.self_centered_filter, static_argnames=("num_classes", "max_iter"))(
        feats, labels, graph_u, keep_u, num_classes=100)
    want_p, want_keep = ref.self_centered_filter(feats, labels, np.asarray(graph_u), np.asarray(keep_u))
    assert np.isnan(want_p).sum() > 50  # the regime where the release's fit is often undefined
    assert_matches_release(clean_p, keep, want_p, want_keep)


def test_filter_keeps_clean_samples_of_well_separated_clusters():
    feats, labels, true = clustered_chunk(7, D, K, noise=0.4, spread=0.5)
    graph_u, keep_u = _draws(7, D)
    _, keep = _filter(feats, labels, graph_u, keep_u, num_classes=K)
    keep, clean = np.asarray(keep), labels == true
    assert 0.3 < 1 - clean.mean() < 0.5  # about 40% noise
    assert clean[keep].mean() >= 0.9
    assert keep[clean].mean() >= 0.5


def _degenerate_chunk(kind):
    """A chunk whose class 9 is degenerate: one sample, two samples, or five identical features."""
    feats, labels, _ = clustered_chunk(11, D, K, spread=1.0)
    labels = np.where(labels == 9, 8, labels)
    members = {"size1": [5], "size2": [2, 90], "identical": [0, 30, 61, 77, 150]}[kind]
    labels[members] = 9
    if kind == "identical":
        feats[members] = feats[members[0]]
    return feats, labels


@pytest.mark.parametrize("kind", ["size1", "size2", "identical"])
def test_degenerate_classes_are_never_kept_and_never_nan(kind):
    feats, labels = _degenerate_chunk(kind)
    graph_u, keep_u = _draws(12, D)
    clean_p, keep = _filter(feats, labels, graph_u, keep_u, num_classes=K)
    clean_p = np.asarray(clean_p)
    assert np.isfinite(clean_p).all() and ((clean_p >= 0) & (clean_p <= 1)).all()
    assert (clean_p[labels == 9] == centrality.UNDEFINED_P).all() and not np.asarray(keep)[labels == 9].any()
    want_p, want_keep = ref.self_centered_filter(feats, labels, graph_u, keep_u)
    assert np.isnan(want_p[labels == 9]).all()
    assert_matches_release(clean_p, keep, want_p, want_keep)


def test_purify_chunk_is_deterministic_and_vmaps_over_chunks():
    chunks = [clustered_chunk(20 + i, D, K, spread=s) for i, s in enumerate([0.5, 1.5, 6.0])]
    feats = np.stack([c[0] for c in chunks])
    labels = np.stack([c[1] for c in chunks])
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    one = lambda k, f, l: centrality.purify_chunk(k, f, l, num_classes=K)  # noqa: E731
    # purify_chunk is jitted: vmap batches the traced program (its float64 part included).
    batch_p, batch_keep = jax.vmap(one)(keys, feats, labels)
    again_p, _ = jax.vmap(one)(keys, feats, labels)
    np.testing.assert_array_equal(again_p, batch_p)
    for i in range(3):  # per chunk: purify_chunk is filter_draws + self_centered_filter
        graph_u, keep_u = centrality.filter_draws(keys[i], D, 5)
        p, keep = _filter(feats[i], labels[i], graph_u, keep_u, num_classes=K)
        np.testing.assert_allclose(batch_p[i], p, atol=1e-6)
        np.testing.assert_array_equal(batch_keep[i], keep)
    assert not np.array_equal(batch_p[0], batch_p[1])
