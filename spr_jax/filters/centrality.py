"""The Self-Centered filter (docs/algorithm.md section 3 step 3) as one compiled, batched JAX function.

The reference runs class by class and graph by graph with networkx and scipy. Here every class and every graph
of a chunk is processed at once with static shapes:

- The chunk's full D x D similarity S = max(0, cos) is masked to same-class pairs (`labels_i == labels_j`), so
  the E stochastic graphs form one [E, D, D] block-diagonal (up to a permutation) weight tensor. Memory and
  work are O(E D^2) whatever the number of classes; classes absent from the chunk simply have no samples.
- Graph e: A[i, j] = 1 if S[i, j] > graph_u[e, i, j] else 1e-5, same-class pairs only. As
  networkx.from_numpy_array does on a non-symmetric matrix, each pair keeps the lower-triangle value
  A[max(i, j), min(i, j)]; the diagonal is a self-loop of weight 1.
- Eigenvector centrality is networkx's power iteration x <- (A + I) x / ||.||_class for all (graph, class)
  pairs in one `lax.while_loop`; a pair is frozen at the iteration where networkx would return
  (sum |x - x_prev| < n_class * 1e-6), so each class stops exactly where networkx stops, or after max_iter.
- The beta mixture (percentile trimming, normalisation, 10 EM steps, 100-bin posterior lookup) runs for all
  (graph, class) pairs at once; per-class sums are matmuls with the [D, K] one-hot of the labels and per-class
  percentiles come from one sort by (label, centrality).

Precision (a mixed scheme; the tests hold it to the float64 reference):
- Similarities and draws are float32, the [E, D, D] graphs int8 0/1 edge indicators.
- The power iteration is float64-exact at int8 matmul cost (`stochastic_graph_centrality`): x is split
  into int8 slices whose products with the 0/1 edges sum exactly in int32. Plain float32 is not enough:
  sparse graphs (noisy features) have lambda_2 / lambda_1 ~ 0.998, networkx stops there thousands of
  iterations in, far from the eigenvector, and float32 rounding drifts the result by ~1e-4.
- Percentiles, the EM and the lookup run in float64 (jax.enable_x64 inside `_in_x64`, which also keeps the
  region correct under vmap of a jitted caller). Small or sparse classes give tied centralities, the mixture
  then collapses onto them (variance ~1e-20, alpha ~1e16), and the outcome (e.g. an all-zero lookup) is
  only reproduced with float64 and a beta density accurate for huge a, b (`_log_beta_pdf`, as scipy's).
- Every matmul is at Precision.HIGHEST (GPU/TPU defaults would use tf32/bf16).

As the release (spr_jax/testing/reference_filter.py transcribes the same rules with numpy, networkx, scipy):
- Samples enter the fit when p5 <= c <= p95 (inclusive, numpy's default linear percentiles), up to
  rounding-level ties (TIE_RTOL = 1e-12): the release's own outcome there depends on networkx's summation
  order, which splits mathematically tied centralities in their last bits.
- The lookup posterior is 1 where component 1's density is infinite, 0 where only component 0's is.
- Undefined fits: when the trimmed set is empty or its values are all equal (to 1e-12; classes of 1-3 samples, tied
  centralities, identical features), the release's method of moments divides by zero and the class's
  posterior is NaN in that graph; one NaN graph makes the mean over graphs NaN, and NaN > u is false. So
  such samples are never kept, as in the release, and their clean_p is stored as UNDEFINED_P (0): finite,
  and the first to be evicted should one enter a buffer anyway. The same holds if EM parameters ever stop
  being finite and positive (the release's scipy gives NaN densities there).
- Where the release's scipy raises (OverflowError on enormous alpha and beta) there is no reference
  outcome; here the fit goes on with the accurate log-density below and never crashes.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from spr_jax import compilation

_HI = jax.lax.Precision.HIGHEST
LOW_WEIGHT = 1e-5  # weight of a non-edge in a stochastic graph
TOL = 1e-6  # networkx's per-node convergence tolerance
EM_ITERS = 10
LOOKUP_BINS = 100
EPS_NAN = 1e-12
FIT_EPS = 1e-4
UNDEFINED_P = 0.0  # stored clean_p of a sample whose clean probability the release leaves undefined (NaN)
# Rounding-level ties: values this close (relative for centralities, absolute for the fitted values in
# [0, 1]) are treated as equal. Mathematically tied centralities (symmetric nodes) come out exactly equal
# here but differ in their last bits in networkx, whose summation order splits them at random.
TIE_RTOL = 1e-12

# The lookup grid (float64, as the reference).
_GRID = np.linspace(EPS_NAN, 1 - EPS_NAN, LOOKUP_BINS)
_LOG_GRID = np.log(_GRID)
_LOG1M_GRID = np.log1p(-_GRID)


def filter_draws(key, chunk_size: int, num_graphs: int):
    """graph_u float32 [E, D, D], keep_u float32 [D]: every uniform draw the filter uses."""
    k_graph, k_keep = jax.random.split(key)
    graph_u = jax.random.uniform(k_graph, (num_graphs, chunk_size, chunk_size), jnp.float32)
    keep_u = jax.random.uniform(k_keep, (chunk_size,), jnp.float32)
    return graph_u, keep_u


def similarity(features):
    """max(0, cosine similarity) of all pairs of a chunk, [D, D] float32."""
    f = features.astype(jnp.float32)
    f = f / jnp.linalg.norm(f, axis=1, keepdims=True)
    return jnp.maximum(jnp.dot(f, f.T, precision=_HI), 0.0)


def edge_matrix(sim, labels, graph_u):
    """B [E, D, D] int8 in {0, 1}: edges (S > u, plus the self-loops) of the E graphs, same class only.

    A graph's weights are A = 1e-5 M + (1 - 1e-5) B with M the same-class mask: 1 on edges and self-loops,
    1e-5 between unlinked samples of a class, 0 across classes. networkx.from_numpy_array keeps
    A[max(i, j), min(i, j)] for every pair, so u is read from the lower triangle (S is symmetric).
    """
    num_graphs, d = graph_u.shape[0], sim.shape[0]
    rows, cols = jnp.arange(d)[:, None], jnp.arange(d)[None, :]
    same = labels[:, None] == labels[None, :]
    if num_graphs <= 31:
        # Transposing [E, D, D] floats is the costly part on CPU: pack the E comparisons of a pair into the
        # bits of one int32 and transpose that single [D, D] array instead.
        shifts = jnp.arange(num_graphs, dtype=jnp.int32)[:, None, None]
        packed = jnp.sum((sim[None] > graph_u).astype(jnp.int32) << shifts, axis=0)
        packed = jnp.where(rows > cols, packed, packed.T)
        edge = ((packed[None] >> shifts) & 1) > 0
    else:
        edge = sim[None] > jnp.where(rows > cols, graph_u, jnp.swapaxes(graph_u, 1, 2))
    return (same[None] & (edge | (rows == cols))).astype(jnp.int8)


def graph_weights(sim, labels, graph_u):
    """The weights A [E, D, D] float32 of the E stochastic graphs (see `edge_matrix`), for inspection."""
    same = labels[:, None] == labels[None, :]
    return jnp.where(same[None], jnp.where(edge_matrix(sim, labels, graph_u) > 0, 1.0, LOW_WEIGHT), 0.0)


def _onehot(labels, num_classes, dtype=jnp.float32):
    return (labels[:, None] == jnp.arange(num_classes)[None, :]).astype(dtype)


def _class_sum(values, onehot):
    """Per-class sums of [E, D, ...] values -> [E, K, ...] (a matmul with the label one-hot)."""
    return jnp.einsum("ed...,dk->ek...", values, onehot, precision=_HI)


def _in_x64(fn):
    """`fn` traced with float64 enabled (jax.enable_x64), also when it is batched after tracing.

    A float64 region inside a jitted function breaks when that jitted function is vmapped afterwards:
    batching rules run outside the x64 context and mix float32 constants into float64 ops. As a
    custom_vmap, the region is batched by vmapping `fn` itself inside the context instead. fn takes and
    returns arrays (float32 / int32 at the boundary).
    """
    @jax.custom_batching.custom_vmap
    def run(*args):
        with jax.enable_x64(True):
            return fn(*args)

    @run.def_vmap
    def _batched(axis_size, in_batched, *args):
        in_axes = tuple(0 if b else None for b in in_batched)
        out = _in_x64(jax.vmap(fn, in_axes=in_axes))(*args)
        return out, jax.tree.map(lambda _: True, out)

    return run


def _power_iteration(matvec, labels, shape, num_classes, max_iter):
    """networkx's eigenvector_centrality loop for every (graph, class) at once, in float64 (call under x64).

    matvec(x) = A x for x [E, D] float64. A (graph, class) is frozen at the iteration where networkx
    returns (sum_class |x - x_prev| < n_class * 1e-6), or the loop ends after max_iter iterations
    (max_iter may be traced).
    """
    onehot = _onehot(labels, num_classes, jnp.float64)
    counts = onehot.sum(0)
    thresh = counts * TOL
    x0 = jnp.broadcast_to(1.0 / counts[labels], shape)
    done0 = jnp.broadcast_to(counts == 0, (shape[0], num_classes))

    def cond(state):
        it, _, done = state
        return (it < max_iter) & ~jnp.all(done)

    def body(state):
        it, x, done = state
        y = x + matvec(x)  # (A + I) x
        norm = jnp.sqrt(_class_sum(y * y, onehot))
        norm = jnp.where(norm == 0, 1.0, norm)
        y = y / norm[:, labels]
        err = _class_sum(jnp.abs(y - x), onehot)
        x = jnp.where(done[:, labels], x, y)  # converged classes keep the vector networkx returned
        return it + 1, x, done | (err < thresh)

    _, x, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), x0, done0))
    return x


def eigenvector_centrality(weights, labels, *, num_classes: int, max_iter: int = 6000):
    """networkx.eigenvector_centrality of every class's graph in every one of E graphs: [E, D] float32.

    weights: [E, D, D] symmetric, zero across classes, self-loops on the diagonal, any values. Computed in
    float64 (a slowly converging graph, lambda_2 / lambda_1 ~ 0.998, stops thousands of iterations in, far
    from the eigenvector, and float32 rounding drifts it by 1e-4 there). The filter itself uses the faster
    exact scheme of `stochastic_graph_centrality`.
    """
    def run(weights, labels):
        w64 = weights.astype(jnp.float64)
        matvec = lambda x: jnp.einsum("eij,ej->ei", w64, x, precision=_HI)  # noqa: E731
        x = _power_iteration(matvec, labels, weights.shape[:2], num_classes, max_iter)
        return x.astype(jnp.float32)

    return _in_x64(run)(weights, labels.astype(jnp.int32))


# x in (0, 1] as int8 slices: the first in units of 2^-6 (|q| <= 64), each next 7 bits finer (|q| <= 64).
_SLICE_UNITS = 2.0 ** -(6 + 7 * np.arange(8))  # 8 slices: x to 2^-56


def stochastic_graph_centrality(edges, labels, *, num_classes: int, max_iter: int = 6000):
    """Centralities [E, D] float64 (call under x64) of the graphs A = 1e-5 M + (1 - 1e-5) B, B = `edges`.

    Float64-exact without a float64 copy of the D x D graphs: x in (0, 1] is split into 8 int8 slices
    (x = sum_k q_k 2^-(6 + 7k) to 2^-56), B q_k is an exact integer matmul ([E, D, D] int8 x [E, D, 8] int8,
    int32 accumulation; exact in float32 too, should a backend convert: the sums stay below 2^24), and
    the slices are recombined in float64. The graphs take 1 byte per entry. M x is a per-class sum.
    """
    num_graphs, d = edges.shape[0], edges.shape[1]
    onehot = _onehot(labels, num_classes, jnp.float64)
    units = jnp.asarray(_SLICE_UNITS)

    def matvec(x):
        slices, rest = [], x
        for unit in _SLICE_UNITS:
            q = jnp.round(rest / unit)  # exact: |q| <= 64 and rest - q unit is representable
            slices.append(q)
            rest = rest - q * unit
        q = jnp.stack(slices, -1).astype(jnp.int8)  # [E, D, 8]
        bq = jnp.einsum("eij,ejs->eis", edges.astype(jnp.int8), q, preferred_element_type=jnp.int32)
        bx = jnp.einsum("eis,s->ei", bq.astype(jnp.float64), units, precision=_HI)
        mx = _class_sum(x, onehot)[:, labels]
        return (1 - LOW_WEIGHT) * bx + LOW_WEIGHT * mx

    return _power_iteration(matvec, labels, (num_graphs, d), num_classes, max_iter)


def _class_percentile(sorted_vals, starts, counts, q: int):
    """numpy's default (linear) percentile q of every class; sorted_vals [E, D] sorted by (label, value)."""
    pos = q * jnp.maximum(counts - 1, 0)  # virtual index q/100 * (n - 1), kept exact in integers
    lo, frac = pos // 100, (pos % 100).astype(sorted_vals.dtype) / 100
    hi = jnp.minimum(lo + 1, jnp.maximum(counts - 1, 0))
    d = sorted_vals.shape[-1]
    a = sorted_vals[:, jnp.clip(starts + lo, 0, d - 1)]
    b = sorted_vals[:, jnp.clip(starts + hi, 0, d - 1)]
    diff = b - a
    return jnp.where(frac >= 0.5, b - diff * (1 - frac), a + diff * frac)  # numpy's _lerp


