import numpy as np

from spr_jax import metrics


def test_forgetting_and_average_on_a_hand_computed_matrix():
    a = [[0.9, 0.0, 0.0],
         [0.6, 0.8, 0.0],
         [0.5, 0.7, 0.9]]
    assert np.isclose(metrics.average_accuracy(a), (0.5 + 0.7 + 0.9) / 3)
    # task 0: best 0.9 -> 0.5 (0.4); task 1: best 0.8 -> 0.7 (0.1)
    assert np.isclose(metrics.forgetting(a), (0.4 + 0.1) / 2)
    assert metrics.forgetting([[0.7]]) == 0.0


def test_accuracies_by_class_and_task():
    labels = np.array([0, 0, 1, 1, 2, 2, 3])
    preds = np.array([0, 1, 1, 1, 0, 2, 3])
    np.testing.assert_allclose(metrics.accuracy_by_class(preds, labels, 5), [0.5, 1, 0.5, 1, 0])
    assert metrics.task_accuracies(preds, labels, [[0, 1], [2, 3]]) == [0.75, 2 / 3]
    assert np.isclose(metrics.overall_accuracy(preds, labels, [[0, 1], [2]]), 4 / 6)


def test_filter_precision_recall_from_counts():
    keep = np.array([1, 1, 1, 0, 0], bool)
    clean = ~np.array([0, 0, 1, 0, 1], bool)
    counts = int(keep.sum()), int((keep & clean).sum()), int(clean.sum())  # what the replay counts per chunk
    assert metrics.precision_recall_from_counts(*counts) == (2 / 3, 2 / 3)
    assert metrics.precision_recall_from_counts(0, 0, int(clean.sum())) == (None, 0.0)
    assert metrics.precision_recall_from_counts(2, 0, 0) == (0.0, None)


def test_chunk_record_computes_precision_recall_and_purity_from_the_replay_counts():
    from spr_jax import outputs
    m = {"base_loss": 1.5, "replayed_buffer": True, "kept": 8, "kept_clean": 6, "clean": 12, "buffer_valid": 10,
         "buffer_clean": 9, "buffer_counts": np.array([4, 6]),
         # the clean_p diagnostics' device counts (tests/test_diagnostics.py checks their fields)
         "clean_p_hist_clean": np.zeros(10, int), "clean_p_hist_noisy": np.zeros(10, int), "clean_p_max": 1.0,
         "kept_at_max": 0, "kept_noisy_at_max": 0, "auc_twice_u": 0, "admitted": 0, "admitted_noisy": 0,
         "evicted": 0, "evicted_noisy": 0}
    r = outputs.chunk_record(3, 1, m, known=True)
    assert (r["filter_precision"], r["filter_recall"], r["buffer_purity"]) == (6 / 8, 6 / 12, 9 / 10)
    assert r["buffer_counts"] == [4, 6] and r["kept"] == 8
    unknown = outputs.chunk_record(3, 1, m, known=False)
    assert unknown["filter_precision"] is unknown["buffer_purity"] is None
    empty = outputs.chunk_record(0, 0, dict(m, kept=0, kept_clean=0, buffer_valid=0, buffer_clean=0), known=True)
    assert empty["filter_precision"] is None and empty["buffer_purity"] is None


def test_purity_of_a_memory():
    assert metrics.purity(np.array([False, True, False, False])) == 0.75
    assert metrics.purity(np.zeros(0, bool)) is None
