"""A run's outputs: metrics.jsonl (one record per chunk and per evaluation), summary.json, the report
printed at the end and summary.png. Host-side only; formulas of the metrics live in spr_jax.metrics.
"""
import json
import os

import jax
import numpy as np

from spr_jax import metrics as metrics_lib


class MetricsLog:
    """Appends records to WORKDIR/metrics.jsonl and keeps those summary.json needs."""

    def __init__(self, workdir):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.chunks, self.evals = [], []

    def write(self, record):
        (self.evals if record["type"] == "eval" else self.chunks).append(record)
        if jax.process_index() != 0:  # one process writes the outputs of a multi-host run
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def rewrite(self):
        """metrics.jsonl from the records held (on resume: those of the checkpoint, in stream order)."""
        if jax.process_index() != 0:
            return
        records = sorted(self.chunks + self.evals, key=lambda r: (
            r["chunk"] + 1 if r["type"] == "chunk" else r["chunks_processed"], r["type"] == "eval"))
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in records))


def write_atomic(path: str, text: str) -> None:
    """Readers see the old file or the new one, never half of one."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def chunk_record(c, task, m, known) -> dict:
    """metrics.jsonl's record of chunk c from the replay phase's per-chunk metrics `m`."""
    valid = int(m["buffer_valid"])
    kept, kept_clean, clean = int(m["kept"]), int(m["kept_clean"]), int(m["clean"])
    precision, recall = metrics_lib.precision_recall_from_counts(kept, kept_clean, clean)
    return {
        "type": "chunk", "chunk": c, "task": task, "base_loss": float(m["base_loss"]),
        "replayed_buffer": bool(m["replayed_buffer"]),  # batches were half chunk, half buffer
        "kept": kept,
        "filter_precision": precision if known else None,
        "filter_recall": recall if known else None,
        "buffer_size": valid,
        "buffer_purity": (int(m["buffer_clean"]) / valid if valid else None) if known else None,
        "buffer_counts": [int(x) for x in m["buffer_counts"]],
    }


def summary(log: MetricsLog, *, num_chunks, method, seed, dataset, noise, walls) -> dict:
    matrix = [r["task_accuracy"] for r in log.evals]
    return {
        "final_accuracy": log.evals[-1]["accuracy"],
        "accuracy_matrix": matrix,
        "average_accuracy": metrics_lib.average_accuracy(matrix),
        "forgetting": metrics_lib.forgetting(matrix),
        "final_purity": log.evals[-1]["buffer_purity"],
        "purity_history": [r["buffer_purity"] for r in log.chunks],
        "final_buffer_counts": log.chunks[-1]["buffer_counts"],
        "num_chunks": num_chunks,
        "method": method,
        "seed": seed,
        "dataset": dataset,
        "noise": noise,
        "wall_time_s": {k: round(v, 3) for k, v in walls.items()},
        "device": jax.devices()[0].device_kind,
    }


def write_summary(workdir, summary_, episodes, progress=True) -> None:
    if jax.process_index() != 0:
        return
    write_atomic(os.path.join(workdir, "summary.json"), json.dumps(summary_, indent=1))
    try:
        plot(summary_, episodes, os.path.join(workdir, "summary.png"))
    except Exception as e:  # a plot is a convenience; never lose a run over it
        print(f"(plot skipped: {e})")
    if progress:
        print(report(summary_))


def pct(x):
    return "n/a" if x is None else f"{100 * x:.1f}%"


def method_name(method: dict) -> str:
    """'SPR' for SPR's own composition, else the plug-ins that differ from it."""
    spr = {"filter": "centrality", "buffer_policy": "purified", "encoder": None, "eval_loss": "cross_entropy"}
    parts = [f"{k}={v}" for k, v in method.items() if k in spr and spr[k] is not None and v != spr[k]]
    return "SPR" if not parts else "SPR with " + ", ".join(parts)


def report(s) -> str:
    m = np.asarray(s["accuracy_matrix"])
    lines = ["", f"{method_name(s['method'])} on {s['dataset']}, {s['noise']['kind']} noise {s['noise']['rate']}, "
             f"seed {s['seed']}",
             f"final accuracy   {100 * s['final_accuracy']:.2f}%",
             f"average accuracy {100 * s['average_accuracy']:.2f}%   forgetting {100 * s['forgetting']:.2f}",
             f"buffer purity    {pct(s['final_purity'])}",
             "accuracy matrix (row: after task i; column: task j), %:"]
    lines += ["  " + " ".join(f"{100 * v:6.1f}" for v in row) for row in m]
    lines.append("wall time: " + ", ".join(f"{k} {v:.1f}" for k, v in s["wall_time_s"].items()))
    return "\n".join(lines)


def plot(summary_, episodes, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    m = 100 * np.asarray(summary_["accuracy_matrix"])
    im = a.imshow(m, vmin=0, vmax=100, cmap="viridis")
    a.set_xlabel("task evaluated"), a.set_ylabel("after task"), a.set_title("test accuracy (%)")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            a.text(j, i, f"{m[i, j]:.0f}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(im, ax=a)
    purity = [np.nan if p is None else 100 * p for p in summary_["purity_history"]]
    b.plot(purity)
    b.set_xlabel("chunk"), b.set_ylabel("buffer purity (%)"), b.set_ylim(0, 100)
    b.set_title("buffer purity")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
