"""Run metrics from evaluations and chunks (host-side numpy; formulas stated where they are computed).

With T tasks and a[i, j] the test accuracy on the classes of task j after training through task i
(evaluation i happens at the boundary after task i; the last one after the whole stream):
- final_accuracy: accuracy over the whole test set of the episodes' classes after the last task.
- average_accuracy: mean over tasks of the final row, (1/T) sum_j a[T-1, j].
- forgetting: (1/(T-1)) sum_{j < T-1} (max_{j <= i < T-1} a[i, j] - a[T-1, j]) (Chaudhry et al., 2018);
  0 with a single task.
Filter precision is the share of kept samples whose label is right; recall, the share of correctly
labelled chunk samples that were kept.
"""
import numpy as np


def accuracy_by_class(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class test accuracy; NaN-free: a class without test samples reads 0 and is not used by tasks."""
    correct = np.bincount(labels, weights=(predictions == labels), minlength=num_classes)
    total = np.bincount(labels, minlength=num_classes)
    return np.where(total > 0, correct / np.maximum(total, 1), 0.0)


def task_accuracies(predictions, labels, episodes) -> list:
    """Accuracy over the test samples whose label is in each task (sample-weighted)."""
    out = []
    for task in episodes:
        m = np.isin(labels, task)
        out.append(float((predictions[m] == labels[m]).mean()) if m.any() else 0.0)
    return out


def overall_accuracy(predictions, labels, episodes) -> float:
    m = np.isin(labels, np.concatenate([np.asarray(t) for t in episodes]))
    return float((predictions[m] == labels[m]).mean())


def average_accuracy(matrix) -> float:
    a = np.asarray(matrix, dtype=float)
    return float(a[-1].mean())


def forgetting(matrix) -> float:
    a = np.asarray(matrix, dtype=float)
    t = a.shape[0]
    if t < 2:
        return 0.0
    drops = [a[j:t - 1, j].max() - a[t - 1, j] for j in range(t - 1)]
    return float(np.mean(drops))


def purity(corrupt) -> float | None:
    """Share of a memory's samples whose label is right (corrupt flags of its valid slots); None if empty."""
    corrupt = np.asarray(corrupt, bool)
    return float((~corrupt).mean()) if corrupt.size else None


def precision_recall_from_counts(kept: int, kept_clean: int, clean: int) -> tuple:
    """(precision, recall) of a filter from counts: kept_clean / kept and kept_clean / clean; None where
    the denominator is 0."""
    return (kept_clean / kept if kept else None), (kept_clean / clean if clean else None)