def _normalise(c, p5, p95):
    lo = p5 + 1e-5
    x = (c - lo) / (p95 - lo + 1e-6)
    return jnp.where(x >= 1, 1 - 1e-3, jnp.where(x <= 0, 1e-3, x))


def _log1pmx(t):
    """log(1 + t) - t, accurate for small |t| (series) as well as large."""
    small = jnp.abs(t) < 1e-3
    ts = jnp.where(small, t, 0.0)
    series = ts * ts * (-1 / 2 + ts * (1 / 3 + ts * (-1 / 4 + ts * (1 / 5 + ts * (-1 / 6 + ts / 7)))))
    tb = jnp.where(small, 0.0, t)
    return jnp.where(small, series, jnp.log1p(tb) - tb)


def _stirling_main(z):
    return (z - 0.5) * jnp.log(z) - z + 0.5 * np.log(2 * np.pi)


def _stirling_delta(z):
    """lgamma(z) - [(z - 1/2) log z - z + log(2 pi) / 2], z > 0, to ~1e-14.

    Asymptotic series from 10 on; below, lgamma(z) = lgamma(z + 10) - log(z (z + 1) ... (z + 9)) moves the
    series to z + 10 (cheaper to compile than XLA's lgamma, and as accurate).
    """
    def series(w):
        wi = 1 / w
        wi2 = wi * wi
        return wi * (1 / 12 - wi2 * (1 / 360 - wi2 * (1 / 1260 - wi2 * (1 / 1680 - wi2 / 1188))))

    small = z < 10
    zs = jnp.where(small, z, 1.0)
    prod = zs
    for i in range(1, 10):
        prod = prod * (zs + i)
    shifted = _stirling_main(zs + 10) + series(zs + 10) - jnp.log(prod) - _stirling_main(zs)
    return jnp.where(small, shifted, series(jnp.where(small, 10.0, z)))


