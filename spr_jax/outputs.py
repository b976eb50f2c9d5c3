"""A run's outputs: metrics.jsonl (one record per chunk and per evaluation), summary.json, the report
printed at the end and summary.png. Host-side only; formulas of the metrics live in spr_jax.metrics.
"""
import json
import os

import jax
import numpy as np

from spr_jax import chunk_diagnostics
from spr_jax import metrics as metrics_lib
from spr_jax import parallel
from spr_jax.files import write_atomic


class MetricsLog:
    """Appends records to WORKDIR/metrics.jsonl and keeps those summary.json needs."""

    def __init__(self, workdir, writers=()):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.chunks, self.evals = [], []
        self.writers = list(writers)  # e.g. metric_writers.TensorBoard: each record is passed on as written

    def write(self, record):
        (self.evals if record["type"] == "eval" else self.chunks).append(record)
        if not parallel.is_primary():  # one process writes the outputs of a multi-host run
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for writer in self.writers:
            writer.write(record)

    def text(self) -> str:
        """metrics.jsonl's content for the records held, in stream order."""
        return "".join(json.dumps(r) + "\n" for r in self.records())

    def records(self) -> list:
        """The records held, in stream order (each evaluation after the chunk it follows)."""
        return sorted(self.chunks + self.evals, key=lambda r: (
            r["chunk"] + 1 if r["type"] == "chunk" else r["chunks_processed"], r["type"] == "eval"))

    def rewrite(self):
        """metrics.jsonl from the records held (on resume: those of the checkpoint, in stream order), and the
        writers that can start over (TensorBoard) rewritten from them too: what an interrupted session wrote
        after its last checkpoint is not left behind to be written again (no step twice)."""
        if not parallel.is_primary():
            return
        write_atomic(self.path, self.text())
        for writer in self.writers:
            if hasattr(writer, "restart"):
                writer.restart(self.records())


def chunk_record(c, task, m, known) -> dict:
    """metrics.jsonl's record of chunk c from the replay phase's per-chunk metrics `m`."""
    valid = int(m["buffer_valid"])
    kept, kept_clean, clean = int(m["kept"]), int(m["kept_clean"]), int(m["clean"])
    precision, recall = metrics_lib.precision_recall_from_counts(kept, kept_clean, clean)
    return {
        "type": "chunk", "chunk": c, "task": task,
        "base_loss": float(m["base_loss"]) if np.isfinite(m["base_loss"]) else None,  # None: base not trained
        "replayed_buffer": bool(m["replayed_buffer"]),  # batches were half chunk, half buffer
        "kept": kept,
        "filter_precision": precision if known else None,
        "filter_recall": recall if known else None,
        "buffer_size": valid,
        "buffer_purity": (int(m["buffer_clean"]) / valid if valid else None) if known else None,
        "buffer_counts": [int(x) for x in m["buffer_counts"]],
        **chunk_diagnostics.record_fields(m, known),  # (last: earlier runs' records only gain keys)
    }


def summary(log: MetricsLog, *, num_chunks, method, seed, dataset, noise, walls, stream_clean_share=None,
            compile_s=None, diverged=None) -> dict:
    """summary.json's dict; `diverged`: the divergence rule's verdict (run_checks.divergence), or None."""
    # null where task j was not yet seen when evaluated after task i (j > i): those cells are no result.
    matrix = [[a if j <= r["after_task"] else None for j, a in enumerate(r["task_accuracy"])] for r in log.evals]
    return {
        "final_accuracy": log.evals[-1]["accuracy"],
        # What made an evaluation meaningless (an empty memory, a filter that kept nothing), as printed, and
        # the divergence's message last.
        "warnings": [w for r in log.evals for w in r.get("warnings", [])] + ([diverged["message"]] if diverged else []),
        # null, or a run that diverged or collapsed (exit status 3): {"message", "hint", "fields": likely first}
        "diverged": diverged,
        "accuracy_matrix": matrix,
        "average_accuracy": metrics_lib.average_accuracy(matrix),
        "forgetting": metrics_lib.forgetting(matrix),
        "final_purity": log.evals[-1]["buffer_purity"],
        "purity_history": [r["buffer_purity"] for r in log.chunks],
        "eval_chunks": [r["chunks_processed"] for r in log.evals],  # task boundaries, in chunks processed
        "stream_clean_share": stream_clean_share,  # share of right labels in the streamed samples (None: unknown)
        "final_buffer_counts": log.chunks[-1]["buffer_counts"],
        "num_chunks": num_chunks,
        "method": method,
        "seed": seed,
        "dataset": dataset,
        "noise": noise,
        "wall_time_s": {k: round(v, 3) for k, v in walls.items()},
        "compile_s": None if compile_s is None else round(compile_s, 3),  # tracing + compiling, within the walls
        "device": jax.devices()[0].device_kind,
    }


