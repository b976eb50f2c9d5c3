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

import spr_jax
from spr_jax import checkpoint
from spr_jax import episode
from spr_jax import evaluate
from spr_jax import experiment
from spr_jax import expert_cache
from spr_jax import experts
from spr_jax import metrics as metrics_lib
from spr_jax import models
from spr_jax import purify
from spr_jax import rng


def replay_settings(config, channels: int) -> episode.ReplaySettings:
    return episode.ReplaySettings(
        epochs=int(config.base.epochs), batch_size=int(config.base.batch_size), base_lr=float(config.ssl.lr),
        warmup_epochs=int(config.ssl.warmup_epochs), temperature=float(config.ssl.temperature),
        color_jitter=channels == 3,  # colour jitter only for RGB (SPEC.md section 4)
        plain_replay=bool(config.buffer.plain_replay), data_parallel=data_parallel_devices(config))


def data_parallel_devices(config) -> int:
    """Local devices the base's self-replay batches are split over (1 = off)."""
    if not config.base.data_parallel:
        return 1
    n = jax.local_device_count()
    half = int(config.base.batch_size) // 2
    if half % n or min(int(config.base.batch_size), int(config.stream.delayed_buffer_size)) % n:
        raise ValueError(f"config.base.data_parallel splits batches over {n} devices, but batch sizes "
                         f"{config.base.batch_size} and {half} are not all divisible by {n}")
    return n


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


def expert_cache_dir(config, workdir: str) -> str:
    return config.cache.dir or os.path.join(workdir, "expert_cache")


def chunk_descriptions(config, prepared) -> list:
    """Everything a chunk's expert outputs depend on, one dict per chunk (the expert cache's keys)."""
    s = prepared.stream
    common = dict(
        dataset={"name": prepared.dataset.name, "subset_per_class": int(config.dataset.subset_per_class),
                 "train_images": int(prepared.dataset.train.labels.size)},
        noise={"kind": config.noise.kind, "rate": float(config.noise.rate)},
        seed=int(config.seed),
        stream={"chunk_size": s.chunk_size, "batch": int(config.stream.batch),
                "episodes": [list(map(int, t)) for t in prepared.episodes]},
        expert={"model": config.model.to_dict(), "ssl": config.ssl.to_dict(), "epochs": int(config.expert.epochs),
                "filter": config.filter.to_dict()})
    return [expert_cache.chunk_cache_description(chunk_index=c, chunk_indices=s.chunks[c], **common)
            for c in range(s.num_chunks)]


