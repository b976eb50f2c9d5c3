"""An expert's step against the replay's step, and what an expert round adds; prints one JSON object.

    python benchmarks/expert_vs_replay.py [--config fashion_mnist_cpu] [--seed 1] [--chunks 3] [--repeats 3]

Both train the run's SimCLR model at batch D (the expert: the whole chunk each epoch; the replay: B = D in the
bundled configs) with the run's views, on chunk 0's images; times are the best of `repeats`, after compiling:
- expert_step_ms: train_expert's cost per epoch, (E epochs - 1 epoch) / (E - 1), E = config.expert.epochs;
  expert_fixed_ms: the rest of train_expert (initialisation, the one epoch, the features);
- replay_step_ms: E contrastive steps in one fori_loop, per step (the replay's step without its batching);
- filter_ms: the run's filter on one chunk's features;
- round_s_per_expert[callback]: the compiled expert round (one expert per round, the filter inside), per
  expert over `chunks` chunks, with and without the per-epoch progress callback ("epoch_callback" /
  "none"; a run reports per epoch only when a round trains several experts).
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

import spr_jax  # noqa: E402
from side_by_side import cpu_description  # noqa: E402
from spr_jax import compilation, expert_phase, experts, rng, run_setup, simclr  # noqa: E402


def best(fn, repeats):
    jax.block_until_ready(fn())  # compiles
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="fashion_mnist_cpu")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--chunks", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    config = spr_jax.load_config(args.config, {"seed": args.seed})
    prepared, s = run_setup.prepare(config)
    e = s.expert
    model, epochs = e.model, e.epochs
    chunk = prepared.stream.chunks[0]
    images = jnp.asarray(prepared.dataset.train.images[chunk])
    key = rng.chunk_key(args.seed, rng.EXPERT, 0)
    out = {"cpu": cpu_description(), "config": args.config, "chunk_size": int(images.shape[0]), "epochs": epochs}
    with compilation.cpu_compiler(config.cache.cpu_opt_level, config.cache.cpu_vector_width):
        def expert(n):
            return lambda: experts.train_expert(model, images, key, epochs=n, base_lr=np.float32(e.base_lr),
                                                warmup_epochs=e.warmup_epochs, views=e.views,
                                                temperature=e.temperature)[1]
        one, whole = best(expert(1), args.repeats), best(expert(epochs), args.repeats)
        step = (whole - one) / (epochs - 1)
        out["expert_step_ms"], out["expert_fixed_ms"] = round(step * 1e3, 2), round((one - step) * 1e3, 2)

        state = simclr.init_state(model, key, images.shape[1:])

        @compilation.jit
        def replay_steps(state):
            def body(i, st):
                return simclr.contrastive_step(model, st, images, jax.random.fold_in(key, i), 1e-4, views=e.views,
                                               temperature=e.temperature)[0]
            return jax.lax.fori_loop(0, epochs, body, state)
        out["replay_step_ms"] = round(best(lambda: replay_steps(state).params, args.repeats) / epochs * 1e3, 2)

        features = expert(1)()
        labels = jnp.asarray(prepared.noisy.noisy[chunk])
        filter_fn = compilation.jit(lambda k, f, y: s.filter.fn(k, f, y, num_classes=s.filter.num_classes))
        out["filter_ms"] = round(best(lambda: filter_fn(rng.chunk_key(args.seed, rng.FILTER, 0), features, labels),
                                      args.repeats) * 1e3, 2)

        ids = np.arange(args.chunks, dtype=np.int32)
        post_fn = expert_phase.filter_post_fn(s.filter.fn, s.filter.num_classes)
        post_args = expert_phase.filter_args(s, prepared, ids)
        out["round_s_per_expert"] = {}
        for name, report in (("none", False), ("epoch_callback", True)):
            program = experts.round_program(model, epochs, e.warmup_epochs, e.views, e.temperature,
                                            tuple(jax.local_devices()[:1]), post_fn, False, report, fresh=True)
            split, whole_ = NamedSharding(program.mesh, P(experts.AXIS)), NamedSharding(program.mesh, P())
            train = jax.device_put(prepared.dataset.train.images, whole_)
            key_all = rng.purpose_key(args.seed, rng.EXPERT)

            def rounds():
                outs = []
                for c in ids:
                    a = jax.tree.map(lambda x: jax.device_put(np.asarray(x)[[c]], split), post_args)
                    outs.append(program.program(train, key_all, np.float32(e.base_lr), jax.device_put(ids[[c]], split),
                                                jax.device_put(prepared.stream.chunks[[c]], split), a))
                return outs
            out["round_s_per_expert"][name] = round(best(rounds, args.repeats) / args.chunks, 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
