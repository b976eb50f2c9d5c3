"""Run metrics from evaluations and chunks (host-side numpy; formulas stated where they are computed).

With T tasks and a[i, j] the test accuracy on the classes of task j after training through task i
(evaluation i happens at the boundary after task i; the last one after the whole stream):
- final_accuracy: accuracy over the whole test set of the episodes' classes after the last task.
- average_accuracy: mean over tasks of the final row, (1/T) sum_j a[T-1, j].
- forgetting: (1/(T-1)) sum_{j < T-1} (max_{j <= i < T-1} a[i, j] - a[T-1, j]) (Chaudhry et al., 2018);
  0 with a single task.
Filter precision is the share of kept samples whose label is right; recall, the share of correctly
labelled chunk samples that were kept.
Over seeds (seed_stats, paired_stats): mean, sample sd (ddof=1) and the 95% t interval of the mean,
mean +- t_{0.975, n-1} sd / sqrt(n).
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


# Seed statistics: t_{0.975, df}, the two-sided 95% quantile of Student's t with df degrees of freedom, exact
# (scipy.stats.t.ppf to 1e-12) for df 1..30; beyond, the Cornish-Fisher expansion in 1/df around the normal
# quantile, within 3e-8 of scipy's there (tests/test_metrics.py checks both).
_T975 = (12.706204736174694, 4.302652729749462, 3.1824463052837078, 2.7764451051977934, 2.5705818356363146,
         2.4469118511449786, 2.364624251592784, 2.306004135204166, 2.262157162798205, 2.228138851986274,
         2.200985160091639, 2.1788128296672284, 2.1603686564627913, 2.144786687917804, 2.131449545559776,
         2.1199052992212546, 2.1098155778333156, 2.1009220402410382, 2.0930240544083087, 2.085963447265864,
         2.0796138447276795, 2.0738730679040254, 2.0686576104190486, 2.0638985616280245, 2.0595385527532972,
         2.0555294386428735, 2.0518305164802846, 2.0484071417952454, 2.045229642132703, 2.0422724563012378)
_Z975 = 1.959963984540054


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}: the half-width of a 95% t interval is this times the standard error."""
    if df < 1:
        raise ValueError(f"t quantile: df={df} must be >= 1")
    if df <= len(_T975):
        return _T975[df - 1]
    z, v = _Z975, float(df)
    g1 = (z ** 3 + z) / 4
    g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
    g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
    g4 = (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160
    return z + g1 / v + g2 / v ** 2 + g3 / v ** 3 + g4 / v ** 4


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and not np.isfinite(v))


def seed_stats(values) -> dict:
    """Mean, sample standard deviation (ddof=1) and 95% t interval of the mean over seeds:
    {"mean", "sd", "ci_low", "ci_high", "n", "values"}, the interval mean +- t_{0.975, n-1} sd / sqrt(n).
    None (or NaN) values are missing (a seed without that metric): n counts the others, and "values" keeps
    every seed's value in order (None where missing). n = 1: sd and interval None; n = 0: all None."""
    values = [None if _missing(v) else float(v) for v in values]
    v = np.asarray([x for x in values if x is not None], float)
    n = int(v.size)
    out = {"mean": float(v.mean()) if n else None, "sd": None, "ci_low": None, "ci_high": None, "n": n,
           "values": values}
    if n > 1:
        sd = float(v.std(ddof=1))
        half = t_quantile_975(n - 1) * sd / float(np.sqrt(n))
        out.update(sd=sd, ci_low=out["mean"] - half, ci_high=out["mean"] + half)
    return out


def paired_stats(a, b) -> dict:
    """The mean paired difference a - b (value by value, e.g. seed by seed on paired streams) with its 95% t
    interval: seed_stats of the differences (pairs with a missing side dropped) plus "t", the paired t
    statistic mean / (sd / sqrt(n)) (as scipy.stats.ttest_rel; None for n < 2 or sd 0). The difference is
    significant at 5% (two-sided) where the interval excludes 0."""
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"paired_stats: {len(a)} values against {len(b)}; pairs need equal lengths")
    out = seed_stats([None if _missing(x) or _missing(y) else float(x) - float(y) for x, y in zip(a, b)])
    out["t"] = out["mean"] / (out["sd"] / float(np.sqrt(out["n"]))) if out["sd"] else None
    return out


def format_stats(s: dict, scale: float = 1.0, digits: int = 1) -> str:
    """seed_stats' dict as text: "63.5 +- 2.5 [59.1, 67.9]" (mean +- sd [95% interval]), the value alone for
    one seed, "n/a" for none; values times `scale` (100: percentages)."""
    if not s["n"]:
        return "n/a"
    f = lambda x: f"{scale * x:.{digits}f}"  # noqa: E731
    if s["n"] == 1:
        return f(s["mean"])
    return f"{f(s['mean'])} +- {f(s['sd'])} [{f(s['ci_low'])}, {f(s['ci_high'])}]"