def write_summary(workdir, summary_, episodes, progress=True, log=None, summary_plot=True) -> None:
    """summary.json, and summary.png unless summary_plot=False (an older one is then removed: it would show
    another run)."""
    if not parallel.is_primary():
        return
    write_atomic(os.path.join(workdir, "summary.json"), json.dumps(summary_, indent=1))
    png = os.path.join(workdir, "summary.png")
    try:
        if summary_plot:
            plot(summary_, episodes, png, log=log)
        elif os.path.exists(png):
            os.remove(png)
    except Exception as e:  # a plot is a convenience; never lose a run over it
        print(f"(plot skipped: {e})")
    if progress:
        print(report(summary_))


def seen_tasks_accuracy(record) -> float:
    """An evaluation's mean accuracy over the tasks seen so far (tasks 0 to after_task, each weighted alike)."""
    seen = record["task_accuracy"][:record["after_task"] + 1]
    return sum(seen) / len(seen)


def eval_line(record) -> str:
    """The progress line of one evaluation, saying what each accuracy covers."""
    t = record["after_task"]
    return (f"after task {t}: accuracy {100 * seen_tasks_accuracy(record):.1f}% on the tasks seen so far (mean over "
            f"tasks 0-{t}), {100 * record['accuracy']:.1f}% on all test samples of the episodes' classes; "
            f"buffer purity {pct(record['buffer_purity'])}")


def pct(x):
    return "n/a" if x is None else f"{100 * x:.1f}%"


def method_name(method: dict) -> str:
    """'SPR' for SPR's own composition, else the plug-ins that differ from it; a run whose base is never
    trained (self_supervised_base False: a memory-only learner such as GDumb) is not called SPR."""
    spr = {"filter": "centrality", "buffer_policy": "purified", "encoder": None, "eval_loss": "cross_entropy"}
    parts = [f"{k}={v}" for k, v in method.items() if k in spr and spr[k] is not None and v != spr[k]]
    if method.get("protocol") == "online":
        return "online learner: " + ", ".join(f"{k}={method[k]}" for k in ("buffer_policy", "eval_loss", "retrieval",
                                                                            "ewc_lambda") if k in method)
    if not method.get("self_supervised_base", True):
        return "memory-only learner (no self-supervised base): " + ", ".join(
            f"{k}={method[k]}" for k in ("filter", "buffer_policy", "eval_loss") if k in method)
    return "SPR" if not parts else "SPR with " + ", ".join(parts)


def _noise_name(noise: dict) -> str:
    kind, rate = noise.get("kind"), noise.get("rate")
    if kind == "none" or (kind != "real" and not rate):
        return "no noise"
    if kind == "real" or rate is None:
        return f"{kind} noise"
    return f"{kind} noise {100 * rate:g}%"


