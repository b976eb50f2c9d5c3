"""A whole run, timed against its unavoidable work; prints one JSON object.

    python benchmarks/end_to_end.py                                   # configs/fashion_mnist_cpu.py, seed 1, cold
    python benchmarks/end_to_end.py --compile_cache=~/.cache/spr_jax/xla   # warm, once the cache holds the programs
    python benchmarks/end_to_end.py --config=configs/digits.py --seed=0

It runs the config in this process into a fresh workdir (cold: an empty compilation cache of its own), then,
in the same process, times the SimCLR step of the run's model at the run's batch size as the run executes
it (steps scanned in one program, 20 per timed call; median of the calls) and counts the SimCLR steps the
run executed: expert steps (chunks trained x expert epochs, one batch of the whole chunk per epoch) and
base steps (per chunk, epochs x batches: D // min(B, D) before the buffer is full, D // (B / 2) after). fraction_of_step_limit = steps x step time / wall time: how close
the run comes to doing nothing but SimCLR steps at the measured speed. (Timing the step jitted alone, one
call per step, adds dispatch and a host sync to every step; it is reported as step_call_ms, not used.)
The step is timed after the run, and a shared VM's speed drifts; fraction_at_replay_step cross-checks with
the replay phase's own wall per base step (replay_step_ms, an upper bound on the step as the run ran it).
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def load_config(path, seed, overrides):
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.seed = seed
    for item in overrides:
        key, value = item.split("=", 1)
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = type(node[leaf])(value) if not isinstance(node[leaf], bool) else value == "True"
    return config


def count_steps(workdir, config) -> dict:
    d, b = int(config.stream.delayed_buffer_size), int(config.base.batch_size)
    chunks = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    chunks = [r for r in chunks if r["type"] == "chunk"]
    base = sum(int(config.base.epochs) * (d // (b // 2) if r["replayed_buffer"] else d // min(b, d)) for r in chunks)
    return {"expert_steps": len(chunks) * int(config.expert.epochs), "base_steps": base}


def step_time(config, n_steps: int, per_call: int = 20) -> dict:
    """The SimCLR step of the run's model at batch min(B, D), on the run's image shape, timed as the run runs
    it: `per_call` steps scanned in one program (`simclr.contrastive_fit`, the expert's regime), so that no
    per-step dispatch or host sync is counted. step_ms: median over n_steps // per_call calls, divided by
    per_call. Also the same step jitted alone and called once per step (step_call_ms), for comparison."""
    from spr_jax import compilation, run_setup, simclr
    prepared, s = run_setup.prepare(config)
    batch = min(int(config.base.batch_size), int(config.stream.delayed_buffer_size))
    images = jnp.asarray(prepared.dataset.train.images[:batch])
    lr = jnp.float32(3e-4)
    fit = dict(epochs=per_call, warmup_epochs=0, views=s.replay.views, temperature=s.replay.temperature)
    state = simclr.init_state(s.model, jax.random.PRNGKey(0), images.shape[1:])
    with compilation.matmul_precision(s.precision):
        scanned = simclr.contrastive_fit.lower(s.model, state, images, jax.random.PRNGKey(1), base_lr=lr,
                                              **fit).compile()
        single = simclr.contrastive_step.lower(s.model, state, images, jax.random.PRNGKey(1), lr, views=s.replay.views,
                                              temperature=s.replay.temperature).compile()
    state, losses = scanned(state, images, jax.random.PRNGKey(2), base_lr=lr)
    jax.block_until_ready(losses)
    calls = []
    for i in range(max(1, n_steps // per_call)):
        t = time.perf_counter()
        state, losses = scanned(state, images, jax.random.PRNGKey(3 + i), base_lr=lr)
        jax.block_until_ready(losses)
        calls.append((time.perf_counter() - t) / per_call)
    singles = []
    for i in range(n_steps):
        t = time.perf_counter()
        state, loss = single(state, images, jax.random.PRNGKey(1000 + i), lr)
        jax.block_until_ready(loss)
        singles.append(time.perf_counter() - t)
    calls, singles = 1e3 * np.asarray(calls), 1e3 * np.asarray(singles)
    return {"step_ms": float(np.median(calls)), "step_min_ms": float(calls.min()),
            "step_p10_p90_ms": [float(np.percentile(calls, 10)), float(np.percentile(calls, 90))],
            "step_call_ms": float(np.median(singles)), "step_batch": batch, "steps_per_timed_call": per_call}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/fashion_mnist_cpu.py")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", default="", help="default: a fresh temporary folder")
    p.add_argument("--compile_cache", default="", help="persistent compilation cache to use (default: a fresh, "
                   "empty one: a cold start)")
    p.add_argument("--steps", type=int, default=200, help="warm steps timed for the step time (in calls of 20)")
    p.add_argument("--override", action="append", default=[], help="config field=value (repeatable)")
    a = p.parse_args()

    from spr_jax import compilation, run_loop
    config = load_config(a.config, a.seed, a.override)
    config.cache.compile_dir = os.path.expanduser(a.compile_cache) if a.compile_cache else tempfile.mkdtemp(
        prefix="spr_jax_xla_")
    cold = not os.path.isdir(config.cache.compile_dir) or not os.listdir(config.cache.compile_dir)
    workdir = a.workdir or tempfile.mkdtemp(prefix="spr_jax_e2e_")
    load_before = os.getloadavg()[0]
    t = time.perf_counter()
    with compilation.compile_timer() as compiled:
        summary = run_loop.run(config, workdir, progress=False)
    wall = time.perf_counter() - t
    slowest = sorted(compiled["programs"].items(), key=lambda kv: -kv[1])[:6]
    counts = count_steps(workdir, config)
    timing = step_time(config, a.steps)
    total = counts["expert_steps"] + counts["base_steps"]
    replay_step_ms = 1e3 * summary["wall_time_s"]["replay_phase_s"] / max(counts["base_steps"], 1)
    dev = jax.devices()[0]
    out = {
        "config": a.config, "seed": a.seed, "overrides": a.override, "cold_compile_cache": cold,
        "wall_s": wall, "wall_time_s": summary["wall_time_s"], "compile_s": summary.get("compile_s"),
        "xla_compile_s_by_program": {name: round(sec, 2) for name, sec in slowest},
        **counts, "steps": total, **timing,
        "step_limit_s": total * timing["step_ms"] / 1e3,
        "fraction_of_step_limit": total * timing["step_ms"] / 1e3 / wall,
        # The same with the fastest step seen: the step time of a shared VM varies by +-20% between runs.
        "fraction_at_fastest_step": total * timing["step_min_ms"] / 1e3 / wall,
        "overhead_s": wall - total * timing["step_ms"] / 1e3,
        # A cross-check that needs no second measurement: the replay phase's wall per base step. Its programs
        # were compiled while the experts trained, so this is the step as the run itself ran it, plus each
        # chunk's buffer work and the checkpoint writes (an upper bound on the in-run step). When the step timed after the run is
        # slower than this, the machine slowed down and fraction_of_step_limit reads high.
        "replay_step_ms": replay_step_ms,
        "fraction_at_replay_step": total * replay_step_ms / 1e3 / wall,
        "final_accuracy": summary["final_accuracy"], "final_purity": summary["final_purity"],
        "device": f"{dev.platform}:{dev.device_kind} x{jax.device_count()} "
                  f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "jax": jax.__version__, "load_avg_1min_before": load_before, "load_avg_1min_after": os.getloadavg()[0],
        "workdir": workdir,
    }
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}))


if __name__ == "__main__":
    main()
