"""A whole SPR run: the expert phase, the replay phase segment by segment, evaluations, and outputs.

This is the I/O edge: it moves arrays to the device once, calls the compiled phases, and writes
WORKDIR/stream.json, metrics.jsonl (one line per chunk and per evaluation), summary.json and plots.
"""
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from spr_jax import episode
from spr_jax import evaluate
from spr_jax import experiment
from spr_jax import experts
from spr_jax import metrics as metrics_lib
from spr_jax import models
from spr_jax import purify
from spr_jax import rng


def replay_settings(config) -> episode.ReplaySettings:
    return episode.ReplaySettings(
        epochs=int(config.base.epochs), batch_size=int(config.base.batch_size), base_lr=float(config.ssl.lr),
        warmup_epochs=int(config.ssl.warmup_epochs), color_jitter=None, plain_replay=bool(config.buffer.plain_replay))


def color_jitter_for(images) -> bool:
    return images.shape[-1] == 3  # colour jitter only for RGB (SPEC.md section 4)


@functools.lru_cache(maxsize=None)
def filter_fn(num_classes: int, num_graphs: int, max_iter: int):
    """post_fn for the expert phase: (chunk, expert features, its noisy labels and filter key) -> clean_p, keep.

    Cached and free of run-specific closures, so the compiled expert phase is reused across runs.
    """
    def post_fn(chunk_index, features, args):
        clean_p, keep = purify.purify_chunk(args["key"], features, args["labels"], num_classes=num_classes,
                                            num_graphs=num_graphs, max_iter=max_iter)
        return {"clean_p": clean_p, "keep": keep}
    return post_fn


def run_expert_phase(config, model, prepared, train_images_dev, progress=True) -> dict:
    s = prepared.stream
    filter_keys = jax.vmap(lambda c: rng.chunk_key(config.seed, rng.FILTER, c))(jnp.arange(s.num_chunks))
    post_fn = filter_fn(prepared.num_classes, int(config.filter.num_graphs), int(config.filter.max_iter))
    return experts.expert_phase(
        train_images_dev, s.chunks, config.seed, model=model, epochs=int(config.expert.epochs),
        base_lr=float(config.ssl.lr), warmup_epochs=int(config.ssl.warmup_epochs),
        color_jitter=color_jitter_for(prepared.dataset.train.images), group_size=int(config.expert.group_size),
        post_fn=post_fn, post_args={"labels": prepared.noisy.noisy[s.chunks], "key": filter_keys},
        progress=progress)


def segments(stream, piece: int):
    """(task, start, end) pieces of at most `piece` chunks, never crossing an evaluation point."""
    out, start = [], 0
    for t, end in enumerate(stream.eval_points):
        while start < end:
            out.append((t, start, min(end, start + piece)))
            start = out[-1][2]
        out.append((t, None, None))  # the evaluation after task t
    return out


class Outputs:
    """Writes metrics.jsonl and keeps what summary.json needs."""

    def __init__(self, workdir):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.chunks, self.evals = [], []

    def write(self, record):
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def run(config, workdir: str, progress: bool = True) -> dict:
    os.makedirs(workdir, exist_ok=True)
    walls = {}
    t0 = time.time()
    prepared = experiment.prepare(config)
    stream_info = experiment.stream_summary(prepared)
    with open(os.path.join(workdir, "stream.json"), "w") as f:
        json.dump(stream_info, f, indent=1)
    if progress:
        print(experiment.format_stream_summary(stream_info), flush=True)
    ds, s, noisy = prepared.dataset, prepared.stream, prepared.noisy
    data = episode.TrainData(images=jnp.asarray(ds.train.images), noisy=jnp.asarray(noisy.noisy),
                             corrupt=jnp.asarray(noisy.corrupt))
    test_images, test_labels = jnp.asarray(ds.test.images), ds.test.labels
    model = models.make_simclr(config.model.encoder, int(config.model.proj_dim), config.model.input_norm)
    walls["prepare_s"] = time.time() - t0

    t0 = time.time()
    plain = bool(config.buffer.plain_replay)
    if plain:  # no experts, no filter: every sample is offered
        clean_p = np.full(s.chunks.shape, 0.5, np.float32)
        keep = np.ones(s.chunks.shape, bool)
    else:
        out = run_expert_phase(config, model, prepared, data.images, progress)
        clean_p, keep = np.asarray(out["clean_p"]), np.asarray(out["keep"])
    if not np.isfinite(clean_p).all():
        raise FloatingPointError("the expert phase produced non-finite clean_p; refusing to fill the buffer")
    walls["expert_phase_s"] = time.time() - t0

    t0 = time.time()
    settings = replay_settings(config)._replace(color_jitter=color_jitter_for(ds.train.images))
    state = episode.init_state(model, config.seed, ds.train.images.shape[1:], int(config.buffer.size),
                               prepared.num_classes)
    piece = max(1, int(config.checkpoint.every_chunks))
    log = Outputs(workdir)
    open(log.path, "w").close()
    matrix, purity_history, eval_time = [], [], 0.0
    bar = tqdm(total=s.num_chunks, desc="replay", unit="chunk", disable=not progress)
    for task, start, end in segments(s, piece):
        if start is None:  # evaluation at the boundary after `task`
            te = time.time()
            record = evaluation(config, prepared, state, data, test_images, test_labels, task)
            eval_time += time.time() - te
            matrix.append(record["task_accuracy"])
            log.evals.append(record)
            log.write(record)
            if progress:
                bar.write(f"after task {task}: accuracy {100 * record['accuracy']:.2f}%, "
                          f"buffer purity {_pct(record['buffer_purity'])}")
            continue
        n = end - start
        pad = piece - n
        xs = [np.concatenate([a[start:end], np.zeros((pad,) + a.shape[1:], a.dtype)])
              for a in (s.chunks, clean_p, keep)]
        active = np.arange(piece) < n
        state, m = episode.run_chunks(model, settings, state, data, *xs, active)
        m = jax.tree.map(np.asarray, m)
        for i in range(n):
            c = start + i
            record = chunk_record(c, int(s.chunk_task[c]), {k: v[i] for k, v in m.items()}, noisy.known)
            purity_history.append(record["buffer_purity"])
            log.chunks.append(record)
            log.write(record)
        bar.update(n)
    bar.close()
    walls["replay_phase_s"] = time.time() - t0 - eval_time
    walls["evaluation_s"] = eval_time

    summary = {
        "final_accuracy": log.evals[-1]["accuracy"],
        "accuracy_matrix": matrix,
        "average_accuracy": metrics_lib.average_accuracy(matrix),
        "forgetting": metrics_lib.forgetting(matrix),
        "final_purity": log.evals[-1]["buffer_purity"],
        "purity_history": purity_history,
        "final_buffer_counts": log.chunks[-1]["buffer_counts"],
        "num_chunks": s.num_chunks,
        "plain_replay": plain,
        "seed": int(config.seed),
        "dataset": ds.name,
        "noise": {"kind": config.noise.kind, "rate": float(config.noise.rate)},
        "wall_time_s": {k: round(v, 3) for k, v in walls.items()},
        "device": jax.devices()[0].device_kind,
    }
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    try:
        plot(summary, prepared.episodes, os.path.join(workdir, "summary.png"))
    except Exception as e:  # a plot is a convenience; never lose a run over it
        print(f"(plot skipped: {e})")
    if progress:
        print(report(summary))
    return summary