def train_missing_experts(config, prepared, train_images_dev, misses, progress) -> dict:
    """{chunk: outputs} for the chunks in `misses`: clean_p, keep, features and final_loss with one process;
    clean_p and keep with several (features stay on the host that trained them).

    With several processes (jax.distributed), process p trains the chunks misses[p::P] on its local
    devices, and the outputs are all-gathered so every process returns all of them.
    """
    s = prepared.stream
    nproc, me = jax.process_count(), jax.process_index()
    mine = np.asarray(misses[me::nproc], np.int32)
    out = {}
    if mine.size:
        filter_keys = jax.vmap(lambda c: rng.chunk_key(config.seed, rng.FILTER, c))(jnp.asarray(mine))
        post_fn = filter_fn(prepared.num_classes, int(config.filter.num_graphs), int(config.filter.max_iter))
        out = experts.expert_phase(
            train_images_dev, s.chunks[mine], config.seed, chunk_ids=mine, post_fn=post_fn,
            post_args={"labels": prepared.noisy.noisy[s.chunks[mine]], "key": filter_keys}, keep_losses=False,
            progress=progress, **experts.phase_kwargs(config, prepared.dataset.train.images.shape[-1]))
    if nproc == 1:
        return {int(c): {k: np.asarray(v[j]) for k, v in out.items()} for j, c in enumerate(mine)}
    from jax.experimental import multihost_utils
    rows = -(-len(misses) // nproc)  # every process contributes the same shape: pad to `rows`
    d = s.chunk_size
    pad = {"clean_p": np.zeros((rows, d), np.float32), "keep": np.zeros((rows, d), bool)}
    for k in pad:
        if mine.size:
            pad[k][:mine.size] = out[k]
    gathered = multihost_utils.process_allgather(pad)  # [P, rows, D]
    result = {}
    for p in range(nproc):
        for j, c in enumerate(misses[p::nproc]):
            result[int(c)] = {k: np.asarray(gathered[k][p, j]) for k in pad}
    return result


def run_expert_phase(config, prepared, train_images_dev, cache_dir: str, progress=True) -> dict:
    """clean_p and keep [C, D] of every chunk: read from the expert cache, the missing ones trained (in
    parallel over chunk groups and devices) and written to it. Returns them with hit/trained counts."""
    s = prepared.stream
    descriptions = chunk_descriptions(config, prepared)
    keys = [expert_cache.description_key(d) for d in descriptions]
    cache = expert_cache.ExpertCache(cache_dir)
    hits, misses = cache.get_many(keys)
    own_misses = set(misses)
    if jax.process_count() > 1:
        # Caches may differ per process (one per host): all train the union of their misses, so every
        # process makes the same collective calls with the same split.
        from jax.experimental import multihost_utils
        missing = np.zeros(s.num_chunks, bool)
        missing[misses] = True
        misses = np.flatnonzero(multihost_utils.process_allgather(missing).any(axis=0)).tolist()
    if misses:
        for c, outputs in train_missing_experts(config, prepared, train_images_dev, misses, progress).items():
            if c in own_misses:  # every process fills its own cache (puts are atomic, so shared folders are safe)
                cache.put(keys[c], outputs, descriptions[c])
            hits[c] = outputs
    return {"clean_p": np.stack([hits[c]["clean_p"] for c in range(s.num_chunks)]),
            "keep": np.stack([hits[c]["keep"] for c in range(s.num_chunks)]),
            "cache_hits": s.num_chunks - len(misses), "trained": len(misses)}


def fill_expert_cache(config, workdir: str, progress: bool = True) -> dict:
    """--mode=experts: only the expert phase (experts + filter for every chunk), written to the cache so
    that later runs with the same data, noise, seed and expert settings skip it (SPEC.md section 5b)."""
    os.makedirs(workdir, exist_ok=True)
    t0 = time.time()
    prepared = experiment.prepare(config)
    out = run_expert_phase(config, prepared, jnp.asarray(prepared.dataset.train.images),
                           expert_cache_dir(config, workdir), progress)
    info = {"chunks": prepared.stream.num_chunks, "cache_hits": out["cache_hits"], "trained": out["trained"],
            "cache_dir": expert_cache_dir(config, workdir), "wall_time_s": round(time.time() - t0, 3)}
    if progress:
        print(f"expert phase: {info['trained']} chunks trained, {info['cache_hits']} already cached, in "
              f"{info['wall_time_s']:.1f} s -> {info['cache_dir']}")
    return info


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
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        os.replace(tmp, self.path)


# Config fields that change no result: a run may resume with other values of these.
_RESULT_NEUTRAL = ("checkpoint", "cache")


def run_fingerprint(config) -> dict:
    d = config.to_dict()
    for k in _RESULT_NEUTRAL:
        d.pop(k, None)
    d["expert"].pop("group_size", None)
    d["eval"].pop("test_batch_size", None)
    return {"config": d, "code_version": spr_jax.__version__}


def run(config, workdir: str, progress: bool = True) -> dict:
    os.makedirs(workdir, exist_ok=True)
    walls = {}
    t0 = time.time()
    prepared = experiment.prepare(config)
    stream_info = experiment.stream_summary(prepared)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "stream.json"), "w") as f:
            json.dump(stream_info, f, indent=1)
    if progress:
        print(experiment.format_stream_summary(stream_info), flush=True)
    ds, s, noisy = prepared.dataset, prepared.stream, prepared.noisy
    data = episode.TrainData(images=jnp.asarray(ds.train.images), noisy=jnp.asarray(noisy.noisy),
                             corrupt=jnp.asarray(noisy.corrupt))
    test_images, test_labels = jnp.asarray(ds.test.images), ds.test.labels
    model = models.make_simclr(config.model.encoder, int(config.model.proj_dim), config.model.input_norm)
    # Opened before any work, so a workdir holding another run's checkpoints is refused at once.
    ckpt = checkpoint.RunCheckpointer(workdir, run_fingerprint(config), keep=int(config.checkpoint.keep))
    walls["prepare_s"] = time.time() - t0

    t0 = time.time()
    plain = bool(config.buffer.plain_replay)
    if plain:  # no experts, no filter: every sample is offered
        clean_p = np.full(s.chunks.shape, 0.5, np.float32)
        keep = np.ones(s.chunks.shape, bool)
    else:
        out = run_expert_phase(config, prepared, data.images, expert_cache_dir(config, workdir), progress)
        clean_p, keep = out["clean_p"], out["keep"]
        if progress and out["cache_hits"]:
            print(f"expert cache: {out['cache_hits']} chunks reused, {out['trained']} trained")
    if not np.isfinite(clean_p).all():
        raise FloatingPointError("the expert phase produced non-finite clean_p; refusing to fill the buffer")
    walls["expert_phase_s"] = time.time() - t0

    t0 = time.time()
    settings = replay_settings(config, ds.train.images.shape[-1])
    state = episode.init_state(model, config.seed, ds.train.images.shape[1:], int(config.buffer.size),
                               prepared.num_classes)
    if settings.data_parallel > 1:
        state, data = episode.replicate(state, settings.data_parallel), episode.replicate(data, settings.data_parallel)
    piece = max(1, int(config.checkpoint.every_chunks))
    log = Outputs(workdir)
    restored = ckpt.restore(state)
    done_chunks, eval_time, replay_before = 0, 0.0, 0.0
    if restored is not None:  # resume: the state and every record so far come from the checkpoint
        state, meta, done_chunks = restored
        log.chunks, log.evals = meta["chunks"], meta["evals"]
        eval_time, replay_before = meta["evaluation_s"], meta.get("replay_s", 0.0)
        if progress:
            print(f"resuming from the checkpoint after chunk {done_chunks} ({len(log.evals)} evaluations done)")
    eval_before = eval_time  # wall times add up over the sessions of a resumed run
    log.rewrite()
    bar = tqdm(total=s.num_chunks, initial=done_chunks, desc="replay", unit="chunk", disable=not progress)
    plan = segments(s, piece)
    for i, (task, start, end) in enumerate(plan):
        if start is None:  # evaluation at the boundary after `task`
            if task < len(log.evals):
                continue
            te = time.time()
            record = evaluation(config, prepared, state, data, test_images, test_labels, task)
            eval_time += time.time() - te
            log.evals.append(record)
            log.write(record)
            if progress:
                bar.write(f"after task {task}: accuracy {100 * record['accuracy']:.2f}%, "
                          f"buffer purity {_pct(record['buffer_purity'])}")
        else:
            if end <= done_chunks:
                continue
            n = end - start
            xs = [np.concatenate([a[start:end], np.zeros((piece - n,) + a.shape[1:], a.dtype)])
                  for a in (s.chunks, clean_p, keep)]
            state, m = episode.run_chunks(model, settings, state, data, *xs, np.arange(piece) < n)
            m = jax.tree.map(np.asarray, m)
            for j in range(n):
                c = start + j
                record = chunk_record(c, int(s.chunk_task[c]), {k: v[j] for k, v in m.items()}, noisy.known)
                log.chunks.append(record)
                log.write(record)
            bar.update(n)
            if i + 1 < len(plan) and plan[i + 1][1] is None:
                continue  # an evaluation follows at this chunk: checkpoint after it, with its record
        replay_time = replay_before + time.time() - t0 - (eval_time - eval_before)
        ckpt.save(int(state.chunk), state, {"chunks": log.chunks, "evals": log.evals, "evaluation_s": eval_time,
                                            "replay_s": replay_time})
    bar.close()
    ckpt.close()
    walls["replay_phase_s"] = replay_before + time.time() - t0 - (eval_time - eval_before)
    walls["evaluation_s"] = eval_time
    matrix = [r["task_accuracy"] for r in log.evals]
    purity_history = [r["buffer_purity"] for r in log.chunks]

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
    if jax.process_index() != 0:
        return summary
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
