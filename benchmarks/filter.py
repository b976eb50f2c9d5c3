"""Self-Centered filter: the compiled JAX filter against the numpy + networkx + scipy reference pipeline.

Prints JSON only: per chunk size, our median time after compilation (block_until_ready), the reference's
median time (class by class, graph by graph, as the original release runs) on the same chunk and draws, and
the speedup; the minima too (the machine may be shared: its load average is recorded), our time with the
draws included (`purify_chunk`), whether both agreed on the keep decisions, the device and thread settings.

    .venv/bin/python benchmarks/filter.py [--sizes 300,1000] [--classes 10] [--graphs 5] [--ours-runs 20]
        [--reference-runs 3]

Chunks: 128-d features of 10 clusters on the unit sphere (one per true class) with 40% symmetric label noise,
E_max = 5 graphs.

numpy's OpenBLAS with 2 threads can be pathologically slow on 2-core machines (measured: 50x slower than 1 thread on a small eigh); it only affects the
reference side, so OPENBLAS_NUM_THREADS / OMP_NUM_THREADS default to 1 (override by setting them) and are
recorded in the output.
"""
import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from spr_jax.testing import reference_filter  # noqa: E402  (needs the test extras: networkx, scipy)
from spr_jax.filters import centrality  # noqa: E402


def _times_ms(fn, runs):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times)), 1e3 * float(np.min(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="300,1000")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--graphs", type=int, default=5)
    parser.add_argument("--ours-runs", type=int, default=20)
    parser.add_argument("--reference-runs", type=int, default=3)
    args = parser.parse_args()

    result = {}
    for size in (int(s) for s in args.sizes.split(",")):
        feats, labels, _ = reference_filter.clustered_chunk(size, size, args.classes, dim=128)
        graph_u, keep_u = centrality.filter_draws(jax.random.PRNGKey(size), size, args.graphs)
        f_dev, l_dev = jax.device_put(feats), jax.device_put(labels)

        def ours():
            return jax.block_until_ready(
                centrality.self_centered_filter(f_dev, l_dev, graph_u, keep_u, num_classes=args.classes))

        start = time.perf_counter()
        clean_p, keep = ours()
        compile_s = time.perf_counter() - start
        ours_ms, ours_min = _times_ms(ours, args.ours_runs)

        # End to end with the draws (E D^2 threefry uniforms), as the expert phase calls it.
        key = jax.random.PRNGKey(size)
        chunk = lambda: jax.block_until_ready(  # noqa: E731
            centrality.purify_chunk(key, f_dev, l_dev, num_classes=args.classes, num_graphs=args.graphs))
        chunk()
        chunk_ms, _ = _times_ms(chunk, args.ours_runs)

        gu_np, ku_np = np.asarray(graph_u), np.asarray(keep_u)
        reference = lambda: reference_filter.self_centered_filter(feats, labels, gu_np, ku_np)  # noqa: E731
        ref_p, ref_keep = reference()
        ref_ms, ref_min = _times_ms(reference, args.reference_runs)
        result[f"chunk{size}"] = {
            "ours_ms": round(ours_ms, 3),
            "reference_ms": round(ref_ms, 1),
            "speedup": round(ref_ms / ours_ms, 1),
            "ours_min_ms": round(ours_min, 3),
            "reference_min_ms": round(ref_min, 1),
            "ours_with_draws_ms": round(chunk_ms, 3),
            "ours_first_call_s": round(compile_s, 2),
            "classes": args.classes,
            "graphs": args.graphs,
            "keep_agree": float(np.mean(np.asarray(keep) == ref_keep)),
            "clean_p_max_abs_diff": float(np.max(np.abs(np.asarray(clean_p) - ref_p))),
        }
    result["device"] = (f"{jax.devices()[0].device_kind} ({jax.default_backend()}), "
                        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus")
    # The machine may be shared: the load average says how much the timings were disturbed.
    result["loadavg_1_5_15_min"] = [round(v, 2) for v in os.getloadavg()]
    result["threads"] = {v: os.environ.get(v) for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                                        "MKL_NUM_THREADS", "XLA_FLAGS")}
    result["versions"] = {"jax": jax.__version__, "numpy": np.__version__}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
