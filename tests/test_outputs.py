"""report() and plot() of spr_jax.outputs on synthetic summaries (no run needed)."""
import numpy as np
import pytest

from spr_jax import outputs

EPISODES = [[7, 6], [0, 3], [9, 1]]


def summary(new_keys=True, purity_known=True):
    matrix = [[1.0, 0.0, 0.0], [0.7, 0.9, 0.0], [0.5, 0.6, 0.8]]
    s = {
        "final_accuracy": 0.6087, "accuracy_matrix": matrix, "average_accuracy": 0.6333, "forgetting": 0.4,
        "final_purity": 0.877 if purity_known else None,
        "purity_history": [0.8, 0.85, 0.9, 0.88, 0.9, 0.877] if purity_known else [None] * 6,
        "final_buffer_counts": [5, 5, 4, 6, 5, 5], "num_chunks": 6,
        "method": {"filter": "centrality", "buffer_policy": "purified", "encoder": None,
                   "eval_loss": "cross_entropy"},
        "seed": 1, "dataset": "fashion_mnist",
        "noise": {"kind": "symmetric", "rate": 0.4} if purity_known else {"kind": "real", "rate": 0.0},
        "wall_time_s": {"total": 12.5}, "device": "cpu",
    }
    if new_keys:
        s["eval_chunks"] = [2, 4, 6]
        s["stream_clean_share"] = 0.6 if purity_known else None
    return s


def test_seen_matrix_masks_unseen_tasks():
    m = outputs._seen_matrix(summary()["accuracy_matrix"])
    assert isinstance(m, np.ma.MaskedArray)
    np.testing.assert_array_equal(m.mask, [[False, True, True], [False, False, True], [False, False, False]])
    assert m[2, 0] == pytest.approx(50.0) and m[1, 1] == pytest.approx(90.0)  # in percent


def test_report_marks_unseen_tasks_and_says_what_accuracy_covers():
    text = outputs.report(summary())
    assert "60.87%" in text and "all test samples of the episodes' classes" in text
    assert "'-' = task not yet seen" in text and "task j's classes" in text
    rows = [line.split() for line in text.splitlines() if line.strip().startswith("after ")]
    assert [r[2:] for r in rows] == [["100.0", "-", "-"], ["70.0", "90.0", "-"], ["50.0", "60.0", "80.0"]]
    assert "symmetric noise 40%" in text


def test_report_unknown_purity():
    text = outputs.report(summary(new_keys=False, purity_known=False))
    assert "buffer purity    n/a" in text