def _seen_matrix(matrix) -> np.ma.MaskedArray:
    """The accuracy matrix in %, cells j > i (task j not yet trained when evaluated after task i) masked."""
    m = 100 * np.asarray(matrix, dtype=float).reshape(len(matrix), -1)
    unseen = np.triu(np.ones(m.shape, dtype=bool), k=1)
    return np.ma.masked_array(m, mask=unseen | ~np.isfinite(m))


def report(s) -> str:
    m = _seen_matrix(s["accuracy_matrix"])
    lines = ["", f"{method_name(s['method'])} on {s['dataset']}, {_noise_name(s['noise'])}, seed {s['seed']}",
             f"final accuracy   {100 * s['final_accuracy']:.2f}%  (all test samples of the episodes' classes)",
             f"average accuracy {100 * s['average_accuracy']:.2f}%  (mean of the matrix's last row)   "
             f"forgetting {100 * s['forgetting']:.2f} points",
             f"buffer purity    {pct(s['final_purity'])}  (share of correctly labelled samples in the buffer)",
             "accuracy matrix, % (row i: after task i; column j: test samples of task j's classes; "
             "'-' = task not yet seen)"]
    w = len(f"after {m.shape[0] - 1}")
    lines.append(" " * (2 + w) + "".join(f"{'task ' + str(j):>8}" for j in range(m.shape[1])))
    lines += [f"  {'after ' + str(i):<{w}}" + "".join(f"{'-':>8}" if m.mask[i, j] else f"{m[i, j]:8.1f}"
                                               for j in range(m.shape[1])) for i in range(m.shape[0])]
    lines.append("wall time: " + ", ".join(f"{k} {v:.1f}" for k, v in s["wall_time_s"].items()))
    return "\n".join(lines)


def _title(s) -> str:
    parts = [f"{method_name(s['method'])} on {s['dataset']}", _noise_name(s["noise"]), f"seed {s['seed']}"]
    last = f"final accuracy {pct(s['final_accuracy'])}"
    if s.get("final_purity") is not None:
        last += f", purity {pct(s['final_purity'])}"
    return " - ".join(parts + [last])


def _task_label(j, episodes) -> str:
    if episodes is None or j >= len(episodes):
        return f"task {j}"
    classes = [int(c) for c in episodes[j]]
    shown = ", ".join(str(c) for c in classes[:4]) + (", ..." if len(classes) > 4 else "")
    return f"task {j} ({shown})"


def draw_accuracy_matrix(ax, matrix, episodes):
    """The accuracy matrix on `ax` (summary.png's panel, TensorBoard's image): cells in % with their values
    written, rows "after task i", columns task j with its classes, unseen tasks grey. Returns the image."""
    import matplotlib
    m = _seen_matrix(matrix)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")  # masked cells: grey
    im = ax.imshow(m, vmin=0, vmax=100, cmap=cmap)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if not m.mask[i, j]:
                ax.text(j, i, f"{m[i, j]:.0f}", ha="center", va="center", fontsize=9,
                        color="k" if m[i, j] > 60 else "w")
    ax.set_xticks(range(m.shape[1]), [_task_label(j, episodes) for j in range(m.shape[1])],
                  rotation=30 if m.shape[1] > 3 else 0, ha="right" if m.shape[1] > 3 else "center", fontsize=8)
    ax.set_yticks(range(m.shape[0]), [f"after task {i}" for i in range(m.shape[0])], fontsize=8)
    ax.set_xlabel("evaluated on the test samples of task j's classes")
    ax.set_title("test accuracy (%) per task\n(grey: task not yet seen)", fontsize=10)
    return im


