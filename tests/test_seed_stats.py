"""Seed statistics (spr_jax.metrics.seed_stats / paired_stats / t_quantile_975) against scipy.stats, and the
comparison's outputs that carry them (compare.md, compare.json's cells, the API's rows.cells)."""
import json
import math
import os

import numpy as np
import pytest
from scipy import stats

import spr_jax
from spr_jax import comparison, metrics

from conftest import tiny


def test_the_t_quantile_is_scipys():
    for df in range(1, 31):  # the exact table
        assert metrics.t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-12)
    for df in list(range(31, 300)) + [500, 1000, 10_000, 10 ** 6]:  # the expansion beyond
        assert metrics.t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-7)
    with pytest.raises(ValueError):
        metrics.t_quantile_975(0)


@pytest.mark.parametrize("values", [[0.61, 0.65, 0.66], [1.0, 2.0], [3.0, 3.5, 2.5, 4.0, 3.9, 3.1, 2.2],
                                    list(np.random.default_rng(0).normal(60, 3, 40))])
def test_seed_stats_are_the_t_interval_of_the_mean(values):
    s = metrics.seed_stats(values)
    v = np.asarray(values)
    low, high = stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
    assert s["n"] == len(v) and s["values"] == [float(x) for x in values]
    assert s["mean"] == pytest.approx(v.mean(), rel=1e-12) and s["sd"] == pytest.approx(v.std(ddof=1), rel=1e-12)
    assert (s["ci_low"], s["ci_high"]) == (pytest.approx(low, rel=1e-7), pytest.approx(high, rel=1e-7))
    json.dumps(s, allow_nan=False)  # plain JSON numbers


def test_seed_stats_of_few_or_missing_values():
    assert metrics.seed_stats([]) == {"mean": None, "sd": None, "ci_low": None, "ci_high": None, "n": 0,
                                      "values": []}
    assert metrics.seed_stats([None, None])["n"] == 0
    one = metrics.seed_stats([None, 0.7, float("nan")])  # missing values are kept in place, not counted
    assert one == {"mean": 0.7, "sd": None, "ci_low": None, "ci_high": None, "n": 1, "values": [None, 0.7, None]}
    same = metrics.seed_stats([0.5, 0.5, 0.5])
    assert same["sd"] == 0 and same["ci_low"] == same["ci_high"] == 0.5
    two = metrics.seed_stats([0.6, None, 0.8])
    assert two["n"] == 2 and two["ci_low"] == pytest.approx(stats.t.interval(0.95, 1, 0.7, stats.sem([0.6, 0.8]))[0])
    assert metrics.format_stats(metrics.seed_stats([0.61, 0.65, 0.66]), 100) == "64.0 +- 2.6 [57.4, 70.6]"
    assert metrics.format_stats(one, 100) == "70.0" and metrics.format_stats(metrics.seed_stats([]), 100) == "n/a"