@pytest.mark.parametrize("new_keys", [True, False])
@pytest.mark.parametrize("purity_known", [True, False])
def test_plot_writes_png(tmp_path, new_keys, purity_known):
    path = tmp_path / "summary.png"
    outputs.plot(summary(new_keys, purity_known), EPISODES, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_figure_contents(tmp_path, monkeypatch):
    """Heatmap's unseen cells masked and unlabelled; purity axis 0-100% with the stream's clean share, chunks
    0-based (as metrics.jsonl and TensorBoard) with a tick each, boundaries between a task's last chunk and the
    next's first."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figs = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig))
    outputs.plot(summary(), EPISODES, str(tmp_path / "summary.png"))
    fig = figs[-1]
    heat, purity = fig.axes[0], fig.axes[1]
    data = heat.get_images()[0].get_array()
    assert np.ma.is_masked(data) and data.mask[0, 2] and not data.mask[2, 0]
    assert sorted(t.get_text() for t in heat.texts) == sorted(["100", "70", "90", "50", "60", "80"])
    assert heat.get_xticklabels()[0].get_text() == "task 0 (7, 6)"
    assert purity.get_ylim() == (0, 100)
    labels = purity.get_legend_handles_labels()[1]
    assert "stream's clean share (no filter)" in labels and "task boundary" in labels
    stream = [l for l in purity.get_lines() if l.get_linestyle() == "--"]
    assert [l.get_ydata()[0] for l in stream] == [60.0]
    np.testing.assert_array_equal(purity.get_lines()[0].get_xdata(), range(6))  # chunk 0 .. 5
    vlines = [l for l in purity.get_lines() if l.get_linestyle() == ":"]
    # tasks end after chunks 1 and 3 (2 and 4 processed); the last eval (6 = num_chunks) omitted
    assert sorted(l.get_xdata()[0] for l in vlines) == [1.5, 3.5]
    assert list(purity.get_xticks()) == list(range(6)) and purity.get_xlim() == (-0.5, 5.5)
    assert purity.get_xlabel().startswith("chunk (0-based")
    title = fig._suptitle.get_text()
    assert all(s in title for s in ("SPR on fashion_mnist", "symmetric noise 40%", "seed 1", "60.9%", "87.7%"))
    plt.close(fig)


def test_the_evaluation_line_says_what_each_accuracy_covers():
    from spr_jax import outputs
    record = {"after_task": 1, "task_accuracy": [1.0, 0.8, 0.0], "accuracy": 0.6, "buffer_purity": 0.9}
    line = outputs.eval_line(record)
    assert "90.0% on the tasks seen so far" in line and "60.0% on all test samples" in line and "90.0%" in line


def test_plot_with_the_runs_records_shows_filter_and_losses(tmp_path, monkeypatch):
    """Given the MetricsLog: kept bars and precision per chunk, the base loss per chunk, and one fine-tune
    loss curve per evaluation that fine-tuned (an evaluation without one, or a base never trained, says so)."""
    import types
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figs = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig))
    chunks = [{"chunk": c, "kept": 10 + c, "filter_precision": 0.5 + 0.05 * c, "base_loss": 4.0 - 0.1 * c}
              for c in range(6)]
    evals = [{"after_task": 0, "finetune_loss": None}, {"after_task": 1, "finetune_loss": [2.0, 1.5, 1.0]},
             {"after_task": 2, "finetune_loss": [2.2, 1.8, 1.1]}]
    outputs.plot(summary(), EPISODES, str(tmp_path / "summary.png"), log=types.SimpleNamespace(chunks=chunks, evals=evals))
    axes = {ax.get_title(): ax for ax in figs[-1].axes}
    kept = axes["filter per chunk"]
    assert [p.get_height() for p in kept.patches] == [10, 11, 12, 13, 14, 15]
    assert [p.get_x() + p.get_width() / 2 for p in kept.patches] == pytest.approx(range(6))  # chunk 0 .. 5
    precision = [ax for ax in figs[-1].axes if ax.get_ylabel() == "filter precision (%)"][0]
    np.testing.assert_allclose(precision.get_lines()[0].get_ydata(), [50, 55, 60, 65, 70, 75])
    assert precision.get_ylim() == (0, 100)
    assert [l.get_ydata()[0] for l in precision.get_lines() if l.get_linestyle() == "--"] == [60.0]  # the stream's
    base = axes["base: self-supervised loss per chunk"]
    np.testing.assert_array_equal(base.get_lines()[0].get_xdata(), range(6))
    for ax in (kept, base):  # every chunk axis: one tick per chunk, integers
        assert list(ax.get_xticks()) == list(range(6)) and ax.get_xlim() == (-0.5, 5.5)
    np.testing.assert_allclose(axes["base: self-supervised loss per chunk"].get_lines()[0].get_ydata(),
                               [4.0, 3.9, 3.8, 3.7, 3.6, 3.5])
    tune = axes["evaluation: classifier fine-tune loss"]
    assert [line.get_label() for line in tune.get_lines()] == ["after task 1", "after task 2"]
    np.testing.assert_allclose(tune.get_lines()[1].get_ydata(), [2.2, 1.8, 1.1])
    assert tune.get_yscale() == "log"

    for c in chunks:
        c["base_loss"] = None
    outputs.plot(summary(), EPISODES, str(tmp_path / "summary.png"),
                 log=types.SimpleNamespace(chunks=chunks, evals=[{"after_task": 0, "finetune_loss": None}]))
    axes = {ax.get_title(): ax for ax in figs[-1].axes}
    assert "base not trained" in axes["base: self-supervised loss per chunk"].texts[0].get_text()
    assert "no fine-tune" in axes["evaluation: classifier fine-tune loss"].texts[0].get_text()


def test_plot_shows_the_clean_p_diagnostics_where_the_records_carry_them(tmp_path, monkeypatch):
    """A third row: AUC and tie share per chunk, admissions (up) and evictions (down) per chunk, the kept
    samples' clean_p over the run as a share of each group; records without the fields keep two rows."""
    import types
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figs = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig))
    hist_clean, hist_noisy = [0] * 8 + [1, 3], [0, 2] + [0] * 7 + [2]
    chunks = [{"chunk": c, "kept": 8, "filter_precision": 0.5, "base_loss": 1.0, "clean_p_hist": [0] * 10,
               "clean_p_hist_clean": hist_clean, "clean_p_hist_noisy": hist_noisy, "clean_p_auc": 0.5 + 0.1 * c,
               "clean_p_tied_share": 0.25, "clean_p_tied_noisy_share": 0.5, "buffer_admitted_clean": 3 + c,
               "buffer_admitted_noisy": 1, "buffer_evicted_clean": 2, "buffer_evicted_noisy": c} for c in range(3)]
    evals = [{"after_task": 0, "finetune_loss": None}]
    outputs.plot(summary(), EPISODES, str(tmp_path / "summary.png"), log=types.SimpleNamespace(chunks=chunks, evals=evals))
    axes = {ax.get_title(): ax for ax in figs[-1].axes}
    ranking = axes["filter: clean_p ranking of the kept samples"]
    lines = {line.get_label(): line for line in ranking.get_lines()}
    np.testing.assert_allclose(lines["ROC-AUC of clean_p (clean vs noisy)"].get_ydata(), [50, 60, 70])
    np.testing.assert_allclose(lines["kept samples tied at the max clean_p"].get_ydata(), [25, 25, 25])
    turnover = axes["buffer: admissions and evictions per chunk"]
    heights = [p.get_height() for p in turnover.patches]
    assert heights == [3, 4, 5, 1, 1, 1, -2, -2, -2, 0, -1, -2]  # admitted clean, noisy; evicted clean, noisy
    hist = axes["filter: clean_p of the kept samples, all chunks"]
    np.testing.assert_allclose([p.get_height() for p in hist.patches],
                               [100 * v / 4 for v in hist_clean] + [100 * v / 4 for v in hist_noisy])
    assert hist.get_legend_handles_labels()[1] == ["kept clean (12)", "kept noisy (12)"]

    for c in chunks:  # noise unknown: totals only
        c.update(buffer_admitted=4, buffer_evicted=2, clean_p_hist=[0] * 9 + [4], clean_p_auc=None,
                 clean_p_tied_noisy_share=None, clean_p_hist_clean=None, clean_p_hist_noisy=None,
                 buffer_admitted_clean=None, buffer_admitted_noisy=None, buffer_evicted_clean=None,
                 buffer_evicted_noisy=None)
    outputs.plot(summary(), EPISODES, str(tmp_path / "summary.png"), log=types.SimpleNamespace(chunks=chunks, evals=evals))
    axes = {ax.get_title(): ax for ax in figs[-1].axes}
    assert [p.get_height() for p in axes["buffer: admissions and evictions per chunk"].patches] == [4] * 3 + [-2] * 3
    assert axes["filter: clean_p of the kept samples, all chunks"].get_legend_handles_labels()[1] == ["kept (12)"]
    assert [line.get_label() for line in axes["filter: clean_p ranking of the kept samples"].get_lines()] == [
        "kept samples tied at the max clean_p"]

    for c in chunks:  # records of an earlier version: no third row
        for k in [k for k in c if k.startswith(("clean_p", "buffer_"))]:
            del c[k]
    outputs.plot(summary(), EPISODES, str(tmp_path / "summary.png"), log=types.SimpleNamespace(chunks=chunks, evals=evals))
    assert "buffer: admissions and evictions per chunk" not in {ax.get_title() for ax in figs[-1].axes}


