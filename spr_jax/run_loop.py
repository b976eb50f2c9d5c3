"""A whole run: inputs, the expert phase, the replay phase segment by segment with evaluations between
tasks, checkpoints, outputs (docs/architecture.md).

This is the edge: it reads the config once (data preparation, `settings.build`), moves arrays to the
device once, calls the compiled phases and writes WORKDIR/stream.json, metrics.jsonl, summary.json and
summary.png.
"""
import json
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from spr_jax import checkpoint
from spr_jax import compilation
from spr_jax import configlib
from spr_jax import evaluate
from spr_jax import expert_phase
from spr_jax import files
from spr_jax import interrupt
from spr_jax import metric_writers
from spr_jax import online
from spr_jax import outputs
from spr_jax import profiling
from spr_jax import replay_phase
from spr_jax import rng
from spr_jax import run_checks
from spr_jax import run_identity
from spr_jax import settings as settings_lib
from spr_jax import warm_up as warm_up_lib
from spr_jax.data import prepare as prepare_lib
from spr_jax.errors import UserError

# The files of a run in its workdir (--redo replaces them; the expert cache stays).
RUN_FILES = ("checkpoints", "metrics.jsonl", "summary.json", "summary.png", "stream.json", "config.json",
             "tensorboard", "wandb", "profile")

def data_parallel_devices(config) -> int:
    """Local devices the base's self-replay batches are split over (1 = off)."""
    if not config.base.data_parallel:
        return 1
    n = jax.local_device_count()
    half = int(config.base.batch_size) // 2
    if half % n or min(int(config.base.batch_size), int(config.stream.delayed_buffer_size)) % n:
        raise configlib.ConfigError(f"config.base.data_parallel splits batches over {n} devices, but batch sizes "
                         f"{config.base.batch_size} and {half} are not all divisible by {n}")
    return n


def prepare(config):
    """(prepared inputs, run settings): the config read once, every plug-in resolved and checked."""
    settings_lib.apply_deprecations(config)
    configlib.validate(config)
    resolved = settings_lib.resolve_plugins(config)  # before the data: a bad plug-in path fails at once
    prepared = prepare_inputs(config)
    offered = prepared.stream.chunks.size
    if int(config.buffer.size) > offered:  # (0 means a memory of the whole stream: the multitask bound)
        raise configlib.ConfigError(
            f"config.buffer.size={config.buffer.size} is larger than the {offered} samples the stream offers, so "
            f"the buffer never fills and self-replay never mixes it in; use at most {offered}")
    run_settings = settings_lib.build(
        config, image_shape=prepared.dataset.train.images.shape[1:], num_classes=prepared.num_classes,
        chunk_size=prepared.stream.chunk_size, data_parallel=data_parallel_devices(config), resolved=resolved,
        buffer_size=int(config.buffer.size) or offered)
    return prepared, run_settings


def prepare_inputs(config):
    """The data, noisy labels and stream of a config; a bad value or missing data is a UserError."""
    try:
        return prepare_lib.prepare(config)
    except UserError:
        raise
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:  # everything here comes from user input
        raise UserError(str(e)) from e


def write_stream(config, workdir: str, progress: bool = True) -> dict:
    """--mode=stream: only the noisy stream, summarised to WORKDIR/stream.json."""
    info = prepare_lib.stream_summary(prepare_inputs(config))
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        files.write_atomic(os.path.join(workdir, "stream.json"), json.dumps(info, indent=1))
    if progress:
        print(prepare_lib.format_stream_summary(info))
    return info


def fill_expert_cache(config, workdir: str, progress: bool = True) -> dict:
    """--mode=experts: only the expert phase (experts + filter for every chunk), written to the cache so
    that later runs with the same data, noise, seed, expert settings and filter skip it."""
    t0 = time.time()
    compilation.use_persistent_cache(config.cache.compile_dir)
    prepared, s = prepare(config)
    os.makedirs(workdir, exist_ok=True)
    folder = expert_phase.cache_dir(config.cache.dir, workdir)
    with settings_lib.matmul_precision(s), compilation.cpu_opt_level(config.cache.cpu_opt_level):
        out = expert_phase.run(s, run_identity.expert_chunk_descriptions(config, prepared, s.identities), prepared,
                               jnp.asarray(prepared.dataset.train.images), folder, progress)
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


