"""The comparison's continual-learning methods (issue 33), each defining step against a direct numpy computation
on a tiny case: online EWC's Fisher, penalty and consolidation; MIR's retrieval choice; PRS's admission and
eviction (partitioning reservoir sampling, power 0, is buffer.policy=class_balanced); and compare.tex."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from spr_jax import buffers, comparison, losses, online, online_methods
from spr_jax.buffers import baselines
from spr_jax.buffers import purified as B
from spr_jax.segment_scan import TrainData

from conftest import tiny

K = 3  # classes
PIX = 4  # a 2x2x1 image: 4 inputs


class Linear(nn.Module):
    """logits = x W + b on the flattened image: a softmax regression whose gradients numpy can write down."""
    k: int = K

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(self.k)(x.reshape(x.shape[0], -1))


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return {"Dense_0": {"kernel": jnp.asarray(rng.normal(0, 0.7, (PIX, K)), jnp.float32),
                        "bias": jnp.asarray(rng.normal(0, 0.3, K), jnp.float32)}}


def _np(params):
    return np.asarray(params["Dense_0"]["kernel"], np.float64), np.asarray(params["Dense_0"]["bias"], np.float64)


def _softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _nll(w, b, x, y):
    """Per-sample -log p(y | x) of the softmax regression, [B]."""
    p = _softmax(x @ w + b)
    return -np.log(p[np.arange(len(y)), y])


def _grads(w, b, x, y):
    """Per-sample gradients of -log p(y | x): d/dW = x (p - onehot)^T, d/db = p - onehot."""
    r = _softmax(x @ w + b) - np.eye(K)[y]
    return np.einsum("nd,nk->ndk", x, r), r


def _data(seed=0, n=40):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 2, 2, 1)).astype(np.uint8)
    noisy = rng.integers(0, K, n).astype(np.int32)
    return TrainData(images=jnp.asarray(images), noisy=jnp.asarray(noisy), corrupt=jnp.zeros(n, bool))


def _x(data, idx):
    return np.asarray(data.images)[idx].reshape(len(idx), -1).astype(np.float64) / 255.0


def _settings(**kw):
    base = dict(classifier=Linear(), lr=1e-2, replay=True, stream_batch=4, replay_batch=3,
                loss=losses.cross_entropy, policy=baselines.RESERVOIR, num_classes=K)
    return online.OnlineSettings(**{**base, **kw})


def _learner(params, lr=1e-2):
    from spr_jax import simclr
    return simclr.TrainState.create(apply_fn=None, params=params, tx=online.optimizer(lr), batch_stats={})


# --- online EWC ------------------------------------------------------------------------------------------------

def test_ewc_fisher_penalty_and_consolidation_match_numpy():
    data = _data()
    idx = np.arange(6)
    x, y = _x(data, idx), np.asarray(data.noisy)[idx]
    params = _params(1)
    w, b = _np(params)

    def nll(p):
        logits = Linear().apply({"params": p}, jnp.asarray(x, jnp.float32))
        return losses.per_sample_cross_entropy(logits, jnp.asarray(y))

    np.testing.assert_allclose(np.asarray(nll(params)), _nll(w, b, x, y), rtol=1e-5)
    fisher = online_methods.empirical_fisher(nll, params)
    gw, gb = _grads(w, b, x, y)
    np.testing.assert_allclose(np.asarray(fisher["Dense_0"]["kernel"]), np.mean(gw ** 2, axis=0), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(np.asarray(fisher["Dense_0"]["bias"]), np.mean(gb ** 2, axis=0), rtol=1e-4, atol=1e-7)
    # Not the square of the batch's mean gradient (what a cheaper estimate would give).
    assert not np.allclose(np.asarray(fisher["Dense_0"]["bias"]), np.mean(gb, axis=0) ** 2, rtol=1e-2)

    anchor = _params(2)
    wa, ba = _np(anchor)
    ewc = online_methods.EWCState(anchor=anchor, fisher=fisher)
    lam = 7.5
    want = 0.5 * lam * (np.sum(np.mean(gw ** 2, 0) * (w - wa) ** 2) + np.sum(np.mean(gb ** 2, 0) * (b - ba) ** 2))
    assert float(online_methods.ewc_penalty(params, ewc, lam)) == pytest.approx(want, rel=1e-5)
    assert float(online_methods.ewc_penalty(anchor, ewc, lam)) == 0.0  # no penalty at the anchor

    later = online_methods.ewc_consolidate(ewc, params, fisher, decay=0.5)  # F* <- 0.5 F* + F_chunk
    np.testing.assert_allclose(np.asarray(later.fisher["Dense_0"]["bias"]), 1.5 * np.mean(gb ** 2, 0), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(later.anchor["Dense_0"]["kernel"]), np.asarray(params["Dense_0"]["kernel"]))


def test_an_ewc_step_adds_the_penalty_s_gradient_to_the_loss_s():
    data = _data()
    idx = np.arange(4)
    x, y = _x(data, idx), np.asarray(data.noisy)[idx]
    params, anchor = _params(1), _params(3)
    w, b = _np(params)
    wa, ba = _np(anchor)
    rng = np.random.default_rng(5)
    fw, fb = rng.random((PIX, K)), rng.random(K)
    ewc = online_methods.EWCState(anchor=anchor, fisher={"Dense_0": {"kernel": jnp.asarray(fw, jnp.float32),
                                                                    "bias": jnp.asarray(fb, jnp.float32)}})
    s = _settings(replay=False, ewc_lambda=3.0)
    learner, _ = online._update(s, _learner(params), jnp.asarray(x, jnp.float32), jnp.asarray(y),
                                jnp.ones(4, jnp.float32), 0, ewc)
    gw, gb = _grads(w, b, x, y)
    grads = {"Dense_0": {"kernel": jnp.asarray(gw.mean(0) + 3.0 * fw * (w - wa), jnp.float32),
                         "bias": jnp.asarray(gb.mean(0) + 3.0 * fb * (b - ba), jnp.float32)}}
    tx = online.optimizer(1e-2)
    updates, _ = tx.update(grads, tx.init(params), params)
    want = optax.apply_updates(params, updates)
    for leaf in ("kernel", "bias"):
        np.testing.assert_allclose(np.asarray(learner.params["Dense_0"][leaf]), np.asarray(want["Dense_0"][leaf]),
                                   rtol=1e-5, atol=1e-6)


def test_an_ewc_chunk_consolidates_the_mean_fisher_of_its_batches_and_moves_the_anchor():
    data = _data()
    s = _settings(replay=False, stream_batch=4, ewc_lambda=2.0, ewc_decay=0.5)
    state = online.init_state(s, 0, (2, 2, 1), 8)
    state = state.replace(learner=_learner(_params(1)), ewc=online_methods.ewc_init(_params(1)))
    chunks = [np.arange(0, 4, dtype=np.int32), np.arange(4, 8, dtype=np.int32)]  # one batch per chunk
    fishers, anchors = [], []
    for idx in chunks:
        w, b = _np(state.learner.params)
        gw, gb = _grads(w, b, _x(data, idx), np.asarray(data.noisy)[idx])  # at the parameters before the step
        fishers.append((np.mean(gw ** 2, 0), np.mean(gb ** 2, 0)))
        state, _ = online.chunk_step(s, data, state, jnp.asarray(idx), jnp.ones(4), jnp.ones(4, bool))
        anchors.append(state.learner.params)
    np.testing.assert_allclose(np.asarray(state.ewc.fisher["Dense_0"]["kernel"]),
                               0.5 * fishers[0][0] + fishers[1][0], rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(np.asarray(state.ewc.fisher["Dense_0"]["bias"]),
                               0.5 * fishers[0][1] + fishers[1][1], rtol=1e-4, atol=1e-8)
    np.testing.assert_array_equal(np.asarray(state.ewc.anchor["Dense_0"]["kernel"]),
                                  np.asarray(anchors[-1]["Dense_0"]["kernel"]))


# --- MIR -------------------------------------------------------------------------------------------------------

def _memory(valid_slots, size=8, seed=0):
    rng = np.random.default_rng(seed)
    buf = baselines.reservoir_init(size, K)
    valid = np.zeros(size, bool)
    valid[valid_slots] = True
    index = np.where(valid, rng.permutation(np.arange(10, 40))[:size], -1).astype(np.int32)
    label = np.where(valid, rng.integers(0, K, size), -1).astype(np.int32)
    return buf.replace(index=jnp.asarray(index), label=jnp.asarray(label), valid=jnp.asarray(valid))


def test_mir_candidates_are_distinct_valid_slots():
    valid = jnp.asarray([True, False, True, True, False, True, True, True])
    for seed in range(5):
        slots, ok = online_methods.mir_candidates(valid, jax.random.PRNGKey(seed), 4)
        assert len(set(np.asarray(slots).tolist())) == 4 and np.asarray(valid)[np.asarray(slots)].all()
        assert np.asarray(ok).all()
    slots, ok = online_methods.mir_candidates(valid, jax.random.PRNGKey(0), 7)  # more than the 6 valid
    assert sorted(np.asarray(slots)[np.asarray(ok)].tolist()) == [0, 2, 3, 5, 6, 7] and ok.sum() == 6


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mir_replays_the_candidates_whose_loss_the_virtual_step_raises_most(seed):
    data = _data(seed)
    buf = _memory([0, 1, 2, 3, 5, 6, 7], seed=seed)  # slot 4 empty
    s = _settings(retrieval="mir", mir_candidates=6, mir_step=2.0, replay_batch=3)
    params = _params(seed)
    w, b = _np(params)
    idx = np.arange(4)
    x, y = _x(data, idx), np.asarray(data.noisy)[idx]
    key = jax.random.PRNGKey(seed)
    slots, real = online._mir_slots(s, data, _learner(params), buf, key, jnp.asarray(x, jnp.float32), jnp.asarray(y), 0)

    cand, ok = map(np.asarray, online_methods.mir_candidates(buf.valid, key, 6))
    gw, gb = _grads(w, b, x, y)
    wv, bv = w - 2.0 * gw.mean(0), b - 2.0 * gb.mean(0)  # the virtual SGD step on the stream batch's mean loss
    xc, yc = _x(data, np.asarray(buf.index)[cand]), np.asarray(buf.label)[cand]
    rise = _nll(wv, bv, xc, yc) - _nll(w, b, xc, yc)
    want = cand[np.argsort(-rise, kind="stable")[:3]]
    np.testing.assert_array_equal(np.asarray(slots), want)
    assert np.asarray(real).all()


def test_mir_with_fewer_memory_samples_than_a_replay_batch_marks_the_missing_ones():
    data = _data()
    buf = _memory([2, 6])
    s = _settings(retrieval="mir", mir_candidates=5, replay_batch=3)
    x = jnp.asarray(_x(data, np.arange(4)), jnp.float32)
    slots, real = online._mir_slots(s, data, _learner(_params()), buf, jax.random.PRNGKey(0), x, data.noisy[:4], 0)
    assert np.asarray(real).tolist() == [True, True, False]
    assert sorted(np.asarray(slots)[:2].tolist()) == [2, 6]


def test_mir_select_breaks_ties_by_candidate_order_and_never_ranks_a_nan_first():
    top, real = online_methods.mir_select(jnp.zeros(5), jnp.asarray([1.0, 3.0, 1.0, np.nan, 3.0]),
                                          jnp.asarray([True, True, True, True, False]), 3)
    assert np.asarray(top).tolist() == [1, 0, 2] and np.asarray(real).all()


# --- PRS -------------------------------------------------------------------------------------------------------

def _prs_reference(size, k, index, label, draws, rho=0.0):
    """Partitioning reservoir sampling (Kim et al., ECCV 2020) for single labels, from the paper: the target
    share of class i is n_i^rho / sum_j n_j^rho over the classes in memory (n: offers so far); a sample of class
    y enters a full memory with probability min(1, m_y / n_y) (m_y = P x its share; a class's first offer
    always), and then a class j is drawn with probability softmax_j(count_j - m_j) (inverse CDF over ascending
    ids, draw class_u) and a uniform member of it leaves (the floor(evict_u count_j)-th in slot order)."""
    slots = [None] * size
    n = [0] * k
    for t, (i, y) in enumerate(zip(index, label)):
        n_prev = n[y]
        n[y] += 1
        if None in slots:
            slots[slots.index(None)] = (int(i), int(y))
            continue
        present = sorted({s[1] for s in slots})
        total = sum(n[c] ** rho for c in present)
        m = {c: np.float32(size) * np.float32(n[c] ** rho / total) for c in present}
        m_y = m.get(y, np.float32(size) / np.float32(len(present)))
        p = 1.0 if n_prev == 0 else min(1.0, float(m_y / np.float32(n_prev)))
        if not float(draws.admit_u[t]) < p:
            continue
        counts = {c: sum(s[1] == c for s in slots) for c in present}
        deltas = [counts[c] - float(m[c]) for c in present]
        weights = [math.exp(d - max(deltas)) for d in deltas]
        cum, chosen = 0.0, present[-1]
        for c, wt in zip(present, weights):
            cum += wt / sum(weights)
            if cum > float(draws.class_u[t]):
                chosen = c
                break
        members = [s for s in range(size) if slots[s][1] == chosen]
        victim = members[min(int(math.floor(float(draws.evict_u[t]) * len(members))), len(members) - 1)]
        slots[victim] = (int(i), int(y))
    return slots


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prs_with_power_0_is_the_class_balanced_policy(seed):
    """The same admissions and evictions as buffer.policy=class_balanced, offer by offer: PRS (power 0) is the
    class_balanced policy (the online protocol's prs_* methods use it)."""
    rng = np.random.default_rng(seed)
    size, k, d = 12, 4, 60
    label = rng.choice(k, d, p=[0.55, 0.25, 0.15, 0.05]).astype(np.int32)  # imbalanced, as PRS's streams
    index = np.arange(d, dtype=np.int32)
    state = B.CLASS_BALANCED.init(size, k)
    all_draws = []
    for c in range(3):  # three chunks of 20, each offered in class order
        sl = slice(20 * c, 20 * (c + 1))
        order = np.argsort(label[sl], kind="stable")
        label[sl], index[sl] = label[sl][order], index[sl][order]
        key = jax.random.PRNGKey(100 * seed + c)
        all_draws.append(jax.tree.map(np.asarray, B.offer_draws(key, 20)))
        cands = buffers.Candidates(index=jnp.asarray(index[sl]), label=jnp.asarray(label[sl]), corrupt=jnp.zeros(20, bool),
                                   clean_p=jnp.ones(20), keep=jnp.ones(20, bool))
        state = B.CLASS_BALANCED.offer(state, key, cands)
    draws = B.OfferDraws(*(np.concatenate([getattr(dr, f) for dr in all_draws])
                           for f in ("admit_u", "class_u", "evict_u")))
    want = _prs_reference(size, k, index, label, draws, rho=0.0)
    got = list(zip(np.asarray(state.index).tolist(), np.asarray(state.label).tolist()))
    assert got == want
    assert want != _prs_reference(size, k, index, label, draws, rho=1.0)  # the power matters: the test can tell


# --- the comparison's methods and compare.tex ------------------------------------------------------------------

def test_paper_lists_every_method_of_the_table_spr_jax_has():
    paper = comparison.expand_methods(["paper"])
    assert set(paper) <= set(comparison.METHODS) and "plain_replay" not in paper  # (an ablation, not a row)
    assert paper[0] == "multitask" and paper[-1] == "spr" and len(paper) == 24
    assert comparison.expand_methods(["spr", "paper", "plain_replay"])[:2] == ["spr", "multitask"]


def test_compare_tex_bolds_the_best_mean_per_rate_and_gives_wall_times():
    rows = []
    for m, accs in (("multitask", (0.9, 0.92)), ("mir_sl", (0.5, 0.6)), ("spr", (0.7, 0.5)), ("ewc", (0.7, 0.4))):
        for rate in (0.2, 0.4):
            for s, a in enumerate(accs):
                rows.append({"method": m, "noise_rate": rate, "seed": s, "final_accuracy": a - rate / 10,
                             "average_accuracy": a, "forgetting": 0.1, "final_purity": 0.8, "filter_precision": None,
                             "noisy_removed": None, "wall_time_s": 10.0 * (s + 1)})
    tex = comparison.latex_table(rows, tiny())
    lines = tex.splitlines()
    row = {line.split(" & ")[0]: line for line in lines if " & " in line}
    assert r"mir\_sl" in row and "mir_sl" not in tex
    # spr: mean 0.6 - rate/10, sd 0.141...; the best of the continual methods (multitask, the bound, is not marked)
    assert row["spr"] == r"spr & \textbf{58.0 $\pm$ 14.1} & \textbf{56.0 $\pm$ 14.1} & 15 \\"
    assert row["multitask"].startswith(r"multitask & 89.0 $\pm$ 1.4 & ")
    assert r"\textbf" not in row[r"mir\_sl"] and r"\textbf" not in row["multitask"]
    assert r"\begin{tabular}{lccr}" in tex and r"20\% & 40\% & s / run" in tex


# --- L2R -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_l2r_weights_are_the_normalised_positive_alignment_with_the_meta_gradient(seed):
    """u_i = -d meta(theta - grad sum_j eps_j l_j) / d eps_i at eps = 0 is grad meta . grad l_i: numpy's dot
    products of the softmax regression's gradients, clipped at 0 and normalised."""
    data = _data(seed)
    params = _params(seed)
    w, b = _np(params)
    idx, meta_idx = np.arange(8), np.arange(20, 32)
    x, y = _x(data, idx), np.asarray(data.noisy)[idx]
    xm, ym = _x(data, meta_idx), np.asarray(data.noisy)[meta_idx]
    mask = np.ones(8, bool)
    mask[5] = False

    def per_sample(p):
        return losses.per_sample_cross_entropy(Linear().apply({"params": p}, jnp.asarray(x, jnp.float32)),
                                               jnp.asarray(y))

    def meta_loss(p):
        return losses.cross_entropy(Linear().apply({"params": p}, jnp.asarray(xm, jnp.float32)), jnp.asarray(ym))

    got = np.asarray(online_methods.l2r_weights(per_sample, meta_loss, params, jnp.asarray(mask)))
    gw, gb = _grads(w, b, x, y)
    mw, mb = (g.mean(0) for g in _grads(w, b, xm, ym))
    u = np.einsum("ndk,dk->n", gw, mw) + gb @ mb
    want = np.where(mask, np.maximum(u, 0), 0)
    assert 0 < (want > 0).sum() < 7  # some samples weighted, some not: the test can tell
    np.testing.assert_allclose(got, want / want.sum(), rtol=1e-3, atol=1e-6)
    assert got[5] == 0.0 and got.sum() == pytest.approx(1.0)


def test_l2r_weights_are_zero_when_no_sample_helps_the_meta_set():
    params = _params()
    w = online_methods.l2r_weights(lambda p: jnp.sum(p["Dense_0"]["bias"]) * jnp.ones(3),
                                   lambda p: -jnp.sum(p["Dense_0"]["bias"]), params, jnp.ones(3, bool))
    np.testing.assert_array_equal(np.asarray(w), np.zeros(3))  # every u_i = -|grad|^2 < 0


def test_l2r_meta_set_is_class_balanced_true_labelled_and_seeded():
    labels = np.repeat(np.arange(4), [30, 5, 12, 40])
    m = online_methods.meta_set(labels, 10, seed=3)
    idx = np.asarray(m.index)
    assert len(set(idx.tolist())) == len(idx) == 10 + 5 + 10 + 10
    np.testing.assert_array_equal(np.asarray(m.label), labels[idx])
    np.testing.assert_array_equal(np.bincount(np.asarray(m.label)), [10, 5, 10, 10])
    assert np.array_equal(np.asarray(online_methods.meta_set(labels, 10, seed=3).index), idx)
    assert not np.array_equal(np.asarray(online_methods.meta_set(labels, 10, seed=4).index), idx)


def test_an_l2r_step_weights_the_batch_by_l2r_weights():
    """online._update with the meta set: one Adam step on sum_i w_i CE_i with numpy's weights."""
    data = _data()
    params = _params(2)
    w, b = _np(params)
    idx, meta_idx = np.arange(6), np.arange(20, 30)
    x, y = _x(data, idx), np.asarray(data.noisy)[idx]
    xm, ym = _x(data, meta_idx), np.asarray(data.noisy)[meta_idx]
    s = _settings(replay=False, l2r=True)
    learner, _ = online._update(s, _learner(params), jnp.asarray(x, jnp.float32), jnp.asarray(y),
                                jnp.ones(6, jnp.float32), 0, None,
                                (jnp.asarray(xm, jnp.float32), jnp.asarray(ym)))
    gw, gb = _grads(w, b, x, y)
    mw, mb = (g.mean(0) for g in _grads(w, b, xm, ym))
    u = np.maximum(np.einsum("ndk,dk->n", gw, mw) + gb @ mb, 0)
    wt = u / u.sum()
    grads = {"Dense_0": {"kernel": jnp.asarray(np.einsum("n,ndk->dk", wt, gw), jnp.float32),
                         "bias": jnp.asarray(wt @ gb, jnp.float32)}}
    tx = online.optimizer(1e-2)
    updates, _ = tx.update(grads, tx.init(params), params)
    want = optax.apply_updates(params, updates)
    for leaf in ("kernel", "bias"):
        np.testing.assert_allclose(np.asarray(learner.params["Dense_0"][leaf]), np.asarray(want["Dense_0"][leaf]),
                                   rtol=1e-4, atol=1e-6)


# --- Pencil ----------------------------------------------------------------------------------------------------

def _pencil_numpy(logits, labels, y_logits, alpha, beta):
    """Pencil's stage-2 loss and its gradient in the label logits, written out: with f = softmax(logits), y_d =
    softmax(y_logits), L = mean KL(f || y_d) + alpha mean CE(onehot, y_d) + beta mean H(f), and
    dL / d y_logits_i = ((y_d_i - f_i) + alpha (y_d_i - onehot_i)) / B."""
    f, yd = _softmax(logits), _softmax(y_logits)
    onehot = np.eye(logits.shape[1])[labels]
    b = len(labels)
    loss = (np.mean(np.sum(f * (np.log(f) - np.log(yd)), 1)) - alpha * np.mean(np.sum(onehot * np.log(yd), 1))
            - beta * np.mean(np.sum(f * np.log(f), 1)))
    return loss, ((yd - f) + alpha * (yd - onehot)) / b


def _pencil_case(seed, n):
    """A batch of n logits, noisy labels and label logits near K = 10 x one-hot, as numpy and as jax arrays."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (n, K))
    labels = rng.integers(0, K, n)
    y_logits = 10.0 * np.eye(K)[labels] + rng.normal(0, 1, (n, K))
    return logits, labels, y_logits, (jnp.asarray(logits, jnp.float32), jnp.asarray(labels),
                                      jnp.asarray(y_logits, jnp.float32))


def test_pencil_label_update_and_stage_losses_match_numpy():
    logits, labels, y_logits, args = _pencil_case(0, 5)
    loss2, grad2 = _pencil_numpy(logits, labels, y_logits, 0.1, 0.8)
    fn = lambda stage: losses.pencil_loss(*args, stage, alpha=0.1, beta=0.8)
    assert float(fn(2)) == pytest.approx(loss2, rel=1e-5)
    g = jax.grad(lambda yl, st: losses.pencil_loss(args[0], args[1], yl, st, alpha=0.1, beta=0.8))
    np.testing.assert_allclose(np.asarray(g(args[2], 2)), grad2, rtol=1e-4, atol=1e-7)
    # the update of stage 2 (label lr 75): y_logits - 75 grad
    np.testing.assert_allclose(np.asarray(args[2] - 75.0 * g(args[2], 2)), y_logits - 75.0 * grad2, rtol=1e-5, atol=1e-5)
    # stage 1: the noisy labels' cross-entropy, no label gradient; stage 3: KL(f || y_d) alone
    f, yd = _softmax(logits), _softmax(y_logits)
    assert float(fn(1)) == pytest.approx(np.mean(-np.log(f[np.arange(5), labels])), rel=1e-5)
    np.testing.assert_array_equal(np.asarray(g(args[2], 1)), 0.0)
    assert float(fn(3)) == pytest.approx(np.mean(np.sum(f * (np.log(f) - np.log(yd)), 1)), rel=1e-5)
    np.testing.assert_allclose(np.asarray(g(args[2], 3)), (yd - f) / 5, rtol=1e-4, atol=1e-7)


class _Classifier(Linear):
    num_classes: int = K


def test_pencil_with_every_epoch_in_stage_1_is_the_cross_entropy_fine_tune():
    """The fine-tuning's Pencil path: with stage 1 spanning every epoch it trains exactly as cross-entropy does;
    with label learning it trains otherwise (the labels it learns change the network's steps)."""
    from spr_jax import evaluate
    data = _data(n=48)
    variables = {"params": _params(4)}
    images, labels = data.images[:32], data.noisy[:32]
    common = dict(epochs=3, batch_size=8, lr=1e-2, decay_every=100, decay=0.1, clip=0.5)
    key = jax.random.PRNGKey(0)
    ce, ce_losses = evaluate.finetune(_Classifier(), variables, images, labels, key, **common)
    stage1, s1_losses = evaluate.finetune(_Classifier(), variables, images, labels, key, loss=losses.pencil,
                                          pencil=(0.1, 0.8, 75.0, 10.0, 3, 0), **common)
    for leaf in ("kernel", "bias"):
        np.testing.assert_array_equal(np.asarray(ce["params"]["Dense_0"][leaf]),
                                      np.asarray(stage1["params"]["Dense_0"][leaf]))
    np.testing.assert_allclose(np.asarray(ce_losses), np.asarray(s1_losses), rtol=1e-6)
    learned, l_losses = evaluate.finetune(_Classifier(), variables, images, labels, key, loss=losses.pencil,
                                          pencil=(0.1, 0.8, 75.0, 10.0, 1, 1), **common)
    assert not np.allclose(np.asarray(learned["params"]["Dense_0"]["kernel"]), np.asarray(ce["params"]["Dense_0"]["kernel"]))
    assert np.isfinite(np.asarray(l_losses)).all()


def test_pencil_s_later_stages_are_not_judged_by_the_fine_tune_s_growth_rule():
    from spr_jax import run_checks
    evals = [{"after_task": 1, "finetune_loss": [1.5, 1.2, 4.9, 3.0]}]  # stage 2 from epoch 2 on
    assert "grew from 1.5 to 4.9" in run_checks.finetune_divergence(evals, 10)
    assert run_checks.finetune_divergence(evals, 10, growth_epochs=2) is None
    assert "grew" in run_checks.finetune_divergence([{"after_task": 0, "finetune_loss": [1.0, 3.5, 1.0]}], 10, 2)
    assert "above 11.5" in run_checks.finetune_divergence([{"after_task": 0, "finetune_loss": [1.0, 1.0, 12.0]}], 10, 1)


def test_online_pencil_per_sample_losses_are_the_fine_tune_s_terms_before_the_mean():
    logits, labels, y_logits, args = _pencil_case(1, 6)
    f, yd = _softmax(logits), _softmax(y_logits)
    onehot = np.eye(K)[labels]
    kl = np.sum(f * (np.log(f) - np.log(yd)), 1)
    want = {1: -np.log(f[np.arange(6), labels]),
            2: kl - 0.1 * np.sum(onehot * np.log(yd), 1) - 0.8 * np.sum(f * np.log(f), 1), 3: kl}
    for stage, expected in want.items():
        got = online_methods.pencil_per_sample(*args, stage, alpha=0.1, beta=0.8)
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-6)
        assert float(jnp.mean(got)) == pytest.approx(float(losses.pencil_loss(*args, stage, alpha=0.1, beta=0.8)),
                                                     rel=1e-5)
    # the stages over a stream of 10 chunks at shares 0.22 / 0.41: chunks 0-1, 2-5, 6-9
    from spr_jax import configlib, settings
    c = configlib.base_config()
    c.protocol, c.eval.loss = "online", "pencil"
    assert settings.online_pencil_settings(c, 10) == (0.1, 0.8, 75.0, 10.0, 2, 4)
    assert [int(online_methods.pencil_stage(i, 2, 4)) for i in range(10)] == [1, 1, 2, 2, 2, 2, 3, 3, 3, 3]


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_an_online_pencil_step_learns_the_batch_s_labels_in_stage_2_only(stage):
    """One stream batch (no replay): in stage 2 the batch's rows of the label-logit table move by -lr x the
    numpy gradient of the batch's mean Pencil loss, every other row stays at K x one-hot; the network takes one
    Adam step on that loss in every stage."""
    data = _data()
    params = _params(3)
    s = _settings(replay=False, loss=losses.pencil, pencil=(0.1, 0.8, 75.0, 10.0, 1, 1))
    state = online.init_state(s, 0, (2, 2, 1), 8, noisy_labels=data.noisy)
    start = np.asarray(state.label_logits)
    np.testing.assert_array_equal(start, 10.0 * np.eye(K)[np.asarray(data.noisy)])
    state = state.replace(learner=_learner(params), chunk=jnp.asarray(stage - 1, jnp.int32))
    idx = np.arange(8, 12, dtype=np.int32)
    out, _ = online.chunk_step(s, data, state, jnp.asarray(idx), jnp.ones(4), jnp.ones(4, bool))
    w, b = _np(params)
    x, y = _x(data, idx), np.asarray(data.noisy)[idx]
    logits = x @ w + b
    want = start.copy()
    if stage == 2:
        want[idx] -= 75.0 * _pencil_numpy(logits, y, start[idx], 0.1, 0.8)[1]
    np.testing.assert_allclose(np.asarray(out.label_logits), want, rtol=1e-5, atol=1e-5)
    # the network's step: Adam on the stage's mean loss (stage 1: cross-entropy; 3: KL(f || y_d))
    f, yd = _softmax(logits), _softmax(start[idx])
    r = {1: f - np.eye(K)[y], 2: None, 3: f * (np.log(f) - np.log(yd) - np.sum(f * (np.log(f) - np.log(yd)), 1,
                                                                                keepdims=True))}[stage]
    if r is not None:
        grads = {"Dense_0": {"kernel": jnp.asarray(x.T @ r / 4, jnp.float32), "bias": jnp.asarray(r.mean(0), jnp.float32)}}
        tx = online.optimizer(1e-2)
        updates, _ = tx.update(grads, tx.init(params), params)
        want_params = optax.apply_updates(params, updates)
        np.testing.assert_allclose(np.asarray(out.learner.params["Dense_0"]["kernel"]),
                                   np.asarray(want_params["Dense_0"]["kernel"]), rtol=1e-4, atol=1e-6)


def test_online_pencil_s_learned_labels_go_with_replayed_samples():
    """With replay in stage 2, the rows of the samples replayed (in memory) move too; rows of samples neither
    streamed nor in memory never do."""
    data = _data(n=40)
    s = _settings(replay=True, stream_batch=4, replay_batch=3, loss=losses.pencil, pencil=(0.1, 0.8, 75.0, 10.0, 0, 5))
    state = online.init_state(s, 0, (2, 2, 1), 8, noisy_labels=data.noisy)
    start = np.asarray(state.label_logits)
    first = np.arange(0, 8, dtype=np.int32)  # chunk 0 fills the memory (8 slots) in stage 2
    state, _ = online.chunk_step(s, data, state, jnp.asarray(first), jnp.ones(8), jnp.ones(8, bool))
    after_first = np.asarray(state.label_logits)
    memory = set(np.asarray(state.buffer.index)[np.asarray(state.buffer.valid)].tolist())
    second = np.arange(20, 28, dtype=np.int32)
    state, _ = online.chunk_step(s, data, state, jnp.asarray(second), jnp.ones(8), jnp.ones(8, bool))
    moved = set(np.flatnonzero(np.any(np.asarray(state.label_logits) != after_first, axis=1)).tolist())
    assert set(second.tolist()) <= moved  # every streamed sample learned
    assert moved - set(second.tolist()) and moved - set(second.tolist()) <= memory  # replayed ones, from memory
    untouched = sorted(set(range(40)) - set(first.tolist()) - set(second.tolist()))
    np.testing.assert_array_equal(np.asarray(state.label_logits)[untouched], start[untouched])
    assert np.isfinite(np.asarray(state.label_logits)).all()
