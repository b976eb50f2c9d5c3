"""XLA compile time of a run's main programs at each CPU LLVM level; prints one JSON object.

    python benchmarks/compile_time.py                       # configs/fashion_mnist_cpu.py, levels 1 and -1
    python benchmarks/compile_time.py --levels 1 -1 0 --repeats 5

For every level in turn (interleaved, `--repeats` times, in one process, in-memory caches cleared and no
persistent cache, so every compilation is cold), compiles ahead of time: one SimCLR step at the run's batch,
an expert's training on one chunk (`experts.train_expert`), the expert phase's round program with the run's
filter inside and without it, a replay segment (`replay_phase.run_chunks`) and an evaluation's fine-tuning,
prediction and head initialisation. Reports the median XLA compile seconds per program and level
(`config.cache.cpu_opt_level`; -1 is XLA's default, 3); "total" adds up the programs a run compiles (the
expert round with its filter, the replay segment, the evaluation's programs), not the step, train_expert
or the filterless round, which only break that down. Also the median seconds of tracing and lowering per
program (Python's share, over all levels): what a run still pays when the persistent cache holds the
programs. Compiling one program at a time on an otherwise idle machine, this isolates the level's effect
from the run-to-run noise of a whole run.
"""
import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.end_to_end import load_config  # noqa: E402


def compile_programs(config) -> dict:
    """XLA compile seconds of each program, compiled once, cold. The replay segment and the evaluation's
    programs are compiled by the run's own warm-up functions (what a run's warm-up thread compiles)."""
    from spr_jax import compilation, evaluate, experts, replay_phase, run_setup, simclr
    jax.config.update("jax_enable_compilation_cache", False)
    prepared, s = run_setup.prepare(config)
    ds, d = prepared.dataset, prepared.stream.chunk_size
    shape = ds.train.images.shape[1:]
    chunk = jax.ShapeDtypeStruct((d,) + shape, jnp.uint8)
    key, lr = jax.random.PRNGKey(0), jax.ShapeDtypeStruct((), jnp.float32)
    state = jax.eval_shape(lambda: replay_phase.init_state(s.model, s.seed, shape, s.buffer_size,
                                                           prepared.num_classes, s.replay.policy))
    data = replay_phase.TrainData(images=ds.train.images, noisy=prepared.noisy.noisy, corrupt=prepared.noisy.corrupt)
    data = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), data)
    batch = jax.ShapeDtypeStruct((min(int(config.base.batch_size), d),) + shape, jnp.uint8)
    compile_one = {
        "contrastive_step": lambda: simclr.contrastive_step.lower(
            s.model, state.base, batch, key, lr, views=s.replay.views, temperature=s.replay.temperature).compile(),
        "train_expert": lambda: experts.train_expert.lower(
            s.expert.model, chunk, key, epochs=s.expert.epochs, base_lr=lr, warmup_epochs=s.expert.warmup_epochs,
            views=s.expert.views, temperature=s.expert.temperature).compile(),
        # What a run compiles for its experts: one round (a group of one expert here) with the run's filter
        # inside, and the same round without it (the difference is the filter's compilation).
        "expert_round": lambda: _lower_expert_round(s, prepared, with_filter=True).compile(),
        "expert_round_without_filter": lambda: _lower_expert_round(s, prepared, with_filter=False).compile(),
        "run_chunks": lambda: replay_phase.warm_up(s.model, s.replay, state, data, d, 10),
        "evaluation": lambda: evaluate.warm_up(s.eval, state.base, s.buffer_size, ds.test.images),
    }
    out, trace_lower = {}, {}
    with compilation.matmul_precision(s.precision):
        for name, compile_now in compile_one.items():
            t = time.perf_counter()
            with compilation.compile_timer() as timed:
                compile_now()
            # Python's share (tracing, lowering): what a warm persistent cache still pays every run.
            trace_lower[name] = time.perf_counter() - t - sum(timed["programs"].values())
            if name == "evaluation":  # the fine-tuning, the prediction and the head's init, each on its own
                for program, seconds in timed["programs"].items():
                    program = program[4:-1]  # jit(name) -> name
                    program = program if program in ("finetune", "predict", "_init_head") else "other"
                    out[program] = out.get(program, 0.0) + seconds
            else:
                out[name] = sum(timed["programs"].values())
    return out, trace_lower


def _lower_expert_round(s, prepared, *, with_filter: bool):
    """The expert phase's round program for one expert (a fresh copy: the round's own cache is bypassed)."""
    from spr_jax import expert_phase, experts, rng
    kw = s.expert.phase_kwargs()
    post = expert_phase.filter_post_fn(s.filter.fn, s.filter.num_classes) if with_filter else None
    run_round = experts.round_program(kw["model"], kw["epochs"], kw["warmup_epochs"], kw["views"],
                                      kw["temperature"], tuple(jax.local_devices()[:1]), post, False,
                                      fresh=True).program
    ids = np.zeros(1, np.int32)
    args = expert_phase.filter_args(s, prepared, ids) if with_filter else {}
    images = jax.ShapeDtypeStruct(prepared.dataset.train.images.shape, jnp.uint8)
    return run_round.lower(images, rng.purpose_key(s.seed, rng.EXPERT), np.float32(kw["base_lr"]), ids,
                           prepared.stream.chunks[:1], args)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/fashion_mnist_cpu.py")
    p.add_argument("--levels", type=int, nargs="+", default=[1, -1])
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    from spr_jax import compilation
    config = load_config(a.config, 1, [])
    times = {level: [] for level in a.levels}
    for _ in range(a.repeats):
        for level in a.levels:
            compilation.set_cpu_opt_level(level)
            jax.clear_caches()
            times[level].append(compile_programs(config))
    median = {str(level): {name: round(float(np.median([r[0][name] for r in runs])), 3) for name in runs[0][0]}
              for level, runs in times.items()}
    for level in median.values():
        level["total"] = round(sum(v for k, v in level.items() if k not in (
            "contrastive_step", "train_expert", "expert_round_without_filter")), 3)
    trace_lower = {name: round(float(np.median([r[1][name] for runs in times.values() for r in runs])), 3)
                   for name in next(iter(times.values()))[0][1]}
    dev = jax.devices()[0]
    print(json.dumps({"config": a.config, "repeats": a.repeats, "xla_compile_s_median": median,
                      "trace_and_lower_s_median": trace_lower,
                      "device": f"{dev.platform}:{dev.device_kind} ({platform.processor() or platform.machine()}, "
                                f"{os.cpu_count()} cores)", "jax": jax.__version__,
                      "load_avg_1min": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
