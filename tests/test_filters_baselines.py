"""The baseline filters (spr_jax/filters/aum.py, incv.py, knn.py; docs/algorithm.md, "Other filters"): each one's
defining step against a direct numpy computation on a tiny chunk (the linear classifier's gradient steps, AUM's
margins and threshold rule, INCV's selection and removal, k-NN's agreement), their fitness for the seam (checked,
vmapped, finite, deterministic given the key), their settings and keys, and a tiny comparison run with each."""
import inspect
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT
from spr_jax import comparison, configlib, filters, plugins, run_identity
from spr_jax.filters import aum, incv, knn, linear_probe

BASELINES = ("aum", "incv", "knn")


# --- numpy transcriptions -----------------------------------------------------------------------------------

def np_unit(x):
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def np_softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_margin(z, y):
    own = z[np.arange(len(y)), y]
    other = z.copy()
    other[np.arange(len(y)), y] = -np.inf
    return own - other.max(axis=1)


def np_train(x, y, k, steps, lr):
    """Full-batch gradient descent on the mean cross-entropy of (x, y) from zero weights, float64. Returns
    W, b and the sum over steps of every sample's margin after each step."""
    w, b = np.zeros((x.shape[1], k)), np.zeros(k)
    onehot = np.eye(k)[y]
    margin_sum = np.zeros(len(y))
    for _ in range(steps):
        g = (np_softmax(x @ w + b) - onehot) / len(y)
        w, b = w - lr * x.T @ g, b - lr * g.sum(0)
        margin_sum += np_margin(x @ w + b, y)
    return w, b, margin_sum


