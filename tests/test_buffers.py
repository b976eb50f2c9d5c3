"""The purified buffer against docs/algorithm.md section 2, transcribed directly in plain Python."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spr_jax import buffers
from spr_jax.buffers import purified as B


# --- A direct transcription of docs/algorithm.md section 2 (lists and dicts, no JAX) ---------------------------

class RefBuffer:
    def __init__(self, size, num_classes):
        self.size = size
        self.k = num_classes
        self.slots = [None] * size  # None or dict(index, label, corrupt, clean_p)
        self.entered = [0] * size  # entry number of each slot's sample
        self.entries = 0
        self.n = {c: 0 for c in range(num_classes)}
        self.evictions = 0
        self.tied_evictions = 0  # the lowest clean_p was shared within the chosen class

    def counts(self):
        out = {}
        for s in self.slots:
            if s is not None:
                out[s["label"]] = out.get(s["label"], 0) + 1
        return out

    def offer_chunk(self, draws, index, label, corrupt, clean_p, mask, plain_replay=False):
        # The filter emits its kept samples class by class, ascending, chunk order within a class.
        offered = [i for i in range(len(label)) if mask[i]]
        offered = sorted(offered, key=lambda i: int(label[i]))  # Python's sort is stable
        for t, i in enumerate(offered):
            sample = dict(index=int(index[i]), label=int(label[i]), corrupt=bool(corrupt[i]),
                          clean_p=float(clean_p[i]))
            self._offer_one(sample, float(draws.admit_u[t]), float(draws.class_u[t]),
                            float(draws.evict_u[t]), plain_replay)

    def _store(self, slot, sample):
        self.slots[slot] = sample
        self.entered[slot] = self.entries
        self.entries += 1

    def _offer_one(self, sample, admit_u, class_u, evict_u, plain_replay):
        k = sample["label"]
        n_prev = self.n[k]  # admission is decided before this offer is counted
        self.n[k] += 1
        if None in self.slots:
            self._store(self.slots.index(None), sample)
            return
        counts = self.counts()
        present = sorted(counts)
        m = np.float32(self.size) / np.float32(len(present))
        p = 1.0 if n_prev == 0 else min(1.0, float(m / np.float32(n_prev)))
        if not admit_u < p:
            return
        deltas = [counts[c] - float(m) for c in present]
        top = max(deltas)
        weights = [math.exp(d - top) for d in deltas]
        total = sum(weights)
        cum, chosen = 0.0, present[-1]
        for c, w in zip(present, weights):
            cum += w / total
            if cum > class_u:
                chosen = c
                break
        members = [s for s in range(self.size) if self.slots[s]["label"] == chosen]
        if plain_replay:
            victim = members[min(int(math.floor(evict_u * len(members))), len(members) - 1)]
        else:
            victim = min(members, key=lambda s: (self.slots[s]["clean_p"], self.entered[s]))  # ties: oldest
            lowest = self.slots[victim]["clean_p"]
            self.tied_evictions += sum(self.slots[s]["clean_p"] == lowest for s in members) > 1
        self.evictions += 1
        self._store(victim, sample)


def _assert_same(buf, ref):
    buf = jax.tree_util.tree_map(np.asarray, buf)
    valid = buf.valid
    np.testing.assert_array_equal(valid, [s is not None for s in ref.slots])
    for s, want in enumerate(ref.slots):
        if want is None:
            continue
        got = dict(index=int(buf.index[s]), label=int(buf.label[s]), corrupt=bool(buf.corrupt[s]),
                   clean_p=float(buf.clean_p[s]))
        assert got == want, (s, got, want)
    np.testing.assert_array_equal(np.asarray(buf.offers), [ref.n[c] for c in range(ref.k)])
    np.testing.assert_array_equal(buf.entered[valid], np.asarray(ref.entered)[valid])
    assert int(buf.entries) == ref.entries


def _chunk(rng, c, d, k, n_classes_now):
    label = rng.integers(0, n_classes_now, d).astype(np.int32)
    index = np.arange(c * d, (c + 1) * d, dtype=np.int32)
    corrupt = rng.random(d) < 0.3
    # Coarse values so that clean_p ties (and the oldest-first tie rule) actually occur.
    clean_p = (rng.integers(0, 6, d) / 5).astype(np.float32)
    mask = rng.random(d) < 0.7
    return index, label, corrupt, clean_p, mask


SIZE, K, D = 20, 5, 30  # one shape for most tests, so offer compiles few times


def _offer_single(buf, index, label, clean_p=1.0, admit_u=0.0, class_u=0.0, evict_u=0.0):
    """Offers one sample, padded to a chunk of D with the rest masked out (keeps the compiled shape)."""
    pad = lambda v, dtype: np.concatenate([[v], np.zeros(D - 1)]).astype(dtype)
    draws = B.OfferDraws(admit_u=jnp.asarray(pad(admit_u, np.float32)),
                         class_u=jnp.asarray(pad(class_u, np.float32)),
                         evict_u=jnp.asarray(pad(evict_u, np.float32)))
    return B.offer(buf, draws, pad(index, np.int32), pad(label, np.int32), np.zeros(D, bool),
                   pad(clean_p, np.float32), pad(1, bool))


def _filled(size, k, label, clean_p=None):
    """A buffer filled by offering `label` (length <= D) in one chunk."""
    n = len(label)
    clean_p = np.linspace(0.1, 0.9, n) if clean_p is None else clean_p
    padded = lambda v, dtype: np.concatenate([v, np.zeros(D - n)]).astype(dtype)
    return B.offer(B.init_buffer(size, k), B.offer_draws(jax.random.PRNGKey(0), D),
                   padded(np.arange(n), np.int32), padded(label, np.int32), np.zeros(D, bool),
                   padded(clean_p, np.float32), padded(np.ones(n), bool))


# --- Equality with the transcription ----------------------------------------------------------------

@pytest.mark.parametrize("plain_replay", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_offer_matches_direct_transcription(seed, plain_replay):
    size, k, d = SIZE, K, D
    rng = np.random.default_rng(seed)
    buf = B.init_buffer(size, k)
    ref = RefBuffer(size, k)
    key = jax.random.PRNGKey(seed)
    for c in range(10):
        # Classes appear over time, so new classes also arrive while the buffer is full.
        chunk = _chunk(rng, c, d, k, n_classes_now=min(k, 2 + c // 2))
        draws = B.offer_draws(jax.random.fold_in(key, c), d)
        buf = B.offer(buf, draws, *chunk, plain_replay=plain_replay)
        ref.offer_chunk(jax.tree_util.tree_map(np.asarray, draws), *chunk, plain_replay=plain_replay)
        _assert_same(buf, ref)
    assert bool(buffers.is_full(buf))
    assert ref.evictions >= 10 and (plain_replay or ref.tied_evictions >= 3), vars(ref)


def test_offer_order_is_by_class_then_chunk_order_and_skips_masked():
    label = np.array([2, 0, 1, 0, 1, 2] + [4] * (D - 6), np.int32)
    index = np.arange(10, 10 + D, dtype=np.int32)
    mask = np.array([True, True, True, True, False, True] + [False] * (D - 6))
    buf = B.offer(B.init_buffer(SIZE, K), B.offer_draws(jax.random.PRNGKey(0), D), index, label,
                  np.zeros(D, bool), np.ones(D, np.float32), mask)
    np.testing.assert_array_equal(buf.index[:6], [11, 13, 12, 10, 15, -1])
    np.testing.assert_array_equal(buf.label[:5], [0, 0, 1, 2, 2])
    np.testing.assert_array_equal(buf.offers, [2, 1, 2, 0, 0])


# --- Invariants -------------------------------------------------------------------------------------

def test_never_exceeds_size_never_holds_nan_and_stays_full():
    size, k, d = SIZE, K, D
    rng = np.random.default_rng(7)
    buf = B.init_buffer(size, k)
    was_full = False
    offered = {}
    for c in range(12):
        index, label, corrupt, clean_p, mask = _chunk(rng, c, d, k, k)
        clean_p = np.where(rng.random(d) < 0.2, np.nan, clean_p).astype(np.float32)
        offered.update({int(i): (int(l), bool(co), 0.0 if np.isnan(p) else float(p))
                        for i, l, co, p in zip(index, label, corrupt, clean_p)})
        buf = B.offer(buf, B.offer_draws(jax.random.PRNGKey(c), d), index, label, corrupt, clean_p, mask)
        counts = np.asarray(buffers.class_counts(buf, B.num_classes(buf)))
        buf_np = jax.tree_util.tree_map(np.asarray, buf)
        valid = buf_np.valid
        assert counts.sum() == valid.sum() <= size
        assert np.isfinite(np.asarray(buf.clean_p)[valid]).all()
        held = np.asarray(buf.index)[valid]
        assert len(set(held.tolist())) == held.size  # no sample stored twice
        assert (np.asarray(buf.index)[~valid] == -1).all()
        # Every held sample's fields are the ones it was offered with (a NaN clean_p is stored as 0).
        for slot in np.flatnonzero(valid):
            got = (int(buf_np.label[slot]), bool(buf_np.corrupt[slot]), float(buf_np.clean_p[slot]))
            assert got == offered[int(buf_np.index[slot])]
        assert was_full <= bool(buffers.is_full(buf))
        was_full = bool(buffers.is_full(buf))
    assert was_full


@functools.partial(jax.jit, static_argnames=("size", "k"))
def _stream_counts(key, index, label, clean_p, *, size, k):
    """Offers chunk after chunk in one compiled scan; class counts after each chunk."""
    d = label.shape[1]

    def body(buf, x):
        c, index, label, clean_p = x
        draws = B.offer_draws(jax.random.fold_in(key, c), d)
        buf = B.offer(buf, draws, index, label, jnp.zeros(d, bool), clean_p, jnp.ones(d, bool))
        return buf, buffers.class_counts(buf, B.num_classes(buf))

    return jax.lax.scan(body, B.init_buffer(size, k), (jnp.arange(label.shape[0]), index, label, clean_p))


def _balanced_stream_spreads(size, k, d, chunks, seed, first_class_only=False):
    """max - min class count after each chunk of a stream offering every class equally often."""
    rng = np.random.default_rng(seed)
    labels = np.stack([rng.permutation(np.repeat(np.arange(k), d // k)) for _ in range(chunks)])
    if first_class_only:
        labels[0] = 0  # start from the worst state: one class fills the buffer
    index = np.arange(chunks * d, dtype=np.int32).reshape(chunks, d)
    buf, counts = _stream_counts(jax.random.PRNGKey(seed), index, labels.astype(np.int32),
                                 rng.random((chunks, d)).astype(np.float32), size=size, k=k)
    counts = np.asarray(counts)
    return counts.max(axis=1) - counts.min(axis=1), buf


@pytest.mark.parametrize("size,k,first_class_only", [(20, 5, False), (20, 5, True), (100, 10, False)])
def test_balanced_streams_become_and_stay_balanced(size, k, first_class_only):
    # The rule cannot keep max - min <= 1 (see the next test): eviction picks a class by a softmax of
    # count - m, so a class one sample above another is only e times likelier to lose one. What it does
    # give is a restoring drift whose spread does not grow with P or with time. Over 30 seeds x 100
    # balanced chunks (after the first 20) we saw a largest spread of 3..7 (mostly 4..5) and a mean
    # spread of 1.5..3.8, for P = 20 and 100 alike (P = 300, K = 10 looks the same).
    spreads, buf = _balanced_stream_spreads(size, k, d=50 if size == 20 else 100, chunks=100,
                                            seed=size + k + 7 * first_class_only,
                                            first_class_only=first_class_only)
    settled = spreads[20:]
    assert settled.max() <= 8, spreads
    assert settled.mean() <= 4.5, spreads
    assert int(jnp.sum(buffers.class_counts(buf, B.num_classes(buf)) > 0)) == k


def test_balance_within_one_is_not_guaranteed_by_the_rule():
    # A full, perfectly balanced buffer (4 each of 5 classes). A sample of class 0 is admitted (admit_u = 0)
    # and the softmax of equal deltas is uniform, so class_u = 0.9 evicts from class 4: counts become
    # 5, 4, 4, 4, 3.
    buf = _filled(SIZE, K, np.repeat(np.arange(5), 4))
    buf = _offer_single(buf, 99, 0, admit_u=0.0, class_u=0.9)
    np.testing.assert_array_equal(buffers.class_counts(buf, B.num_classes(buf)), [5, 4, 4, 4, 3])


@pytest.mark.parametrize("size,k,fill_classes", [(SIZE, K, [0, 1]), (4, K, [0, 1, 2, 3])])
def test_first_sample_of_a_new_class_is_always_admitted_when_full(size, k, fill_classes):
    # (4, K, [0..3]): every slot holds a different class, so C = P and m = 1: still admitted.
    base = _filled(size, k, np.resize(np.array(fill_classes), size))
    assert bool(buffers.is_full(base))
    new_class = k - 1
    for admit_u in [0.0, 0.5, 0.99999994]:
        for class_u in [0.0, 0.5, 0.99999994]:
            buf = _offer_single(base, 777, new_class, clean_p=0.5, admit_u=admit_u, class_u=class_u)
            assert int(buffers.class_counts(buf, B.num_classes(buf))[new_class]) == 1
            assert 777 in np.asarray(buf.index).tolist()
            assert int(buffers.size(buf)) == size


def test_eviction_takes_the_lowest_clean_p_of_the_chosen_class_ties_the_oldest():
    # Built slot by slot (offer would group the classes), as if 3 samples of classes 0 and 1 were offered;
    # `entered` says in which order they entered (not slot order).
    buf = B.init_buffer(6, K).replace(
        index=jnp.arange(6, dtype=jnp.int32), label=jnp.array([0, 1, 0, 1, 0, 1], jnp.int32),
        clean_p=jnp.array([0.5, 0.2, 0.3, 0.9, 0.3, 0.2], jnp.float32), valid=jnp.ones(6, bool),
        offers=jnp.array([3, 3, 0, 0, 0], jnp.int32), entered=jnp.array([0, 5, 4, 2, 1, 3], jnp.int32),
        entries=jnp.asarray(6, jnp.int32))
    # Equal counts: class_u < 0.5 picks class 0 (lowest clean_p 0.3 at slots 2 (entered 4th) and 4 (entered
    # 1st) -> slot 4), else class 1 (0.2 at slots 1 (entered 5th) and 5 (entered 3rd) -> slot 5).
    for class_u, slot in [(0.1, 4), (0.9, 5)]:
        out = _offer_single(buf, 50, 0, admit_u=0.0, class_u=class_u)
        assert int(out.index[slot]) == 50 and int(out.entered[slot]) == 6 and int(out.entries) == 7
        assert int((np.asarray(out.index) != np.asarray(buf.index)).sum()) == 1


def test_ties_turn_the_whole_class_over_oldest_first():
    # Every sample has the same clean_p: repeated admissions must replace the class's samples in the order
    # they entered, not one slot over and over.
    buf = _filled(6, K, np.zeros(6, int), clean_p=np.full(6, 0.5))
    replaced = []
    for i in range(6):
        before = np.asarray(buf.index)
        buf = _offer_single(buf, 100 + i, 0, clean_p=0.5, admit_u=0.0, class_u=0.0)
        replaced.append(int(np.flatnonzero(np.asarray(buf.index) != before)[0]))
    assert replaced == [0, 1, 2, 3, 4, 5]  # the slots in the order their samples entered
    assert sorted(np.asarray(buf.index).tolist()) == list(range(100, 106))


def test_admission_uses_the_count_of_earlier_offers():
    # Full buffer of one class (P = 6, C = 1, m = 6) after 6 offers of class 0: the 7th offer has n_prev = 6,
    # p = 6 / 6 = 1 (the rule "n_k = 7, p = 6/7" would refuse it at admit_u = 0.9); the 8th has p = 6/7.
    buf = _filled(6, K, np.zeros(6, int))
    assert int(buf.offers[0]) == 6
    seventh = _offer_single(buf, 200, 0, admit_u=0.9, class_u=0.0)
    assert 200 in np.asarray(seventh.index).tolist() and int(seventh.offers[0]) == 7
    for admit_u, admitted in [(6 / 7 - 1e-3, True), (6 / 7 + 1e-3, False)]:
        eighth = _offer_single(seventh, 300, 0, admit_u=admit_u, class_u=0.0)
        assert (300 in np.asarray(eighth.index).tolist()) == admitted


# --- Sampling, purity, determinism, transforms -----------------------------------------------------

def test_sample_indices_returns_only_valid_slots_uniformly():
    buf = B.init_buffer(10, 3)
    buf = buf.replace(valid=jnp.array([0, 1, 1, 0, 1, 0, 0, 1, 0, 1], bool))
    slots = np.asarray(buffers.sample_indices(buf, jax.random.PRNGKey(0), 5000))
    assert slots.dtype == np.int32 and slots.shape == (5000,)
    assert np.asarray(buf.valid)[slots].all()
    freq = np.bincount(slots, minlength=10)[np.asarray(buf.valid)] / 5000
    np.testing.assert_allclose(freq, 0.2, atol=0.03)
    assert (np.asarray(buffers.sample_indices(B.init_buffer(4, 2), jax.random.PRNGKey(0), 3)) == -1).all()


def test_determinism_per_key():
    buf = B.init_buffer(10, 3).replace(valid=jnp.ones(10, bool))
    a = buffers.sample_indices(buf, jax.random.PRNGKey(3), 64)
    b = buffers.sample_indices(buf, jax.random.PRNGKey(3), 64)
    c = buffers.sample_indices(buf, jax.random.PRNGKey(4), 64)
    np.testing.assert_array_equal(a, b)
    assert (np.asarray(a) != np.asarray(c)).any()

    rng = np.random.default_rng(0)
    chunks = [_chunk(rng, c, D, K, K) for c in range(3)]

    def run(seed):
        buf = B.init_buffer(SIZE, K)
        for c, chunk in enumerate(chunks):  # the buffer fills during the second chunk
            buf = B.offer(buf, B.offer_draws(jax.random.fold_in(jax.random.PRNGKey(seed), c), D), *chunk)
        return buf

    runs = [run(s) for s in (1, 1, 2)]
    for x, y in zip(jax.tree_util.tree_leaves(runs[0]), jax.tree_util.tree_leaves(runs[1])):
        np.testing.assert_array_equal(x, y)
    assert (np.asarray(runs[0].index) != np.asarray(runs[2].index)).any()


def test_offer_under_vmap_matches_one_by_one():
    rng = np.random.default_rng(5)
    chunks = [_chunk(rng, c, D, K, K) for c in range(6)]
    # Three buffers filled by different chunks, then each offered another chunk: one by one and vmapped.
    starts = [B.offer(B.init_buffer(SIZE, K), B.offer_draws(jax.random.PRNGKey(c), D), *chunks[c])
              for c in range(3)]
    draws = [B.offer_draws(jax.random.PRNGKey(c + 10), D) for c in range(3)]
    singles = [B.offer(starts[c], draws[c], *chunks[c + 3]) for c in range(3)]
    stack = lambda *xs: jax.tree_util.tree_map(lambda *ys: jnp.stack([jnp.asarray(y) for y in ys]), *xs)
    vmapped = jax.vmap(B.offer)(stack(*starts), stack(*draws), *stack(*chunks[3:]))
    for c in range(3):
        for x, y in zip(jax.tree_util.tree_leaves(singles[c]), jax.tree_util.tree_leaves(vmapped)):
            np.testing.assert_array_equal(x, y[c])


def test_purity_and_helpers():
    buf = B.init_buffer(4, 3)
    assert float(B.purity(buf)) == 1.0 and not bool(buffers.is_full(buf))
    buf = buf.replace(valid=jnp.array([1, 1, 1, 0], bool), corrupt=jnp.array([0, 1, 0, 0], bool),
                      label=jnp.array([2, 2, 0, -1], jnp.int32))
    assert float(B.purity(buf)) == pytest.approx(2 / 3)
    np.testing.assert_array_equal(buffers.class_counts(buf, B.num_classes(buf)), [1, 0, 2])
