"""A whole run: inputs, the expert phase, the replay phase segment by segment with evaluations between
tasks, checkpoints, outputs (docs/architecture.md).

The config is read once, at the top (run_setup.setup: the prepared inputs, the settings, the run's identity
and options); below that the loop reads none of it. It moves arrays to the device once, calls the compiled
phases and writes WORKDIR/stream.json, metrics.jsonl, summary.json and summary.png.
"""
import json
import os
import shutil
import time

import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from spr_jax import checkpoint
from spr_jax import compilation
from spr_jax import expert_phase
from spr_jax import files
from spr_jax import finished_run
from spr_jax import interrupt
from spr_jax import learners
from spr_jax import metric_writers
from spr_jax import outputs
from spr_jax import parallel
from spr_jax import profiling
from spr_jax import run_checks
from spr_jax import run_setup
from spr_jax import segment_scan
from spr_jax import warm_up as warm_up_lib
from spr_jax.data import prepare as prepare_lib
from spr_jax.errors import Diverged

# The files of a run in its workdir (--redo replaces them; the expert cache stays).
RUN_FILES = ("checkpoints", "metrics.jsonl", "summary.json", "summary.png", "stream.json", "config.json",
             "tensorboard", "wandb", "profile")

def segments(stream, piece: int):
    """(task, start, end) pieces of at most `piece` chunks, never crossing an evaluation point."""
    out, start = [], 0
    for t, end in enumerate(stream.eval_points):
        while start < end:
            out.append((t, start, min(end, start + piece)))
            start = out[-1][2]
        out.append((t, None, None))  # the evaluation after task t
    return out


def run(config, workdir: str, progress: bool = True, redo: bool = False) -> dict:
    """The whole run. Nothing is written before the config, the plug-ins, the data and the workdir's
    checkpoints have been checked; a finished run is reported and left as it is (redo=True runs it again
    from scratch, keeping the expert cache). summary.json's compile_s is the time spent tracing and
    compiling (JAX's persistent cache, config.cache.compile_dir, saves most of it on a later run)."""
    options = run_setup.run_options(config)
    compilation.use_persistent_cache(options.compile_dir)
    with compilation.cpu_compiler(options.cpu_opt_level, options.cpu_vector_width, options.cpu_quick_compile), \
            compilation.compile_timer() as compiled:
        started = time.time()
        return _run(run_setup.setup(config, options), started, workdir, progress, redo, compiled)