def plot(summary_, episodes, path, log=None):
    """summary.png: the accuracy matrix and the buffer's purity; given the run's MetricsLog, a second row
    with the filter per chunk (kept, precision), the base's self-supervised loss per chunk and the
    evaluation fine-tune's loss per epoch, and where its chunk records carry the clean_p diagnostics a third:
    the kept samples' clean_p ranking per chunk (AUC, tie share), the buffer's admissions and evictions per
    chunk and the kept samples' clean_p histogram over the run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if log is None:
        fig, (a, b) = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [1, 1.15]})
    else:
        diagnostics = any("clean_p_hist" in r for r in log.chunks)  # (records of earlier versions lack them)
        fig = plt.figure(figsize=(15, 14.2 if diagnostics else 9.6))
        grid = fig.add_gridspec(3 if diagnostics else 2, 6, height_ratios=[1.15, 1, 1][:3 if diagnostics else 2])
        a, b = fig.add_subplot(grid[0, :3]), fig.add_subplot(grid[0, 3:])
        num_chunks = max(summary_.get("num_chunks", len(log.chunks)), len(log.chunks))
        chunk_panels = [fig.add_subplot(grid[1, :2]), fig.add_subplot(grid[1, 2:4])]
        _plot_filter(chunk_panels[0], log.chunks, summary_.get("stream_clean_share"))
        _plot_base_loss(chunk_panels[1], log.chunks)
        _plot_finetune_loss(fig.add_subplot(grid[1, 4:]), log.evals)
        if diagnostics:
            chunk_panels += [fig.add_subplot(grid[2, :2]), fig.add_subplot(grid[2, 2:4])]
            _plot_ranking(chunk_panels[2], log.chunks)
            _plot_turnover(chunk_panels[3], log.chunks)
            _plot_clean_p_hist(fig.add_subplot(grid[2, 4:]), log.chunks)
        for ax in chunk_panels:  # one chunk numbering and integer ticks on every chunk axis
            _chunk_axis(ax, num_chunks)

    im = draw_accuracy_matrix(a, summary_["accuracy_matrix"], episodes)
    fig.colorbar(im, ax=a, fraction=0.046, pad=0.04)

    purity = np.array([np.nan if p is None else 100 * p for p in summary_["purity_history"]], dtype=float)
    chunks = np.arange(len(purity))  # x: the chunk's index, 0-based as in metrics.jsonl and TensorBoard
    if np.isfinite(purity).any():
        b.plot(chunks, purity, marker="o", markersize=3, label="buffer purity")
    else:
        b.text(0.5, 0.5, "purity unknown\n(noise not known)", ha="center", va="center",
               transform=b.transAxes, color="grey")
    share = summary_.get("stream_clean_share")
    if share is not None:
        b.axhline(100 * share, color="tab:red", linestyle="--", label="stream's clean share (no filter)")
    num_chunks = max(summary_.get("num_chunks", len(purity)), len(purity))
    _task_bounds(b, summary_, num_chunks)
    b.set_ylim(0, 100)
    _chunk_axis(b, num_chunks)
    b.set_ylabel("buffer purity (%)")
    b.set_title("buffer purity (share of correctly labelled samples)", fontsize=10)
    b.grid(axis="y", alpha=0.3)
    if b.get_legend_handles_labels()[0]:
        b.legend(loc="best", fontsize=8)

    fig.suptitle(_title(summary_), fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _chunk_axis(ax, num_chunks: int) -> None:
    """A chunk x axis: chunk indices 0 .. num_chunks-1 (as metrics.jsonl and TensorBoard), integer ticks (each
    chunk's up to 30 chunks)."""
    from matplotlib.ticker import MaxNLocator
    n = max(int(num_chunks), 1)
    ax.set_xlim(-0.5, n - 0.5)
    if n <= 30:
        ax.set_xticks(range(n))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("chunk (0-based, as in metrics.jsonl)")


def _task_bounds(ax, summary_, num_chunks: int) -> None:
    """Dotted lines between the last chunk of a task and the first of the next."""
    bounds = [c for c in (summary_.get("eval_chunks") or []) if c < num_chunks]
    for k, c in enumerate(bounds):
        ax.axvline(c - 0.5, color="grey", linestyle=":", label="task boundary" if k == 0 else None)


def _no_data(ax, text):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")


def _plot_filter(ax, chunks, share=None):
    """Per chunk: samples kept, and the filter's precision (0-100%) beside the stream's clean share (`share`:
    the precision of keeping everything)."""
    x = [r["chunk"] for r in chunks]
    if not x:
        _no_data(ax, "no chunk")
    else:
        ax.bar(x, [r["kept"] for r in chunks], color="tab:blue", alpha=0.35, label="kept (samples)")
        ax.set_ylabel("samples kept by the filter")
        precision = [np.nan if r.get("filter_precision") is None else 100 * r["filter_precision"] for r in chunks]
        handles = ax.get_legend_handles_labels()
        if np.isfinite(precision).any():
            right = ax.twinx()
            right.plot(x, precision, color="tab:green", marker="o", markersize=3, label="filter precision")
            if share is not None:
                right.axhline(100 * share, color="tab:red", linestyle="--", label="stream's clean share (no filter)")
            right.set_ylim(0, 100), right.set_ylabel("filter precision (%)")
            more = right.get_legend_handles_labels()
            handles = (handles[0] + more[0], handles[1] + more[1])
        ax.legend(*handles, loc="lower right", fontsize=8)
    ax.set_title("filter per chunk", fontsize=10)
    ax.grid(axis="y", alpha=0.3)


def _values(chunks, key, scale=1.0):
    return np.array([np.nan if r.get(key) is None else scale * r[key] for r in chunks], dtype=float)


def _plot_ranking(ax, chunks):
    """Per chunk: how well clean_p separates the kept samples' right labels from wrong ones (AUC), and how
    many kept samples tie at the chunk's highest clean_p (where the buffer's eviction is oldest-first)."""
    x = [r["chunk"] for r in chunks]
    auc, tied = _values(chunks, "clean_p_auc", 100), _values(chunks, "clean_p_tied_share", 100)
    if np.isfinite(auc).any():
        ax.plot(x, auc, color="tab:green", marker="o", markersize=3, label="ROC-AUC of clean_p (clean vs noisy)")
        ax.axhline(50, color="grey", linestyle="--", linewidth=0.8, label="AUC 50: no separation")
    if np.isfinite(tied).any():
        ax.plot(x, tied, color="tab:orange", marker="s", markersize=3, label="kept samples tied at the max clean_p")
    noisy_tied = _values(chunks, "clean_p_tied_noisy_share", 100)
    if np.isfinite(noisy_tied).any():
        ax.plot(x, noisy_tied, color="tab:red", linestyle=":", marker="v", markersize=3,
                label="noisy among those tied")
    if ax.get_legend_handles_labels()[0]:  # above the 0-100 range, so it hides no point
        ax.legend(loc="upper center", fontsize=7, ncol=2)
    else:
        _no_data(ax, "nothing kept")
    ax.set_ylim(-3, 128), ax.set_yticks(range(0, 101, 20)), ax.set_ylabel("%")
    ax.set_title("filter: clean_p ranking of the kept samples", fontsize=10)
    ax.grid(axis="y", alpha=0.3)


def _plot_turnover(ax, chunks):
    """Per chunk: samples admitted to the buffer (up) and evicted from it (down), clean and noisy stacked;
    the noisy ones only where the noise is known."""
    x = np.array([r["chunk"] for r in chunks])
    known = any(r.get("buffer_admitted_noisy") is not None for r in chunks)
    if known:
        bars = [("buffer_admitted_clean", 1, "tab:blue", "admitted clean"),
                ("buffer_admitted_noisy", 1, "tab:red", "admitted noisy"),
                ("buffer_evicted_clean", -1, "lightsteelblue", "evicted clean"),
                ("buffer_evicted_noisy", -1, "lightcoral", "evicted noisy")]
    else:
        bars = [("buffer_admitted", 1, "tab:blue", "admitted"), ("buffer_evicted", -1, "lightsteelblue", "evicted")]
    bottoms = {1: np.zeros(len(x)), -1: np.zeros(len(x))}
    for key, sign, colour, label in bars:
        v = sign * np.nan_to_num(_values(chunks, key))
        ax.bar(x, v, bottom=bottoms[sign], color=colour, label=label)
        bottoms[sign] += v
    ax.axhline(0, color="k", linewidth=0.8)
    ax.legend(loc="best", fontsize=7, ncol=2)
    ax.set_ylabel("samples (evicted below 0)")
    ax.set_title("buffer: admissions and evictions per chunk", fontsize=10)
    ax.grid(axis="y", alpha=0.3)


def _plot_clean_p_hist(ax, chunks):
    """The kept samples' clean_p over the whole run (the chunks' histograms added up), right and wrong labels
    side by side where the noise is known, each as a share of its group."""
    edges = chunk_diagnostics.CLEAN_P_EDGES
    width = np.diff(edges)
    groups = [("clean_p_hist_clean", "tab:blue", "kept clean"), ("clean_p_hist_noisy", "tab:red", "kept noisy")]
    if not any(r.get("clean_p_hist_noisy") is not None for r in chunks):
        groups = [("clean_p_hist", "tab:blue", "kept")]
    for i, (key, colour, label) in enumerate(groups):
        counts = np.sum([r[key] for r in chunks if r.get(key) is not None], axis=0)
        total = int(np.sum(counts))
        if total:
            w = width / len(groups)
            ax.bar(edges[:-1] + i * w, 100 * counts / total, width=w, align="edge", color=colour,
                   label=f"{label} ({total})")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", fontsize=8)
    else:
        _no_data(ax, "nothing kept")
    ax.set_xlim(0, 1), ax.set_xticks(edges[::2])
    ax.set_xlabel("clean_p (bins of 0.1; the last includes 1)"), ax.set_ylabel("% of the group")
    ax.set_title("filter: clean_p of the kept samples, all chunks", fontsize=10)
    ax.grid(axis="y", alpha=0.3)


def _plot_base_loss(ax, chunks):
    points = [(r["chunk"], r["base_loss"]) for r in chunks if r.get("base_loss") is not None]
    if points:
        ax.plot(*zip(*points), marker="o", markersize=3, color="tab:purple")
    else:
        _no_data(ax, "base not trained")
    ax.set_ylabel("loss")
    ax.set_title("base: self-supervised loss per chunk", fontsize=10)
    ax.grid(alpha=0.3)


def _plot_finetune_loss(ax, evals):
    curves = [(r["after_task"], r["finetune_loss"]) for r in evals if r.get("finetune_loss")]
    colours = matplotlib_colours(len(curves))
    for (task, losses), colour in zip(curves, colours):
        ax.plot(np.arange(1, len(losses) + 1), losses, color=colour, label=f"after task {task}")
    if curves:
        ax.legend(loc="upper right", fontsize=8)
        if all(v > 0 for _, losses in curves for v in losses):  # (a loss of 0 or below has no log)
            from matplotlib.ticker import FuncFormatter, NullFormatter
            ax.set_yscale("log")
            plain = FuncFormatter(lambda v, _: f"{v:.3g}")  # 0.4, 2 (not 4 x 10^-1)
            values = [v for _, losses in curves for v in losses]
            # Minor ticks get labels only within a decade: over several, 2..9 x 10^k labels overlap.
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain if max(values) < 10 * min(values) else NullFormatter())
    else:
        _no_data(ax, "no fine-tune\n(memory smaller than a batch, or an online learner)")
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs
    ax.set_xlabel("fine-tune epoch"), ax.set_ylabel("loss (log scale)" if ax.get_yscale() == "log" else "loss")
    ax.set_title("evaluation: classifier fine-tune loss", fontsize=10)
    ax.grid(alpha=0.3)


def matplotlib_colours(n: int) -> list:
    import matplotlib
    cmap = matplotlib.colormaps["viridis"]
    return [cmap(0.85 * i / max(n - 1, 1)) for i in range(n)]