def test_compare_plot_purity_axis_is_0_to_100_with_each_rate_s_clean_share(tmp_path, monkeypatch):
    """compare.png: purity ticks 0-100% and a dashed line at each rate's clean share (1 - rate); the accuracy
    panel's x ticks are the rates run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import ml_collections
    from spr_jax import comparison
    figs = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig))
    rows = [{"method": m, "noise_rate": rate, "seed": seed, "final_accuracy": 0.5, "average_accuracy": 0.5,
             "forgetting": 0.1, "final_purity": 0.7, "filter_precision": None, "noisy_removed": None,
             "wall_time_s": 1.0, "diverged": None}
            for m in ("spr", "plain_replay") for rate in (0.2, 0.4) for seed in (0, 1)]
    config = ml_collections.ConfigDict({"dataset": {"name": "synthetic"}, "noise": {"kind": "symmetric"}})
    comparison.plot(rows, str(tmp_path / "compare.png"), config)
    accuracy, purity = figs[-1].axes[:2]
    assert list(purity.get_yticks()) == [0, 20, 40, 60, 80, 100] and purity.get_ylim()[0] == 0
    assert sorted(l.get_ydata()[0] for l in purity.get_lines() if l.get_linestyle() == "--") == pytest.approx([60, 80])
    assert list(accuracy.get_xticks()) == pytest.approx([20, 40])