def chunk(seed, d=24, f=6, k=4, flipped=3, spread=0.35):
    """Features in k clusters around random unit directions, labels = cluster, `flipped` labels changed."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, f))
    truth = np.arange(d) % k
    x = centres[truth] + spread * rng.normal(size=(d, f))
    labels = truth.copy()
    wrong = rng.choice(d, flipped, replace=False)
    labels[wrong] = (truth[wrong] + 1 + rng.integers(0, k - 1, flipped)) % k
    return x.astype(np.float32), labels.astype(np.int32), wrong


# --- the linear classifier ----------------------------------------------------------------------------------

def test_linear_probe_steps_match_numpy_gradient_descent():
    x, y, _ = chunk(0, d=11, f=5, k=3)
    xu = np_unit(x)
    weight = np.ones(11)
    weight[[2, 7]] = 0.0  # evaluated, not trained on
    (w, b), margin_sum = linear_probe.train(jnp.asarray(xu, jnp.float32), jnp.asarray(y), jnp.asarray(weight),
                                            num_outputs=3, steps=7, lr=0.8, track_margins=True)
    keep = weight > 0
    wn, bn, _ = np_train(xu[keep], y[keep], 3, 7, 0.8)
    np.testing.assert_allclose(np.asarray(w), wn, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(b), bn, rtol=1e-5, atol=1e-6)
    # margins of every sample (the two untrained too) under the weights after each step
    expected = np.zeros(11)
    wt, bt = np.zeros((5, 3)), np.zeros(3)
    for _ in range(7):
        g = (np_softmax(xu[keep] @ wt + bt) - np.eye(3)[y[keep]]) / keep.sum()
        wt, bt = wt - 0.8 * xu[keep].T @ g, bt - 0.8 * g.sum(0)
        expected += np_margin(xu @ wt + bt, y)
    np.testing.assert_allclose(np.asarray(margin_sum), expected, rtol=1e-5, atol=1e-5)


# --- AUM ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("labels, want", [([0] * 12, 6), ([0, 1] * 6, 4), (list(range(12)), 1), ([0, 1, 2] * 4, 3)])
def test_aum_threshold_sets_are_two_disjoint_sets_of_an_average_class(labels, want):
    labels = jnp.asarray(labels, jnp.int32)
    sets = np.asarray(aum.threshold_sets(jax.random.PRNGKey(3), labels, 12))
    assert sets.shape == (2, 12) and sets[0].sum() == want and sets[1].sum() == want  # max(1, D // (C + 1))
    assert not (sets[0] & sets[1]).any()
    again = np.asarray(aum.threshold_sets(jax.random.PRNGKey(3), labels, 12))
    assert (again == sets).all()


@pytest.mark.parametrize("q", [0.0, 12.5, 50.0, 90.0, 99.0, 100.0])
def test_masked_percentile_is_numpys_linear_percentile(q):
    rng = np.random.default_rng(int(q))
    for n in (1, 2, 7, 30):
        values = rng.normal(size=40).astype(np.float32)
        mask = np.zeros(40, bool)
        mask[rng.choice(40, n, replace=False)] = True
        got = float(aum.masked_percentile(jnp.asarray(values), jnp.asarray(mask), q))
        assert got == pytest.approx(np.percentile(values[mask].astype(np.float64), q), rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aum_margins_and_threshold_rule_match_numpy(seed):
    x, y, _ = chunk(seed)
    k, steps, lr, q = 4, 25, 1.5, 90.0
    key = jax.random.PRNGKey(seed)
    clean_p, keep = aum.aum_filter(key, jnp.asarray(x), jnp.asarray(y), num_classes=k, aum_steps=steps, aum_lr=lr,
                                   aum_percentile=q)
    sets = np.asarray(aum.threshold_sets(key, jnp.asarray(y), k))  # the draws: not what is under test
    xu, aums, thresholds = np_unit(x), [], []
    for run in range(2):
        assigned = np.where(sets[run], k, y)  # threshold samples: the extra class k
        aum_run = np_train(xu, assigned, k + 1, steps, lr)[2] / steps
        aums.append(aum_run)
        thresholds.append(np.percentile(aum_run[sets[run]], q))
    own = np.where(sets[0], aums[1], aums[0])  # run 1's threshold samples are measured in run 2
    threshold = np.where(sets[0], thresholds[1], thresholds[0])
    np.testing.assert_allclose(np.asarray(clean_p), 1 / (1 + np.exp(-(own - threshold))), rtol=1e-4, atol=1e-5)
    assert np.abs(own - threshold).min() > 1e-3  # no decision rests on rounding
    assert (np.asarray(keep) == (own > threshold)).all()


def test_aum_drops_labels_that_contradict_their_cluster():
    x, y, wrong = chunk(5, d=40, f=8, k=3, flipped=4, spread=0.2)
    clean_p, keep = aum.aum_filter(jax.random.PRNGKey(0), jnp.asarray(x), jnp.asarray(y), num_classes=10)
    keep, clean_p = np.asarray(keep), np.asarray(clean_p)
    assert not keep[wrong].any()
    assert keep[np.setdiff1d(np.arange(40), wrong)].mean() > 0.8
    assert clean_p[wrong].max() < np.delete(clean_p, wrong).min()  # the flipped rank lowest


# --- INCV ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("c", [2, 3, 10])
def test_incv_noise_estimate_solves_the_agreement_equation(c):
    for eps in (0.0, 0.1, 0.3, 0.45):
        a = (1 - eps) ** 2 + eps ** 2 / (c - 1)
        assert float(incv.noise_rate_estimate(jnp.float32(a), jnp.int32(c))) == pytest.approx(eps, abs=2e-3)
    assert float(incv.noise_rate_estimate(jnp.float32(0.5 / c), jnp.int32(c))) == pytest.approx((c - 1) / c)


def np_noise_estimate(a, c):
    """Bisection on [0, (c - 1) / c], where (1 - e)^2 + e^2 / (c - 1) decreases from 1 to 1 / c."""
    lo, hi = 0.0, (c - 1) / c
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if (1 - mid) ** 2 + mid ** 2 / (c - 1) > a else (lo, mid)
    return (lo + hi) / 2


def np_incv(x, y, k, key, iterations, steps, lr, remove_ratio):
    """Chen et al.'s procedure on index sets, every classifier trained on its own samples only."""
    d = len(y)
    xu = np_unit(x)
    selected, candidate, clean_p = set(), set(range(d)), np.zeros(d)
    gaps = [np.inf]  # the closest call of any decision (argmax, or the n-th largest loss against the next)
    c = max(len(np.unique(y)), 2)
    ratio = max(remove_ratio, 0.0)
    for i in range(iterations):
        u = np.asarray(jax.random.uniform(jax.random.fold_in(key, i), (d,)))
        order = sorted(candidate, key=lambda j: u[j])
        c1, c2 = order[:len(order) // 2], order[len(order) // 2:]

        def evaluate(train, test):
            train, test = sorted(train), sorted(test)
            w, b, _ = np_train(xu[train], y[train], k, steps, lr)
            p = np_softmax(xu[test] @ w + b)
            agree = [j for j, row in zip(test, p) if row.argmax() == y[j]]
            for j, row in zip(test, p):
                gaps.append(abs(row[y[j]] - np.delete(row, y[j]).max()))
            loss = {j: -np.log(row[y[j]]) for j, row in zip(test, p)}
            for j, row in zip(test, p):
                clean_p[j] = row[y[j]]
            return agree, loss

        s1, loss1 = evaluate(selected | set(c1), c2)
        if i == 0 and remove_ratio < 0:
            eps = np_noise_estimate(len(s1) / len(c2), c)
            ratio = min(2.0, eps / (1 - eps))
        r1 = largest(loss1, c2, int(np.floor(ratio * len(s1))), gaps)
        s2, loss2 = evaluate(selected | set(c2), c1)
        r2 = largest(loss2, c1, int(np.floor(ratio * len(s2))), gaps)
        selected |= set(s1) | set(s2)
        candidate -= set(s1) | set(s2) | set(r1) | set(r2)
    keep = np.zeros(d, bool)
    keep[sorted(selected)] = True
    return clean_p, keep, min(gaps)


def largest(loss, among, n, gaps):
    order = sorted(among, key=lambda j: (-loss[j], j))
    if 0 < n < len(order):
        gaps.append(loss[order[n - 1]] - loss[order[n]])
    return order[:n]


@pytest.mark.parametrize("seed, remove_ratio", [(0, -1.0), (1, -1.0), (2, 0.5), (3, 0.0)])
def test_incv_selection_matches_numpy(seed, remove_ratio):
    x, y, _ = chunk(seed, d=26, flipped=6, spread=0.6)
    key = jax.random.PRNGKey(10 + seed)
    clean_p, keep = incv.incv_filter(key, jnp.asarray(x), jnp.asarray(y), num_classes=5, incv_iterations=3,
                                     incv_steps=20, incv_lr=1.0, incv_remove_ratio=remove_ratio)
    want_p, want_keep, closest = np_incv(x, y, 5, key, 3, 20, 1.0, remove_ratio)
    assert closest > 1e-4  # no decision rests on rounding
    assert (np.asarray(keep) == want_keep).all()
    np.testing.assert_allclose(np.asarray(clean_p), want_p, rtol=1e-4, atol=1e-5)
    assert 0 < want_keep.sum() < 26  # the case selects some and not all


def test_incv_drops_labels_that_contradict_their_cluster():
    x, y, wrong = chunk(6, d=40, f=8, k=3, flipped=4, spread=0.2)
    _, keep = incv.incv_filter(jax.random.PRNGKey(1), jnp.asarray(x), jnp.asarray(y), num_classes=10)
    keep = np.asarray(keep)
    assert not keep[wrong].any() and keep[np.setdiff1d(np.arange(40), wrong)].mean() > 0.8


# --- k-NN ---------------------------------------------------------------------------------------------------

def test_knn_agreement_matches_numpy_and_the_example(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "examples"))
    import knn_filter
    x, y, _ = chunk(4, d=30, flipped=6, spread=0.8)
    clean_p, keep = knn.knn_filter(None, jnp.asarray(x), jnp.asarray(y), num_classes=4, knn_k=6)
    xu = np_unit(x)
    sim = xu @ xu.T
    np.fill_diagonal(sim, -np.inf)
    want = np.array([np.mean(y[np.argsort(-sim[i], kind="stable")[:6]] == y[i]) for i in range(30)])
    np.testing.assert_allclose(np.asarray(clean_p), want, atol=1e-7)
    assert (np.asarray(keep) == (want > 0.5)).all() and (want == 0.5).any() and (want > 0.5).any()  # a tie: dropped
    ex_p, ex_keep = knn_filter.knn_agreement(None, jnp.asarray(x), jnp.asarray(y), num_classes=4, k=6)
    np.testing.assert_array_equal(np.asarray(ex_p), np.asarray(clean_p))  # the example's rule, built in
    np.testing.assert_array_equal(np.asarray(ex_keep), np.asarray(keep))