def _beta_log_density_terms(a, b):
    """Per-(graph, class, component) terms of `_log_beta_pdf`: a, b, m, 1 - m, and two log normalisers."""
    s = a + b
    m, m1 = a / s, b / s
    # log(m^a (1 - m)^b / B(a, b)) by Stirling: no cancellation of a log m against betaln for large a, b.
    log_norm = (0.5 * (jnp.log(a) + jnp.log(b) - jnp.log(s)) - 0.5 * np.log(2 * np.pi)
                + _stirling_delta(s) - _stirling_delta(a) - _stirling_delta(b))
    return a, b, m, m1, log_norm, log_norm - a * jnp.log(m) - b * jnp.log(m1)


def _log_beta_pdf(x, log_x, log_1mx, a, b, m, m1, log_norm, log_norm_far):
    """log beta.pdf(x; a, b), accurate (like scipy's boost pdf) even for a, b ~ 1e16.

    x^(a-1) (1-x)^(b-1) / B(a, b) = exp(a log(x/m) + b log((1-x)/(1-m))) m^a (1-m)^b / B(a, b) / (x (1-x)),
    m = a / (a + b). Near the mean the exponent is a log1pmx(u) + b log1pmx(v) (the linear terms cancel
    exactly), so a sharply peaked component (a tied cluster in the data) keeps its exact shape. Away from
    it, (a-1) log x + (b-1) log(1-x) - log B(a, b) is fine (and very negative when a, b are large).
    """
    u = (x - m) / m
    v = (m - x) / m1
    near = (jnp.abs(u) < 0.5) & (jnp.abs(v) < 0.5)
    expo_near = a * _log1pmx(jnp.where(near, u, 0.0)) + b * _log1pmx(jnp.where(near, v, 0.0))
    far = (a - 1) * log_x + (b - 1) * log_1mx + log_norm_far
    return jnp.where(near, expo_near + log_norm - log_x - log_1mx, far)