def finished_summary(workdir: str, ckpt, num_chunks: int):
    """summary.json of a run that completed in this workdir (its last checkpoint is after the last chunk
    and its summary is readable), else None."""
    path = os.path.join(workdir, "summary.json")
    if ckpt.latest_step() != num_chunks or not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError:
        return None


def repair_finished_files(workdir: str, ckpt, prepared) -> list:
    """A finished run's metrics.jsonl and stream.json are what its last checkpoint and its inputs say; any
    that is missing, truncated or edited is rewritten (atomically). Returns the names rewritten."""
    if jax.process_index() != 0:
        return []
    meta = ckpt.latest_meta()
    log = outputs.MetricsLog(workdir)
    log.chunks, log.evals = meta["chunks"], meta["evals"]
    info = prepare_lib.stream_summary(prepared)
    want = {"metrics.jsonl": (log.text(), lambda t: [json.loads(line) for line in t.splitlines()]),
            "stream.json": (json.dumps(info, indent=1), json.loads)}
    repaired = []
    for name, (text, parse) in want.items():
        path = os.path.join(workdir, name)
        try:  # compared as records: the checkpoint holds them with sorted keys
            with open(path) as f:
                same = parse(f.read()) == parse(text)
        except (OSError, ValueError):  # (UnicodeDecodeError and JSONDecodeError are ValueErrors)
            same = False
        if not same:
            files.write_atomic(path, text)
            repaired.append(name)
    return repaired


def run(config, workdir: str, progress: bool = True, redo: bool = False) -> dict:
    """The whole run. Nothing is written before the config, the plug-ins, the data and the workdir's
    checkpoints have been checked; a finished run is reported and left as it is (redo=True runs it again
    from scratch, keeping the expert cache). summary.json's compile_s is the time spent tracing and
    compiling (JAX's persistent cache, config.cache.compile_dir, saves most of it on a later run)."""
    compilation.use_persistent_cache(config.cache.compile_dir)
    with compilation.cpu_opt_level(config.cache.cpu_opt_level), compilation.compile_timer() as compiled:
        return _run(config, workdir, progress, redo, compiled)