def test_paired_stats_are_scipys_paired_t():
    ours = [0.5938, 0.6530, 0.6579, 0.6620, 0.6401]  # e.g. two programs on the same seeds' streams
    theirs = [0.6517, 0.6496, 0.6290, 0.6700, 0.6655]
    s = metrics.paired_stats(ours, theirs)
    t = stats.ttest_rel(ours, theirs)
    ci = t.confidence_interval(0.95)
    d = np.subtract(ours, theirs)
    assert s["n"] == 5 and s["mean"] == pytest.approx(d.mean()) and s["t"] == pytest.approx(t.statistic)
    assert (s["ci_low"], s["ci_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert (s["ci_low"], s["ci_high"]) == tuple(pytest.approx(x) for x in
                                                stats.t.interval(0.95, 4, loc=d.mean(), scale=stats.sem(d)))
    # A pair with a missing side is dropped; unequal lengths are a mistake.
    assert metrics.paired_stats([1.0, None, 3.0], [0.5, 2.0, 2.0])["values"] == [0.5, None, 1.0]
    assert metrics.paired_stats([1.0, 2.0], [1.0, 2.0])["t"] is None  # no spread: no t statistic
    with pytest.raises(ValueError, match="equal lengths"):
        metrics.paired_stats([1.0, 2.0], [1.0])


def _synthetic_rows():
    rows = []
    for m, rates, seeds in (("spr", (0.2, 0.4), (1, 2, 3)), ("finetune", (0.4,), (1,))):
        for rate in rates:
            for s in seeds:
                rows.append({"method": m, "noise_rate": rate, "seed": s, "final_accuracy": 0.6 + s / 50 - rate / 5,
                             "average_accuracy": 0.6 + s / 50, "forgetting": 0.1 * s,
                             "final_purity": None if m == "finetune" else 0.9 - s / 100,
                             "filter_precision": None if m == "finetune" else 0.8 + s / 100,
                             "noisy_removed": None if m == "finetune" else 0.7 + s / 200, "wall_time_s": 10.0 + s})
    return rows


def test_compare_outputs_of_synthetic_rows(tmp_path):
    rows = _synthetic_rows()
    comparison.write(str(tmp_path), rows, tiny())
    doc = json.load(open(tmp_path / "compare.json"))
    assert doc["runs"] == rows and "t(0.975, n-1)" in doc["interval"]
    assert [(c["method"], c["noise_rate"], c["seeds"]) for c in doc["cells"]] == [
        ("spr", 0.2, [1, 2, 3]), ("spr", 0.4, [1, 2, 3]), ("finetune", 0.4, [1])]
    spr = doc["cells"][0]["final_accuracy"]
    assert spr["values"] == [r["final_accuracy"] for r in rows[:3]] and spr["n"] == 3
    assert (spr["ci_low"], spr["ci_high"]) == tuple(pytest.approx(x) for x in stats.t.interval(
        0.95, 2, loc=np.mean(spr["values"]), scale=stats.sem(spr["values"])))
    single = doc["cells"][2]
    assert single["final_accuracy"]["sd"] is None and single["final_accuracy"]["ci_low"] is None
    assert single["final_purity"]["n"] == 0 and single["filter_precision"]["mean"] is None
    md = (tmp_path / "compare.md").read_text()
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| method"))
    assert header.split(" | ")[3:] == ["final accuracy (%)", "average accuracy (%)", "forgetting (%)",
                                        "buffer purity (%)", "filter precision (%)", "noisy removed (%)",
                                        "wall time (s) |"]
    acc = metrics.format_stats(doc["cells"][0]["final_accuracy"], 100)
    assert f"| spr | 0.2 | 3 | {acc} |" in md and acc == "60.0 +- 2.0 [55.0, 65.0]"
    assert "| finetune | 0.4 | 1 | 54.0 | 62.0 | 10.0 | n/a | n/a | n/a | 11.0 |" in md
    assert "95% confidence interval of the mean over seeds" in md
    # Without a filter anywhere, the filter's columns are left out.
    no_filter = [{**r, "filter_precision": None, "noisy_removed": None} for r in rows]
    assert "filter precision" not in comparison.table(no_filter)
    assert (tmp_path / "compare.png").stat().st_size > 10_000


def test_a_three_seed_tiny_compare_reports_t_intervals(tmp_path):
    work = tmp_path / "cmp"
    rows = spr_jax.compare(spr_jax.load_config("tiny"), str(work), methods=["spr", "finetune"], seeds=[0, 1, 2],
                           progress=False)
    doc = json.load(open(work / "compare.json"))
    assert list(rows) == doc["runs"] and rows.cells == doc["cells"] and len(doc["cells"]) == 2
    md = (work / "compare.md").read_text()
    for cell in doc["cells"]:
        assert cell["seeds"] == [0, 1, 2]
        runs = [r for r in doc["runs"] if r["method"] == cell["method"]]
        for key, _, scale in comparison.METRICS:
            s = cell[key]
            assert s["values"] == [r[key] for r in runs]
            if cell["method"] == "finetune" and key in ("final_purity", "filter_precision", "noisy_removed"):
                assert s["n"] == 0 and s["mean"] is None  # no memory, no filter
                continue
            v = np.asarray(s["values"], float)
            low, high = stats.t.interval(0.95, 2, loc=v.mean(), scale=stats.sem(v))
            assert s["n"] == 3 and s["mean"] == pytest.approx(v.mean()) and s["sd"] == pytest.approx(v.std(ddof=1))
            if s["sd"]:
                assert (s["ci_low"], s["ci_high"]) == (pytest.approx(low), pytest.approx(high))
            else:
                assert s["ci_low"] == s["ci_high"] == s["mean"]
        row_text = next(line for line in md.splitlines() if line.startswith(f"| {cell['method']} | 0.4 | 3 |"))
        acc = cell["final_accuracy"]
        assert (f"{100 * acc['mean']:.1f} +- {100 * acc['sd']:.1f} [{100 * acc['ci_low']:.1f}, "
                f"{100 * acc['ci_high']:.1f}]") in row_text
    # The filter's pooled rates agree with each run's per-chunk records: the clean samples recovered from the
    # recall, the noisy ones from stream.json.
    for row in (r for r in doc["runs"] if r["method"] == "spr"):
        folder = work / "spr" / "rate_0.4" / f"seed_{row['seed']}"
        run = spr_jax.read_run(str(folder))
        info = json.load(open(folder / "stream.json"))
        kept = run.chunks["kept"]
        kept_clean = np.round(run.chunks["filter_precision"] * kept)
        clean = np.round(kept_clean / run.chunks["filter_recall"])
        noisy = info["samples_in_chunks"] - clean.sum()
        assert noisy == round(info["noise_rate_in_chunks"] * info["samples_in_chunks"])
        assert row["filter_precision"] == pytest.approx(kept_clean.sum() / kept.sum())
        assert row["noisy_removed"] == pytest.approx(1 - (kept.sum() - kept_clean.sum()) / noisy)
        assert 0 < row["filter_precision"] <= 1 and 0 <= row["noisy_removed"] <= 1
    assert (work / "compare.png").stat().st_size > 10_000
    assert not math.isnan(doc["cells"][0]["wall_time_s"]["mean"])
    assert os.path.exists(work / "finetune" / "rate_0.4" / "seed_2" / "summary.json")