def beta_mixture(x, fit, labels, *, num_classes: int):
    """EM of docs/algorithm.md section 3 for every (graph, class): x [E, D] normalised values, fit [E, D] bool (trimmed set).

    Runs in the dtype of x (float64 in the filter). Returns alphas, betas, weights, each [E, K, 2], and a
    [E, K] `undefined` flag: the fit the release turns into NaN (an empty trimmed set, zero variance among
    the trimmed values, or parameters that stop being finite and positive). Undefined fits carry harmless
    stand-in parameters, so that their NaN never reaches other classes through the per-class matmuls. On CPU the cost is the number of XLA ops, not flops, so class parameters go to
    the samples by matmuls with the one-hot (a gather would be fused with, and recompute, its producer)
    and all per-class sums of a pass are one matmul.
    """
    num_graphs, dtype = x.shape[0], x.dtype
    onehot = _onehot(labels, num_classes).astype(dtype)
    xf = jnp.clip(x, FIT_EPS, 1 - FIT_EPS)
    x_, log_x, log_1mx = xf[..., None], jnp.log(xf)[..., None], jnp.log1p(-xf)[..., None]
    w_fit = fit.astype(dtype)[..., None]

    def to_samples(per_class):  # [E, K, 2, P] -> P arrays [E, D, 2]
        return jnp.einsum("ekcp,dk->pedc", per_class, onehot, precision=_HI)

    # Zero variance among the trimmed values (all equal, or none): the release's method of moments divides
    # by zero and its fit is NaN from the first M-step on.
    member = (onehot[None] > 0) & fit[..., None]  # [E, D, K]
    hi = jnp.max(jnp.where(member, xf[..., None], -jnp.inf), axis=1)
    lo = jnp.min(jnp.where(member, xf[..., None], jnp.inf), axis=1)
    undefined0 = ~(hi - lo > TIE_RTOL)

    def em_step(params):
        alphas, betas, weights, undefined = params
        terms = _beta_log_density_terms(alphas, betas)
        log_w = jnp.log(weights)
        per_class = jnp.stack(terms[:4] + (terms[4] + log_w, terms[5] + log_w), -1)
        lp = _log_beta_pdf(x_, log_x, log_1mx, *to_samples(per_class))  # log(w_k pdf_k)
        # Floored at 1e-12 and normalised over the components, in log space.
        lp = jnp.maximum(lp, jnp.log(EPS_NAN))
        ex = jnp.exp(lp - jnp.max(lp, axis=-1, keepdims=True))
        r = ex / jnp.sum(ex, axis=-1, keepdims=True) * w_fit
        # Weighted method of moments, two-pass like the reference.
        sums = _class_sum(jnp.stack([r, r * x_], -1), onehot)  # [E, K, 2, 2]
        s0 = jnp.where(sums[..., 0] > 0, sums[..., 0], 1.0)
        mean = sums[..., 1] / s0
        (mean_s,) = to_samples(mean[..., None])
        var = _class_sum(r * (x_ - mean_s) ** 2, onehot) / s0
        alphas = mean * (mean * (1 - mean) / var - 1)
        betas = alphas * (1 - mean) / mean
        weights = s0 / s0.sum(-1, keepdims=True)
        valid = (jnp.isfinite(alphas) & jnp.isfinite(betas) & (alphas > 0) & (betas > 0) & (var > 0)
                 & (sums[..., 0] > 0) & jnp.isfinite(weights))
        undefined = undefined | ~jnp.all(valid, axis=-1)
        # Undefined fits continue on stand-ins (a uniform density); their outcome is NaN whatever they do.
        stand_in = undefined[..., None]
        return (jnp.where(stand_in, 1.0, alphas), jnp.where(stand_in, 1.0, betas),
                jnp.where(stand_in, 0.5, weights), undefined)

    shape = (num_graphs, num_classes, 2)
    params = (jnp.broadcast_to(jnp.array([1.0, 2.0], dtype), shape),
              jnp.broadcast_to(jnp.array([2.0, 1.0], dtype), shape), jnp.full(shape, 0.5, dtype), undefined0)
    return jax.lax.fori_loop(0, EM_ITERS, lambda _, p: em_step(p), params)