def _run(config, workdir, progress, redo, compiled) -> dict:
    walls = {}
    t0 = time.time()
    prepared, s = prepare(config)
    if redo and jax.process_index() == 0:
        for name in RUN_FILES:
            path = os.path.join(workdir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    # Opened before anything is written, so a workdir holding another run's checkpoints is refused untouched.
    ckpt = checkpoint.RunCheckpointer(workdir, run_identity.run_fingerprint(config, s.identities), keep=int(config.checkpoint.keep))
    done = finished_summary(workdir, ckpt, prepared.stream.num_chunks)
    if done is not None:
        try:
            repaired = repair_finished_files(workdir, ckpt, prepared)
        finally:
            ckpt.close()
        if progress and repaired:
            print(f"{', '.join(repaired)} did not match the finished run's checkpoint; rewritten from it")
        if progress:
            print(f"{workdir} holds this run, finished (final accuracy {100 * done['final_accuracy']:.2f}%); "
                  f"nothing to do. Pass --redo to run it again from scratch.")
        return done
    stream_info = prepare_lib.stream_summary(prepared)
    if jax.process_index() == 0:
        files.write_atomic(os.path.join(workdir, "stream.json"), json.dumps(stream_info, indent=1))
        files.write_atomic(os.path.join(workdir, "config.json"),
                             json.dumps(run_identity.run_description(config, s.identities), indent=1, default=str))
    if progress:
        print(f"run: {outputs.method_name(run_identity.method_of(config))}, seed {s.seed}", flush=True)
        print(prepare_lib.format_stream_summary(stream_info), flush=True)
    ds, stream, noisy = prepared.dataset, prepared.stream, prepared.noisy
    data = replay_phase.TrainData(images=jnp.asarray(ds.train.images), noisy=jnp.asarray(noisy.noisy),
                                  corrupt=jnp.asarray(noisy.corrupt))
    test_images, test_labels = jnp.asarray(ds.test.images), ds.test.labels
    walls["prepare_s"] = time.time() - t0

    t0 = time.time()
    piece = max(1, int(config.checkpoint.every_chunks))
    warm_up = warm_up_lib.BackgroundCompile(s, prepared, data, test_images, piece) if config.cache.warm_up else None
    with settings_lib.matmul_precision(s):
        out = expert_phase.run(s, run_identity.expert_chunk_descriptions(config, prepared, s.identities), prepared, data.images,
                               expert_phase.cache_dir(config.cache.dir, workdir), progress,
                               on_compiling=warm_up.start if warm_up else None)
    if warm_up is not None:
        warm_up.join()
    clean_p, keep = out["clean_p"], out["keep"]
    if progress and out["cache_hits"]:
        print(f"expert cache: {out['cache_hits']} chunks reused, {out['trained']} trained")
    if not np.isfinite(clean_p).all():
        raise FloatingPointError(f"the filter ({s.filter.kind}) produced non-finite clean_p; refusing to fill "
                                 f"the buffer")
    walls["expert_phase_s"] = time.time() - t0

    t0 = time.time()
    if s.online is not None:  # protocol=online: a supervised classifier trained on the stream
        state = online.init_state(s.online, s.seed, ds.train.images.shape[1:], s.buffer_size)
    else:
        state = replay_phase.init_state(s.model, s.seed, ds.train.images.shape[1:], s.buffer_size,
                                        prepared.num_classes, s.replay.policy)
    if s.replay.data_parallel > 1 and s.online is None:
        state = replay_phase.replicate(state, s.replay.data_parallel)
        data = replay_phase.replicate(data, s.replay.data_parallel)
    writers = (metric_writers.writers_for(config, workdir, f"{outputs.method_name(run_identity.method_of(config))}, seed {s.seed}")
               if jax.process_index() == 0 else [])
    log = outputs.MetricsLog(workdir, writers)
    restored = ckpt.restore(state)
    done_chunks, eval_time, earlier = 0, 0.0, {}
    if restored is not None:  # resume: the state and every record so far come from the checkpoint
        state, meta, done_chunks = restored
        log.chunks, log.evals = meta["chunks"], meta["evals"]
        earlier = meta["walls"]  # wall times of the earlier sessions of this run, per phase
        eval_time = earlier["evaluation_s"]
        if progress:
            print(f"resuming from the checkpoint after chunk {done_chunks} ({len(log.evals)} evaluations done)")
    eval_before = eval_time  # wall times add up over the sessions of a resumed run
    log.rewrite()
    bar = tqdm(total=stream.num_chunks, initial=done_chunks, desc="replay", unit="chunk", disable=not progress)
    clock = {"eval": eval_time}
    plan = segments(stream, piece)
    profiler = profiling.SegmentProfiler(workdir, config.logging.profile_segments if jax.process_index() == 0 else 0)
    try:
        for i, (task, start, end) in enumerate(plan):
            if start is None:  # evaluation at the boundary after `task`
                if task < len(log.evals):
                    continue
                te = time.time()
                if s.online is not None:
                    record = online.evaluation_record(
                        s.online, state, test_images=test_images, test_labels=test_labels,
                        episodes=prepared.episodes, num_classes=prepared.num_classes, noise_known=noisy.known,
                        after_task=task, test_batch_size=s.eval.test_batch_size)
                else:
                    record = evaluate.evaluation_record(
                        s.eval, base=state.base, buffer=state.buffer, train_images=data.images,
                        test_images=test_images, test_labels=test_labels, episodes=prepared.episodes,
                        num_classes=prepared.num_classes, noise_known=noisy.known,
                        key=rng.chunk_key(s.seed, rng.EVAL, task), after_task=task,
                        chunks_processed=int(state.chunk))
                clock["eval"] += time.time() - te
                warnings = run_checks.evaluation_warnings(s, record, log.chunks, prepared.episodes, task)
                if warnings:
                    record["warnings"] = warnings
                    for w in warnings:
                        bar.write(f"warning: {w}")
                log.write(record)
                if progress:
                    bar.write(outputs.eval_line(record))
            else:
                if end <= done_chunks:
                    continue
                n = end - start
                profiler.before_segment()
                xs = [np.concatenate([a[start:end], np.zeros((piece - n,) + a.shape[1:], a.dtype)])
                      for a in (stream.chunks, clean_p, keep)]
                with settings_lib.matmul_precision(s):
                    if s.online is not None:
                        state, m = online.run_chunks(s.online, state, data, *xs, np.arange(piece) < n)
                    else:
                        state, m = replay_phase.run_chunks(s.model, s.replay, state, data, *xs,
                                                           np.arange(piece) < n)
                m = jax.tree.map(np.asarray, m)
                if s.online is None:  # before anything of these chunks is written
                    run_checks.check_replay(config, s, state, m, n, start, stream, keep, end)
                for j in range(n):
                    c = start + j
                    log.write(outputs.chunk_record(c, int(stream.chunk_task[c]), {k: v[j] for k, v in m.items()},
                                                   noisy.known))
                bar.update(n)
                profiler.after_segment()
                if i + 1 < len(plan) and plan[i + 1][1] is None:
                    continue  # an evaluation follows at this chunk: checkpoint after it, with its record
            ckpt.save(int(state.chunk), state, {"chunks": log.chunks, "evals": log.evals,
                                                "walls": _session_walls(walls, earlier, t0, clock["eval"],
                                                                        eval_before, compiled)})
            interrupt.check(f"after chunk {int(state.chunk)} of {stream.num_chunks} (checkpointed)")
    except BaseException:
        for writer in writers:  # (on success they stay open for the images of the end)
            writer.close()
        raise
    finally:  # on a signal or a divergence too: a checkpoint being written is completed, no temporary folder left
        profiler.close()
        bar.close()
        ckpt.close()
    walls = _session_walls(walls, earlier, t0, clock["eval"], eval_before, compiled)
    compile_s = walls.pop("compile_s")

    summary = outputs.summary(log, num_chunks=stream.num_chunks, method=run_identity.method_of(config), seed=s.seed, dataset=ds.name,
                              noise={"kind": config.noise.kind, "rate": float(config.noise.rate)}, walls=walls,
                              stream_clean_share=None if stream_info["noise_rate_in_chunks"] is None
                              else 1.0 - stream_info["noise_rate_in_chunks"], compile_s=compile_s)
    outputs.write_summary(workdir, summary, prepared.episodes, progress, log=log)
    for writer in writers:
        writer.add_accuracy_matrix(summary["accuracy_matrix"], stream.num_chunks)
        writer.add_image_file("summary", os.path.join(workdir, "summary.png"), stream.num_chunks)
        writer.close()
    return summary


def _session_walls(walls, earlier, replay_start, eval_time, eval_before, compiled) -> dict:
    """Wall time per phase (and compile time, spread over them), added up over this session and the earlier
    sessions of a resumed run."""
    replay = time.time() - replay_start - (eval_time - eval_before)  # this session's replay, evaluations apart
    return {"prepare_s": earlier.get("prepare_s", 0.0) + walls["prepare_s"],
            "expert_phase_s": earlier.get("expert_phase_s", 0.0) + walls["expert_phase_s"],
            "replay_phase_s": earlier.get("replay_phase_s", 0.0) + replay,
            "evaluation_s": eval_time,
            "compile_s": earlier.get("compile_s", 0.0) + compiled["seconds"]}