def test_knn_uses_at_most_the_other_samples():
    clean_p, keep = knn.knn_filter(None, jnp.eye(3), jnp.asarray([0, 0, 1]), num_classes=2, knn_k=10)
    np.testing.assert_allclose(np.asarray(clean_p), [0.5, 0.5, 0.0])
    assert not np.asarray(keep).any()


# --- the seam -----------------------------------------------------------------------------------------------

def _bound(name, **settings):
    fn = plugins.resolve(name, filters.FILTERS, "config.filter.kind")
    block = dict(configlib.base_config().filter.to_dict(), **settings)
    return plugins.bind(fn, plugins.accepted_settings(fn, block, exclude=("num_classes",)))


def test_config_defaults_are_the_functions_defaults_and_every_setting_is_listed():
    block = configlib.base_config().filter
    listed = set()
    for name in BASELINES:
        fn = plugins.resolve(name, filters.FILTERS, "config.filter.kind")
        params = {p.name: p.default for p in inspect.signature(fn).parameters.values()
                  if p.kind == inspect.Parameter.KEYWORD_ONLY and p.name != "num_classes"}
        assert params and all(block[p] == v and type(block[p]) is type(v) for p, v in params.items()), name
        listed |= set(params)
    assert listed == set(filters.BASELINE_SETTINGS)


