"""Does the release's re-seeding at every chunk make its purified buffer purer? Prints JSON.

The release re-seeds its global generators whenever the delayed buffer empties, so every chunk's expert starts
from the same initial weights and draws the same augmentations, and the filter's graph and keep draws repeat
from chunk to chunk (docs/algorithm.md, "Randomness"); spr_jax folds a chunk's index into its keys, so chunks
are independent. This script trains every chunk's expert of a run twice on the same stream (the release's, for
configs/fashion_mnist_cpu.py and --seed), with spr_jax's keys (independent: chunk c uses
rng.chunk_key(seed, EXPERT, c), as a run does) and with chunk 0's keys for every chunk (repeated, as the
release), runs the run's filter on each set of features with independent or repeated filter keys, and feeds each
of the four sets of offers to the purified buffer under --draws independent sets of buffer draws (the same
sets for the four). Per variant: the final purity (mean, sd over draws), the filter's precision and noisy
removed, and keep_profile.py's cross-chunk ranking figures.

    python benchmarks/release_reference/repeated_keys.py --seed 1 [--draws 40]
"""
import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from buffer_swap import final_purities  # noqa: E402
from keep_profile import profile  # noqa: E402

from spr_jax import compilation, experts, rng, run_setup  # noqa: E402
from spr_jax import metrics as metrics_lib  # noqa: E402


def load_config(seed):
    import importlib.util
    spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, "configs", "fashion_mnist_cpu.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.seed = seed
    config.dataset.stream = "release"
    return config


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--draws", type=int, default=40)
    parser.add_argument("--replicates", type=int, default=1,
                        help="independent sets of keys (replicate r > 0 keys from seed + 1000 r; the stream stays "
                             "the seed's): the spread of the filter's outputs on one stream")
    parser.add_argument("--independent-only", action="store_true", help="spr_jax's keys only (no repeated keys)")
    args = parser.parse_args()
    config = load_config(args.seed)
    prepared, s, _, _ = run_setup.setup(config)
    stream, noisy = prepared.stream, prepared.noisy
    chunks = np.asarray(stream.chunks, np.int32)
    n = chunks.shape[0]
    images = jnp.asarray(prepared.dataset.train.images)
    labels = jnp.asarray(noisy.noisy[chunks])
    filter_fn = jax.jit(jax.vmap(lambda key, f, y: s.filter.fn(key, f, y, num_classes=s.filter.num_classes)))
    key_ids = {"independent": np.arange(n, dtype=np.int32), "repeated": np.zeros(n, np.int32)}
    if args.independent_only:
        del key_ids["repeated"]
    results = {"seed": args.seed, "draws": args.draws, "chunks": n}
    for r in range(args.replicates):
        key_seed = s.seed + 1000 * r
        with compilation.matmul_precision(s.precision), compilation.cpu_opt_level(1):
            features = {name: jnp.asarray(experts.expert_phase(
                images, chunks, key_seed, chunk_ids=ids, keep_losses=False, progress=False,
                **s.expert.phase_kwargs())["features"]) for name, ids in key_ids.items()}
        for name, value in variants(features, key_ids, key_seed, s, filter_fn, chunks, labels, noisy, n, args.draws,
                                    np.asarray(prepared.dataset.train.labels)):
            results[name + (f"_replicate{r}" if r else "")] = value
    print(json.dumps(results))


def variants(features, key_ids, key_seed, s, filter_fn, chunks, labels, noisy, n, draws, true_labels):
    for expert_keys in key_ids:
        for filter_keys in key_ids:
            keys = jax.vmap(lambda c: rng.chunk_key(key_seed, rng.FILTER, c))(jnp.asarray(key_ids[filter_keys]))
            clean_p, keep = jax.device_get(filter_fn(keys, features[expert_keys], labels))
            offers = [(chunks[c], noisy.noisy[chunks[c]], noisy.corrupt[chunks[c]], np.asarray(clean_p[c], np.float32),
                       np.asarray(keep[c])) for c in range(n)]
            kept = keep.sum()
            kept_noisy = (keep & noisy.corrupt[chunks]).sum()
            purities = metrics_lib.seed_stats(final_purities(offers, draws))
            prof, _ = profile(offers, 0, true_labels)
            prof.pop("final_buffer_mean_over_draws", None)
            yield f"experts_{expert_keys}_filter_{filter_keys}", {
                "purity_mean": round(100 * purities["mean"], 2), "purity_sd": round(100 * purities["sd"], 2),
                "precision": round(100 * float(1 - kept_noisy / kept), 2),
                "noisy_removed": round(100 * float(1 - kept_noisy / noisy.corrupt[chunks].sum()), 2),
                **prof}


if __name__ == "__main__":
    main()