def clean_lookup(alphas, betas, weights):
    """Component 1's posterior on the 100-point grid, held at its maximum from its argmax on: [..., 100]."""
    dtype = alphas.dtype
    grid = [jnp.asarray(g, dtype) for g in (_GRID, _LOG_GRID, _LOG1M_GRID)]
    # The per-class terms through a matmul with the identity: a dot is a fusion boundary, so XLA does not
    # recompute them (Stirling series, logs) for each of the 100 grid points.
    terms = jnp.stack(_beta_log_density_terms(alphas, betas) + (weights,), -1)
    terms = jnp.einsum("...p,pq->q...", terms, jnp.eye(terms.shape[-1], dtype=dtype), precision=_HI)
    *terms, w = [t[..., None] for t in terms]
    wp = w * jnp.exp(_log_beta_pdf(*grid, *terms))  # w_k pdf_k, [..., 2, 100]
    p0, p1 = wp[..., 0, :], wp[..., 1, :]
    # Literally the reference's float64 expression: whether the posterior reaches exactly 1.0 at the
    # first grid point or only at the last (which the argmax below turns into "all 1" or not) is decided
    # by its rounding.
    post = p1 / (p0 + p1 + EPS_NAN)
    # Infinite densities: 1 where component 1's is infinite (numpy: inf / inf), 0 where only p0 is.
    post = jnp.where(jnp.isinf(p1), 1.0, post)
    # First index of the maximum, as numpy's argmax (spelled out: jnp.argmax breaks under local x64).
    top = jnp.max(post, axis=-1, keepdims=True)
    bins = jnp.arange(LOOKUP_BINS)
    peak = jnp.min(jnp.where(post == top, bins, LOOKUP_BINS), axis=-1, keepdims=True)
    return jnp.where(bins >= peak, top, post)