def _run(setup: run_setup.Setup, started: float, workdir, progress, redo, compiled) -> dict:
    prepared, s, identity, options = setup
    walls = {}
    if redo and parallel.is_primary():
        for name in RUN_FILES:
            path = os.path.join(workdir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    # Opened before anything is written, so a workdir holding another run's checkpoints is refused untouched.
    ckpt = checkpoint.RunCheckpointer(workdir, identity.fingerprint, keep=options.checkpoint_keep)
    config_text = json.dumps(identity.description, indent=1, default=str)
    stream_info = prepare_lib.stream_summary(prepared)
    clean_share = (None if stream_info["noise_rate_in_chunks"] is None
                   else 1.0 - stream_info["noise_rate_in_chunks"])
    done, damaged = finished_run.finished_summary(
        workdir, ckpt, prepared.stream.num_chunks,
        expected=lambda: outputs.summary(finished_run.checkpoint_log(workdir, ckpt),
                                         num_chunks=prepared.stream.num_chunks, method=identity.method,
                                         seed=s.seed, dataset=prepared.dataset.name, noise=identity.noise, walls={},
                                         stream_clean_share=clean_share))
    if done is not None or damaged:  # damaged: the run's last step again below recomputes only its summary
        try:
            repaired = (["summary.json"] if damaged else []) + finished_run.repair_finished_files(
                workdir, ckpt, prepared, config_text)
        except BaseException:
            ckpt.close()
            raise
        if done is not None:
            ckpt.close()
        if progress:
            for name in repaired:
                print(f"warning: {name} did not match the finished run's checkpoint; rewritten from it")
    if done is not None:
        if progress:
            print(f"{workdir} holds this run, finished (final accuracy {100 * done['final_accuracy']:.2f}%); "
                  f"nothing to do. Pass --redo to run it again from scratch.")
        raise_if_diverged(done)  # a rerun of a run that diverged ends as it did
        return done
    if parallel.is_primary():
        files.write_atomic(os.path.join(workdir, "stream.json"), json.dumps(stream_info, indent=1))
        files.write_atomic(os.path.join(workdir, "config.json"), config_text)
    run_name = f"{outputs.method_name(identity.method)}, seed {s.seed}"
    if progress:
        print(f"run: {run_name}", flush=True)
        print(prepare_lib.format_stream_summary(stream_info), flush=True)
    ds, stream, noisy = prepared.dataset, prepared.stream, prepared.noisy
    data = segment_scan.TrainData(images=jnp.asarray(ds.train.images), noisy=jnp.asarray(noisy.noisy),
                                  corrupt=jnp.asarray(noisy.corrupt))
    test_images = jnp.asarray(ds.test.images)
    walls["prepare_s"] = time.time() - started

    t0 = time.time()
    piece = options.checkpoint_every
    learner = learners.build(s, prepared, data, test_images, names=identity.quoted)
    warm_up = warm_up_lib.BackgroundCompile(lambda: learner.warm_up(piece)) if options.warm_up else None
    with compilation.matmul_precision(s.precision):
        out = expert_phase.run(s, identity.expert_chunks, prepared, data.images,
                               expert_phase.cache_dir(options.expert_cache, workdir), progress,
                               on_compiling=warm_up.start if warm_up else None)
    if warm_up is not None:
        warm_up.join()
    clean_p, keep = out["clean_p"], out["keep"]
    if progress and out["cache_hits"]:
        print(f"expert cache: {out['cache_hits']} chunks reused, {out['trained']} trained")
    if not np.isfinite(clean_p).all():
        raise FloatingPointError(f"the filter ({s.filter.kind}) produced non-finite clean_p; refusing to fill "
                                 f"the buffer")
    exploded = None if out["final_loss"] is None else run_checks.expert_divergence(out["final_loss"], stream.chunk_size)
    if progress and exploded:  # said at once (the replay may take long), judged with the rest at the end
        print(f"warning: {exploded}; the run goes on, to end with exit status 3", flush=True)
    walls["expert_phase_s"] = time.time() - t0

    t0 = time.time()
    state = learner.init_state()
    writers = (metric_writers.writers_for(workdir, tensorboard=options.tensorboard, wandb=options.wandb,
                                          wandb_project=options.wandb_project,
                                          run_config=identity.description["config"], run_name=run_name)
               if parallel.is_primary() else [])
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
    profiler = profiling.SegmentProfiler(workdir, options.profile_segments if parallel.is_primary() else 0)
    # A signal is acknowledged at once and stops the run after the segment in progress is checkpointed.
    with interrupt.deferred("at the next checkpoint (after this segment of chunks)",
                            kept="the last complete checkpoint is kept", done="after the last chunk (checkpointed)"):
        try:
            for i, (task, start, end) in enumerate(plan):
                if start is None:  # evaluation at the boundary after `task`
                    if task < len(log.evals):
                        continue
                    te = time.time()
                    record = learner.evaluate(state, task)
                    clock["eval"] += time.time() - te
                    warnings = run_checks.evaluation_warnings(s, record, log.chunks, prepared.episodes, task,
                                                              clean_stream=stream_info["noise_rate_in_chunks"] == 0.0)
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
                    with compilation.matmul_precision(s.precision):
                        state, m = learner.run_segment(state, *xs, np.arange(piece) < n)
                    learner.check_segment(state, m, n, start, end, keep)  # before anything of these chunks is written
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

    # The divergence rule (run_checks): exploding losses or an accuracy at chance end the run with exit status 3,
    # once its files are written.
    verdict = run_checks.divergence(s, prepared, log.chunks, log.evals, out["final_loss"], identity.quoted)
    summary = outputs.summary(log, num_chunks=stream.num_chunks, method=identity.method, seed=s.seed, dataset=ds.name,
                              noise=identity.noise, walls=walls,
                              stream_clean_share=clean_share, compile_s=compile_s, diverged=verdict)
    # Not cut short by a signal: a summary.json without its summary.png would pass for a finished run.
    with interrupt.deferred("once the summary is written", kept="the last complete checkpoint is kept",
                            done="as the run ended", then="it finished and its outputs are complete"):
        outputs.write_summary(workdir, summary, prepared.episodes, progress, log=log,
                              summary_plot=options.summary_plot)
        for writer in writers:  # at the last chunk's step (the writers' one chunk numbering)
            writer.add_accuracy_matrix(summary["accuracy_matrix"], stream.num_chunks - 1, prepared.episodes)
            if options.summary_plot:
                writer.add_image_file("summary", os.path.join(workdir, "summary.png"), stream.num_chunks - 1)
            writer.close()
    raise_if_diverged(summary)
    return summary


def raise_if_diverged(summary: dict) -> None:
    """Diverged (exit status 3) with the verdict of summary.json's "diverged" (run_checks.divergence), if any."""
    verdict = summary.get("diverged")
    if verdict:
        raise Diverged(verdict["message"], verdict["hint"], result=summary)


def _session_walls(walls, earlier, replay_start, eval_time, eval_before, compiled) -> dict:
    """Wall time per phase (and compile time, spread over them), added up over this session and the earlier
    sessions of a resumed run."""
    replay = time.time() - replay_start - (eval_time - eval_before)  # this session's replay, evaluations apart
    return {"prepare_s": earlier.get("prepare_s", 0.0) + walls["prepare_s"],
            "expert_phase_s": earlier.get("expert_phase_s", 0.0) + walls["expert_phase_s"],
            "replay_phase_s": earlier.get("replay_phase_s", 0.0) + replay,
            "evaluation_s": eval_time,
            "compile_s": earlier.get("compile_s", 0.0) + compiled["seconds"]}