@pytest.mark.parametrize("name", BASELINES)
def test_each_filter_passes_the_seam_check_vmaps_and_is_deterministic(name):
    fn = _bound(name, aum_steps=10, incv_steps=10, incv_iterations=2)
    filters.check(fn, chunk_size=40, feature_dim=16, num_classes=10)
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(3, 40, 16)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=-1, keepdims=True)
    labels = rng.integers(0, 10, (3, 40)).astype(np.int32)
    keys = jax.random.split(jax.random.PRNGKey(7), 3)
    batched = jax.jit(jax.vmap(lambda k, f, l: fn(k, f, l, num_classes=10)))
    clean_p, keep = map(np.asarray, batched(keys, feats, labels))
    assert clean_p.dtype == np.float32 and keep.dtype == bool
    assert np.isfinite(clean_p).all() and (clean_p >= 0).all() and (clean_p <= 1).all()
    for c in range(3):
        one_p, one_keep = fn(keys[c], feats[c], labels[c], num_classes=10)
        np.testing.assert_allclose(np.asarray(one_p), clean_p[c], rtol=1e-5, atol=1e-6)
        assert (np.asarray(one_keep) == keep[c]).all()
        again_p, again_keep = fn(keys[c], feats[c], labels[c], num_classes=10)
        assert (np.asarray(again_p) == np.asarray(one_p)).all() and (np.asarray(again_keep) == np.asarray(one_keep)).all()
    if name != "knn":  # their draws come from the key
        other = fn(jax.random.PRNGKey(8), feats[0], labels[0], num_classes=10)[0]
        assert not np.array_equal(np.asarray(other), clean_p[0])


@pytest.mark.parametrize("name, settings", [("aum", {"aum_lr": 1e30}), ("incv", {"incv_lr": 1e30})])
def test_a_diverging_classifier_gives_finite_clean_p(name, settings):
    x, y, _ = chunk(0)
    clean_p, keep = _bound(name, **settings)(jax.random.PRNGKey(0), jnp.asarray(x), jnp.asarray(y), num_classes=4)
    assert np.isfinite(np.asarray(clean_p)).all()


@pytest.mark.parametrize("field, value", [("filter.aum_percentile", 100.5), ("filter.aum_lr", 0.0),
                                          ("filter.incv_iterations", 0), ("filter.knn_k", 0),
                                          ("filter.incv_remove_ratio", 2.5)])
def test_out_of_range_settings_are_one_line_config_errors(field, value):
    c = configlib.base_config()
    c.filter[field.split(".")[1]] = value
    with pytest.raises(configlib.ConfigError) as e:
        configlib.validate(c)
    assert str(e.value).startswith(f"config.{field}={value!r} is outside") and "\n" not in str(e.value)


def test_run_keys_hold_a_baseline_setting_only_where_the_filter_reads_it():
    c = configlib.base_config()
    assert run_identity.filter_settings(c) == {"kind": "centrality", "num_graphs": 5, "max_iter": 6000}  # as before
    c.filter.kind = "aum"
    assert set(run_identity.filter_settings(c)) == {"kind", "num_graphs", "max_iter", "aum_steps", "aum_lr",
                                                    "aum_percentile"}
    c.filter.kind = "none"
    assert run_identity.filter_settings(c) == {"kind": "none", "num_graphs": 5, "max_iter": 6000}


# --- a tiny comparison -------------------------------------------------------------------------------------

def test_the_filter_methods_run_on_the_tiny_config_and_report_their_filter(tiny_config, tmp_path):
    methods = ["spr_aum", "spr_incv", "spr_knn"]
    rows = comparison.run(tiny_config, str(tmp_path), methods=methods, progress=False)
    assert [r["method"] for r in rows] == methods
    for r in rows:
        assert 0 < r["final_purity"] <= 1 and 0 <= r["filter_precision"] <= 1 and 0 <= r["noisy_removed"] <= 1, r
    doc = json.load(open(tmp_path / "compare.json"))
    assert {c["method"] for c in doc["cells"]} == set(methods) and all(c["filter_precision"]["n"] == 1
                                                                        for c in doc["cells"])
    text = open(tmp_path / "compare.md").read()
    assert "filter precision (%)" in text and "noisy removed (%)" in text and "buffer purity (%)" in text
    for m in methods:
        summary = json.load(open(tmp_path / m / f"rate_{tiny_config.noise.rate}" / f"seed_{tiny_config.seed}"
                                 / "summary.json"))
        assert summary["method"]["filter"] == m.split("_")[1]
