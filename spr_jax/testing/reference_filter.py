"""The Self-Centered filter written straight from docs/algorithm.md section 3 step 3 with numpy, networkx and scipy.

This is the reference pipeline that `spr_jax.filters.centrality` is tested and benchmarked against. It runs the way the
original release does: class by class of the chunk's noisy labels, graph by graph, building a networkx graph
from each class's weight matrix and fitting a scipy beta mixture on its centralities, in float64.

To see the same randomness as the batched JAX filter it takes the uniform draws as arguments: graph e of class
k compares the class's similarities with `graph_u[e]` restricted to the class's rows and columns (samples in
chunk order), and sample i is kept when clean_p[i] > keep_u[i].

Rules as the release applies them (the JAX filter follows the same ones):
- Samples enter the fit when p5 <= c <= p95 (numpy's default linear percentiles, inclusive), up to
  rounding-level ties, t = 1e-12 p95: networkx's summation order splits mathematically tied centralities
  (symmetric nodes) in their last bits, so the release's own outcome there is an accident of rounding.
- If networkx does not converge within `max_iter`, the last iterate of the same power iteration is used (the
  rule's "or after 6000 iterations"; networkx itself raises).
- The lookup posterior is 1 where component 1's density is infinite (numpy would give inf/inf = NaN there).
- Zero variance among the trimmed values (all equal to 1e-12, or none trimmed in) makes the method of moments divide
  by zero: alpha and beta are infinite and the class's posterior is NaN in that graph, so the mean over
  graphs is NaN and the sample is never kept. Elsewhere the numpy / scipy arithmetic runs as written
  (NaN propagates as it does). `class_clean_posterior` raises ReferenceUndefined where scipy raises.
"""
import networkx as nx
import numpy as np
from scipy import stats

LOW_WEIGHT = 1e-5  # weight of a non-edge in the stochastic graph
TOL = 1e-6  # networkx's per-node tolerance
EPS_NAN = 1e-12
TIE_RTOL = 1e-12  # rounding-level ties


class ReferenceUndefined(ArithmeticError):
    """scipy raised (e.g. OverflowError for enormous alpha and beta): the release has no outcome here."""


def similarity(features):
    """max(0, cosine similarity) of all pairs, float32 like the expert's features."""
    f = np.asarray(features, np.float32)
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    return np.maximum(f @ f.T, 0.0)


def class_graph_weights(sim, u):
    """A = 1 where S > u, else 1e-5, self-loops 1 (float64, not yet symmetric)."""
    a = np.where(sim > u, 1.0, LOW_WEIGHT)
    np.fill_diagonal(a, 1.0)
    return a


def _power_iteration(weights, max_iter):
    """networkx's loop in numpy on the graph networkx would build, returning the last iterate."""
    lower = np.tril(weights)
    sym = lower + np.tril(weights, -1).T  # networkx keeps A[max(i,j), min(i,j)]
    n = sym.shape[0]
    x = np.full(n, 1.0 / n)
    for _ in range(max_iter):
        last = x
        x = last + sym @ last
        x = x / (np.linalg.norm(x) or 1.0)
        if np.abs(x - last).sum() < n * TOL:
            break
    return x


def eigenvector_centrality(weights, max_iter=6000):
    """networkx.eigenvector_centrality of the undirected graph of a (possibly non-symmetric) weight matrix."""
    graph = nx.from_numpy_array(weights)
    try:
        cent = nx.eigenvector_centrality(graph, max_iter=max_iter, tol=TOL, weight="weight")
    except nx.PowerIterationFailedConvergence:
        return _power_iteration(weights, max_iter)
    return np.array([cent[i] for i in range(weights.shape[0])])


def _normalise(values, p5, p95):
    lo = p5 + 1e-5
    x = (values - lo) / (p95 - lo + 1e-6)
    x[x >= 1] = 1 - 1e-3
    x[x <= 0] = 1e-3
    return x