def _clean_posterior64(cent, labels, num_classes):
    """Per-graph clean probability [E, D] float64 from centralities [E, D] (call under x64)."""
    num_graphs, d = cent.shape
    cent = cent.astype(jnp.float64)
    counts = jnp.zeros(num_classes, jnp.int32).at[labels].add(1)
    starts = jnp.cumsum(counts) - counts
    _, sorted_c = jax.lax.sort((jnp.broadcast_to(labels, (num_graphs, d)), cent), dimension=-1, num_keys=2)
    p5 = _class_percentile(sorted_c, starts, counts, 5)[:, labels]
    p95 = _class_percentile(sorted_c, starts, counts, 95)[:, labels]
    tol = TIE_RTOL * jnp.abs(p95)
    fit = (cent >= p5 - tol) & (cent <= p95 + tol)  # inclusive, as the release (ties: see TIE_RTOL)
    x = _normalise(cent, p5, p95)
    alphas, betas, weights, undefined = beta_mixture(x, fit, labels, num_classes=num_classes)
    lookup = clean_lookup(alphas, betas, weights)  # [E, K, 100]
    undefined = undefined | ~jnp.all(jnp.isfinite(lookup), axis=-1)
    bins = jnp.clip((LOOKUP_BINS * jnp.clip(x, EPS_NAN, 1 - EPS_NAN)).astype(jnp.int32), 0, LOOKUP_BINS - 1)
    flat = lookup.reshape(num_graphs, num_classes * LOOKUP_BINS)
    value = jnp.take_along_axis(flat, labels * LOOKUP_BINS + bins, axis=-1)
    bad = undefined[:, labels] | ~jnp.isfinite(value) | ~jnp.isfinite(x)
    return jnp.where(bad, jnp.nan, value)