def _pct(x):
    return "n/a" if x is None else f"{100 * x:.1f}%"


def chunk_record(c, task, m, known) -> dict:
    valid = int(m["buffer_valid"])
    kept, kept_clean, clean = int(m["kept"]), int(m["kept_clean"]), int(m["clean"])
    return {
        "type": "chunk", "chunk": c, "task": task, "base_loss": float(m["base_loss"]),
        "replayed_buffer": bool(m["replayed_buffer"]),  # batches were half chunk, half purified buffer
        "kept": kept,
        "filter_precision": (kept_clean / kept if kept else None) if known else None,
        "filter_recall": (kept_clean / clean if clean else None) if known else None,
        "buffer_size": valid,
        "buffer_purity": (int(m["buffer_clean"]) / valid if valid else None) if known else None,
        "buffer_counts": [int(x) for x in m["buffer_counts"]],
    }


def evaluation(config, prepared, state, data, test_images, test_labels, task) -> dict:
    buf = jax.device_get(state.buffer)
    valid = np.asarray(buf.valid)
    idx = np.asarray(buf.index)[valid]
    key = rng.chunk_key(config.seed, rng.EVAL, task)
    preds = evaluate.evaluate(config, prepared.num_classes, state.base, data.images[jnp.asarray(idx)],
                              jnp.asarray(np.asarray(buf.label)[valid]), test_images, test_labels, key)
    known = prepared.noisy.known
    return {
        "type": "eval", "after_task": task, "chunks_processed": int(state.chunk),
        "accuracy": metrics_lib.overall_accuracy(preds, test_labels, prepared.episodes),
        "task_accuracy": metrics_lib.task_accuracies(preds, test_labels, prepared.episodes),
        "class_accuracy": metrics_lib.accuracy_by_class(preds, test_labels, prepared.num_classes).tolist(),
        "buffer_size": int(valid.sum()),
        "buffer_purity": float((~np.asarray(buf.corrupt)[valid]).mean()) if known and valid.any() else None,
    }


def report(summary) -> str:
    m = np.asarray(summary["accuracy_matrix"])
    lines = ["", f"SPR{' (plain replay)' if summary['plain_replay'] else ''} on {summary['dataset']}, "
             f"{summary['noise']['kind']} noise {summary['noise']['rate']}, seed {summary['seed']}",
             f"final accuracy   {100 * summary['final_accuracy']:.2f}%",
             f"average accuracy {100 * summary['average_accuracy']:.2f}%   forgetting {100 * summary['forgetting']:.2f}",
             f"buffer purity    {_pct(summary['final_purity'])}",
             "accuracy matrix (row: after task i; column: task j), %:"]
    lines += ["  " + " ".join(f"{100 * v:6.1f}" for v in row) for row in m]
    lines.append("wall time: " + ", ".join(f"{k} {v:.1f}" for k, v in summary["wall_time_s"].items()))
    return "\n".join(lines)


def plot(summary, episodes, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    m = 100 * np.asarray(summary["accuracy_matrix"])
    im = a.imshow(m, vmin=0, vmax=100, cmap="viridis")
    a.set_xlabel("task evaluated"), a.set_ylabel("after task"), a.set_title("test accuracy (%)")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            a.text(j, i, f"{m[i, j]:.0f}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(im, ax=a)
    purity = [np.nan if p is None else 100 * p for p in summary["purity_history"]]
    b.plot(purity)
    b.set_xlabel("chunk"), b.set_ylabel("purified buffer purity (%)"), b.set_ylim(0, 100)
    b.set_title("buffer purity")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