def _fit_beta_weighted(x, w, zero_variance):
    mean = np.sum(w * x) / np.sum(w)
    # Zero variance among the values: the true weighted variance is 0 whatever rounding says.
    var = 0.0 if zero_variance else np.sum(w * (x - mean) ** 2) / np.sum(w)
    alpha = mean * ((mean * (1 - mean)) / var - 1)
    return alpha, alpha * (1 - mean) / mean


def beta_mixture(fit_values, iters=10):
    """EM of docs/algorithm.md section 3 on already normalised values; returns alphas, betas, weights."""
    x = np.clip(fit_values, 1e-4, 1 - 1e-4)
    zero_variance = x.size == 0 or not x.max() - x.min() > TIE_RTOL
    alphas, betas, weight = np.array([1.0, 2.0]), np.array([2.0, 1.0]), np.array([0.5, 0.5])
    for _ in range(iters):
        r = np.array([weight[k] * stats.beta.pdf(x, alphas[k], betas[k]) for k in range(2)])
        r[r <= EPS_NAN] = EPS_NAN
        r /= r.sum(axis=0)
        for k in range(2):
            alphas[k], betas[k] = _fit_beta_weighted(x, r[k], zero_variance)
        weight = r.sum(axis=1)
        weight /= weight.sum()
    return alphas, betas, weight


def clean_lookup(alphas, betas, weight, bins=100):
    """Component 1's posterior on the 100-point grid, held at its maximum from its argmax onwards."""
    grid = np.linspace(EPS_NAN, 1 - EPS_NAN, bins)
    p0 = weight[0] * stats.beta.pdf(grid, alphas[0], betas[0])
    p1 = weight[1] * stats.beta.pdf(grid, alphas[1], betas[1])
    post = p1 / (p0 + p1 + EPS_NAN)
    post = np.where(np.isinf(p1), 1.0, post)
    post[np.argmax(post):] = post.max()
    return post


def class_clean_posterior(cent):
    """Clean probability of every sample of one class from its centralities in one graph."""
    p95 = np.percentile(cent, 95)
    p5 = np.percentile(cent, 5)
    tol = TIE_RTOL * abs(p95)
    fit = _normalise(cent[(cent >= p5 - tol) & (cent <= p95 + tol)], p5, p95)
    try:
        with np.errstate(all="ignore"):
            lookup = clean_lookup(*beta_mixture(fit))
    except (OverflowError, FloatingPointError) as e:
        raise ReferenceUndefined(str(e)) from e
    x = np.clip(_normalise(cent.copy(), p5, p95), EPS_NAN, 1 - EPS_NAN)
    idx = np.clip((100 * x).astype(int), 0, 99)
    return lookup[idx]


def self_centered_filter(features, labels, graph_u, keep_u, max_iter=6000):
    """clean_p [D] (NaN where the release's is undefined) and keep [D] for one chunk, class by class and graph
    by graph, as the release runs."""
    labels = np.asarray(labels)
    graph_u = np.asarray(graph_u)
    sim = similarity(features)
    num_graphs = graph_u.shape[0]
    clean_p = np.zeros(labels.shape[0])
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        sub = sim[np.ix_(idx, idx)]
        for e in range(num_graphs):
            weights = class_graph_weights(sub, graph_u[e][np.ix_(idx, idx)])
            cent = eigenvector_centrality(weights, max_iter)
            clean_p[idx] += class_clean_posterior(cent)
    clean_p /= num_graphs
    return clean_p, clean_p > np.asarray(keep_u)


def clustered_chunk(seed, size, num_classes, dim=32, noise=0.4, spread=0.8):
    """Features of clusters on the unit sphere (one per true class), labels with symmetric noise at `noise`;
    returns (features, noisy labels, true labels). Shared by the tests and benchmarks/filter.py."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(num_classes, dim))
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    true = rng.permutation(np.arange(size) % num_classes)
    feats = means[true] + spread * rng.normal(size=(size, dim)) / np.sqrt(dim)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    labels = true.copy()
    flip = rng.random(size) < noise
    labels[flip] = (true[flip] + rng.integers(1, num_classes, flip.sum())) % num_classes
    return feats.astype(np.float32), labels.astype(np.int32), true
