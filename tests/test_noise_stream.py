"""Label noise and the chunked stream against docs/algorithm.md section 1-2, stated directly."""
import numpy as np
import pytest
from scipy import stats

from spr_jax.data import noise as noise_lib
from spr_jax.data import stream as stream_lib

K = 10


def _labels(n_per_class=500, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(K), n_per_class)
    return rng.permutation(labels).astype(np.int32)


@pytest.mark.parametrize("rate", [0.2, 0.4, 0.6])
def test_symmetric_corrupts_exactly_the_first_round_n_r_of_each_class(rate):
    labels = _labels(n_per_class=333)
    out = noise_lib.apply_noise(1, labels, "symmetric", rate, K)
    for c in range(K):
        members = np.flatnonzero(labels == c)
        count = round(members.size * rate)
        assert out.corrupt[members].sum() == count
        assert out.corrupt[members[:count]].all() and not out.corrupt[members[count:]].any()
        assert (out.noisy[members[:count]] != c).all()
    np.testing.assert_array_equal(out.true, labels)
    np.testing.assert_array_equal(out.corrupt, out.noisy != labels)


def test_symmetric_new_labels_are_uniform_over_the_other_classes():
    labels = _labels(n_per_class=2000)
    out = noise_lib.apply_noise(3, labels, "symmetric", 0.5, K)
    for c in range(K):
        flipped = out.noisy[(labels == c) & out.corrupt]
        counts = np.bincount(flipped, minlength=K)
        assert counts[c] == 0
        others = np.delete(counts, c)
        assert stats.chisquare(others).pvalue > 1e-3, (c, others)


def test_asymmetric_flips_only_the_published_pairs_with_int_n_r_each():
    labels = _labels(n_per_class=301)
    out = noise_lib.apply_noise(0, labels, "asymmetric", 0.4, K, dataset="mnist")
    pairs = noise_lib.ASYMMETRIC_MAPS["mnist"]
    for c in range(K):
        members = labels == c
        if c in pairs:
            assert out.corrupt[members].sum() == int(members.sum() * 0.4)
            assert set(np.unique(out.noisy[members & out.corrupt])) == {pairs[c]}
        else:
            assert not out.corrupt[members].any()
    # 5 <-> 6 is a swap read from the original labels: both directions are flipped.
    assert ((labels == 5) & (out.noisy == 6)).sum() == int(301 * 0.4)
    assert ((labels == 6) & (out.noisy == 5)).sum() == int(301 * 0.4)


def test_asymmetric_cifar10_pairs():
    labels = _labels(n_per_class=100)
    out = noise_lib.apply_noise(0, labels, "asymmetric", 0.3, K, dataset="cifar10")
    moved = {(int(a), int(b)) for a, b in zip(labels[out.corrupt], out.noisy[out.corrupt])}
    assert moved == {(9, 1), (2, 0), (3, 5), (5, 3), (4, 7)}


def test_superclass_noise_never_leaves_the_superclass():
    num_classes = 100
    superclass_of = np.random.default_rng(0).permutation(np.repeat(np.arange(20), 5))
    labels = np.repeat(np.arange(num_classes), 50).astype(np.int32)
    out = noise_lib.apply_noise(2, labels, "superclass", 0.4, num_classes, superclass_of=superclass_of)
    assert out.corrupt.sum() == num_classes * 20
    np.testing.assert_array_equal(superclass_of[out.noisy], superclass_of[labels])
    with pytest.raises(ValueError, match="superclass"):
        noise_lib.apply_noise(2, labels, "superclass", 0.4, num_classes)


def test_rate_zero_and_none_change_nothing_and_real_is_unknown():
    labels = _labels(50)
    for kind, kw in [("symmetric", {}), ("asymmetric", {"dataset": "mnist"}), ("none", {})]:
        out = noise_lib.apply_noise(0, labels, kind, 0.0, K, **kw)
        np.testing.assert_array_equal(out.noisy, labels)
        assert not out.corrupt.any()
    real = noise_lib.apply_noise(0, labels, "real", 0.4, K)
    np.testing.assert_array_equal(real.noisy, labels)
    assert not real.known


