"""A whole run: inputs, the expert phase, the replay phase segment by segment with evaluations between
tasks, checkpoints, outputs (docs/architecture.md).

This is the edge: it reads the config once (data preparation, `settings.build`), moves arrays to the
device once, calls the compiled phases and writes WORKDIR/stream.json, metrics.jsonl, summary.json and
summary.png.
"""
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

import spr_jax
from spr_jax import checkpoint
from spr_jax import configlib
from spr_jax import evaluate
from spr_jax import expert_phase
from spr_jax import outputs
from spr_jax import replay_phase
from spr_jax import rng
from spr_jax import settings as settings_lib
from spr_jax.data import prepare as prepare_lib

# Config fields that change no result: a run may resume with other values of these.
_RESULT_NEUTRAL = ("checkpoint", "cache")


def run_fingerprint(config, identities: dict) -> dict:
    """What a run's checkpoints must match: its config (less result-neutral fields), the code version and
    the plug-ins' identities."""
    d = config.to_dict()
    for k in _RESULT_NEUTRAL:
        d.pop(k, None)
    d["expert"].pop("group_size", None)
    d["eval"].pop("test_batch_size", None)
    return {"config": d, "code_version": spr_jax.__version__, "plugins": identities}


def expert_inputs(config, prepared) -> dict:
    """The JSON-able part of the config that a chunk's expert outputs depend on (the cache's key material)."""
    return dict(
        dataset={"name": prepared.dataset.name, "subset_per_class": int(config.dataset.subset_per_class),
                 "train_images": int(prepared.dataset.train.labels.size)},
        noise={"kind": config.noise.kind, "rate": float(config.noise.rate)},
        seed=int(config.seed),
        stream={"chunk_size": prepared.stream.chunk_size, "batch": int(config.stream.batch),
                "episodes": [list(map(int, t)) for t in prepared.episodes]},
        expert={"model": config.model.to_dict(), "ssl": config.ssl.to_dict(), "epochs": int(config.expert.epochs),
                "filter": config.filter.to_dict()})


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


def prepare(config):
    """(prepared inputs, run settings): the config read once, every plug-in resolved and checked."""
    settings_lib.apply_deprecations(config)
    configlib.validate(config)
    resolved = settings_lib.resolve_plugins(config)  # before the data: a bad plug-in path fails at once
    prepared = prepare_lib.prepare(config)
    run_settings = settings_lib.build(
        config, image_shape=prepared.dataset.train.images.shape[1:], num_classes=prepared.num_classes,
        chunk_size=prepared.stream.chunk_size, data_parallel=data_parallel_devices(config), resolved=resolved)
    return prepared, run_settings


def fill_expert_cache(config, workdir: str, progress: bool = True) -> dict:
    """--mode=experts: only the expert phase (experts + filter for every chunk), written to the cache so
    that later runs with the same data, noise, seed, expert settings and filter skip it."""
    os.makedirs(workdir, exist_ok=True)
    t0 = time.time()
    prepared, s = prepare(config)
    folder = expert_phase.cache_dir(config.cache.dir, workdir)
    out = expert_phase.run(s, expert_inputs(config, prepared), prepared, jnp.asarray(prepared.dataset.train.images),
                           folder, progress)
    info = {"chunks": prepared.stream.num_chunks, "cache_hits": out["cache_hits"], "trained": out["trained"],
            "cache_dir": folder, "wall_time_s": round(time.time() - t0, 3)}
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


def run(config, workdir: str, progress: bool = True) -> dict:
    os.makedirs(workdir, exist_ok=True)
    walls = {}
    t0 = time.time()
    prepared, s = prepare(config)
    stream_info = prepare_lib.stream_summary(prepared)
    if jax.process_index() == 0:
        outputs.write_atomic(os.path.join(workdir, "stream.json"), json.dumps(stream_info, indent=1))
    if progress:
        print(prepare_lib.format_stream_summary(stream_info), flush=True)
    ds, stream, noisy = prepared.dataset, prepared.stream, prepared.noisy
    data = replay_phase.TrainData(images=jnp.asarray(ds.train.images), noisy=jnp.asarray(noisy.noisy),
                                  corrupt=jnp.asarray(noisy.corrupt))
    test_images, test_labels = jnp.asarray(ds.test.images), ds.test.labels
    # Opened before any work, so a workdir holding another run's checkpoints is refused at once.
    ckpt = checkpoint.RunCheckpointer(workdir, run_fingerprint(config, s.identities), keep=int(config.checkpoint.keep))
    walls["prepare_s"] = time.time() - t0

    t0 = time.time()
    out = expert_phase.run(s, expert_inputs(config, prepared), prepared, data.images,
                           expert_phase.cache_dir(config.cache.dir, workdir), progress)
    clean_p, keep = out["clean_p"], out["keep"]
    if progress and out["cache_hits"]:
        print(f"expert cache: {out['cache_hits']} chunks reused, {out['trained']} trained")
    if not np.isfinite(clean_p).all():
        raise FloatingPointError(f"the filter ({s.filter.kind}) produced non-finite clean_p; refusing to fill "
                                 f"the buffer")
    walls["expert_phase_s"] = time.time() - t0

    t0 = time.time()
    state = replay_phase.init_state(s.model, s.seed, ds.train.images.shape[1:], s.buffer_size, prepared.num_classes,
                                    s.replay.policy)
    if s.replay.data_parallel > 1:
        state = replay_phase.replicate(state, s.replay.data_parallel)
        data = replay_phase.replicate(data, s.replay.data_parallel)
    piece = max(1, int(config.checkpoint.every_chunks))
    log = outputs.MetricsLog(workdir)
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
    bar = tqdm(total=stream.num_chunks, initial=done_chunks, desc="replay", unit="chunk", disable=not progress)
    plan = segments(stream, piece)
    for i, (task, start, end) in enumerate(plan):
        if start is None:  # evaluation at the boundary after `task`
            if task < len(log.evals):
                continue
            te = time.time()
            record = evaluate.evaluation_record(
                s.eval, base=state.base, buffer=state.buffer, train_images=data.images, test_images=test_images,
                test_labels=test_labels, episodes=prepared.episodes, num_classes=prepared.num_classes,
                noise_known=noisy.known, key=rng.chunk_key(s.seed, rng.EVAL, task), after_task=task,
                chunks_processed=int(state.chunk))
            eval_time += time.time() - te
            log.write(record)
            if progress:
                bar.write(f"after task {task}: accuracy {100 * record['accuracy']:.2f}%, "
                          f"buffer purity {outputs.pct(record['buffer_purity'])}")
        else:
            if end <= done_chunks:
                continue
            n = end - start
            xs = [np.concatenate([a[start:end], np.zeros((piece - n,) + a.shape[1:], a.dtype)])
                  for a in (stream.chunks, clean_p, keep)]
            state, m = replay_phase.run_chunks(s.model, s.replay, state, data, *xs, np.arange(piece) < n)
            m = jax.tree.map(np.asarray, m)
            for j in range(n):
                c = start + j
                log.write(outputs.chunk_record(c, int(stream.chunk_task[c]), {k: v[j] for k, v in m.items()},
                                               noisy.known))
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

    method = {"filter": config.filter.kind, "buffer_policy": config.buffer.policy,
              "encoder": config.model.encoder, "eval_loss": config.eval.loss}
    summary = outputs.summary(log, num_chunks=stream.num_chunks, method=method, seed=s.seed, dataset=ds.name,
                              noise={"kind": config.noise.kind, "rate": float(config.noise.rate)}, walls=walls)
    outputs.write_summary(workdir, summary, prepared.episodes, progress)
    return summary