def centrality_clean_posterior(cent, labels, *, num_classes: int):
    """Per-graph clean probability [E, D] float32 of every sample from its class's centralities [E, D].

    Percentile trimming, normalisation, EM and lookup run in float64: the mixture fit is numerically
    fragile in exactly the cases small or sparse classes produce (a cluster of tied values makes a
    component collapse to variance ~1e-20, alpha ~1e16), where float32 gives different answers from the
    float64 reference. The data are [E, D], so this costs little.
    """
    def fn(cent, labels):
        return _clean_posterior64(cent, labels, num_classes).astype(jnp.float32)

    return _in_x64(fn)(cent, labels.astype(jnp.int32))


def _filter64(edges, labels, keep_u, num_classes, max_iter):
    cent = stochastic_graph_centrality(edges, labels, num_classes=num_classes, max_iter=max_iter)
    clean_p = _clean_posterior64(cent, labels, num_classes).mean(0)  # float64, as the reference
    # NaN (the release's undefined fit in any graph) > u is false: never kept; stored as a finite value.
    keep = clean_p > keep_u
    return jnp.where(jnp.isnan(clean_p), UNDEFINED_P, clean_p).astype(jnp.float32), keep


@functools.partial(compilation.jit, static_argnames=("num_classes", "max_iter"))
def self_centered_filter(features, labels, graph_u, keep_u, *, num_classes: int, max_iter: int = 6000):
    """clean_p [D] float32 and keep [D] bool of one chunk, given its draws (see `filter_draws`).

    features: [D, F] expert features (L2-normalised; normalised again here); labels: [D] int noisy labels in
    [0, num_classes). clean_p is the mean over the E graphs of each sample's clean posterior; a sample is
    kept when clean_p > keep_u. A sample of an undefined (graph, class) fit is never kept and its clean_p is
    UNDEFINED_P (see the module docstring).
    """
    labels = labels.astype(jnp.int32)
    edges = edge_matrix(similarity(features), labels, graph_u)
    fn = functools.partial(_filter64, num_classes=num_classes, max_iter=max_iter)
    return _in_x64(fn)(edges, labels, keep_u)


@functools.partial(compilation.jit, static_argnames=("num_classes", "num_graphs", "max_iter"))
def purify_chunk(key, features, labels, *, num_classes: int, num_graphs: int = 5, max_iter: int = 6000):
    """Draws (from `key`) plus the filter: clean_p [D] float32, keep [D] bool."""
    graph_u, keep_u = filter_draws(key, features.shape[0], num_graphs)
    return self_centered_filter(features, labels, graph_u, keep_u, num_classes=num_classes, max_iter=max_iter)