def test_noise_is_deterministic_per_seed():
    labels = _labels(200)
    a = noise_lib.apply_noise(5, labels, "symmetric", 0.4, K)
    b = noise_lib.apply_noise(5, labels, "symmetric", 0.4, K)
    c = noise_lib.apply_noise(6, labels, "symmetric", 0.4, K)
    np.testing.assert_array_equal(a.noisy, b.noisy)
    assert (a.noisy != c.noisy).any()


@pytest.mark.parametrize("kwargs, match", [
    (dict(kind="symmetric", rate=1.5), "outside"),
    (dict(kind="symmetric", rate=-0.1), "outside"),
    (dict(kind="asymmetric", rate=0.4, dataset="fashion_mnist"), "no published asymmetric"),
    (dict(kind="bogus", rate=0.4), "unknown noise kind"),
])
def test_noise_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        noise_lib.apply_noise(0, _labels(10), num_classes=K, **kwargs)


EPISODES = [[7, 6], [2, 3], [0, 1], [5, 9], [8, 4]]


def _stream(seed=0, n_per_class=487, rate=0.4, chunk=300):
    labels = _labels(n_per_class)
    noisy = noise_lib.apply_noise(seed, labels, "symmetric", rate, K)
    return noisy, stream_lib.build_stream(seed, noisy.noisy, EPISODES, K, chunk_size=chunk)


def test_stream_tasks_hold_their_noisy_labels_and_no_sample_twice():
    noisy, s = _stream()
    flat = s.chunks.reshape(-1)
    assert np.unique(flat).size == flat.size
    # Rebuild the per-task order from task_streamed and check every sample's noisy label.
    full = np.concatenate([flat, np.full(s.dropped_tail, -1)])
    pos = 0
    for t, n in enumerate(s.task_streamed):
        part = full[pos:pos + n]
        part = part[part >= 0]
        assert np.isin(noisy.noisy[part], EPISODES[t]).all()
        pos += n
    # Each task streams all of its samples but its last partial batch of 10.
    for t, task in enumerate(EPISODES):
        avail = np.isin(noisy.noisy, task).sum()
        assert s.task_available[t] == avail and s.task_streamed[t] == avail - avail % 10


def test_chunk_count_and_boundary_chunks():
    noisy, s = _stream()
    total = int(s.task_streamed.sum())
    assert s.num_chunks == total // 300 and s.dropped_tail == total % 300
    ends = np.cumsum(s.task_streamed)
    assert s.eval_points == tuple(int(e) // 300 for e in ends[:-1]) + (s.num_chunks,)
    # A chunk spanning a boundary is processed after that boundary's evaluation, in the next task.
    spanning = 0
    for c in range(s.num_chunks):
        lo, hi = c * 300, (c + 1) * 300
        first_task = int(np.searchsorted(ends, lo + 1))
        last_task = int(np.searchsorted(ends, hi))
        assert s.chunk_task[c] == last_task
        if first_task != last_task:
            spanning += 1
            assert s.eval_points[first_task] == c  # evaluated before this chunk is processed
            assert np.isin(noisy.noisy[s.chunks[c]], EPISODES[first_task] + EPISODES[last_task]).all()
    assert spanning >= 1


def test_stream_is_deterministic_per_seed():
    _, a = _stream(seed=4)
    _, b = _stream(seed=4)
    _, c = _stream(seed=5)
    np.testing.assert_array_equal(a.chunks, b.chunks)
    assert (a.chunks != c.chunks).any()


@pytest.mark.parametrize("episodes, match", [
    ([[0, 1], [1, 2]], "one task only"),
    ([[0, 1], []], "empty"),
    ([[0, 10]], "out of range"),
    ([], "empty"),
])
def test_stream_bad_episodes(episodes, match):
    with pytest.raises(ValueError, match=match):
        stream_lib.build_stream(0, _labels(20), episodes, K, chunk_size=30)


def test_class_balanced_subset():
    labels = _labels(100)
    idx = stream_lib.class_balanced_subset(0, labels, 30)
    assert (np.diff(idx) > 0).all()
    np.testing.assert_array_equal(np.bincount(labels[idx]), np.full(K, 30))
    np.testing.assert_array_equal(idx, stream_lib.class_balanced_subset(0, labels, 30))
    with pytest.raises(ValueError, match="subset_per_class"):
        stream_lib.class_balanced_subset(0, labels, 101)
