"""Whose expert features make the purer buffer, through spr_jax's filter and buffer? Prints JSON.

The release's experts' features (driver.py --features, optionally --experts-only) and spr_jax's (the expert
cache of a run on the release's stream, same seed, so the same chunks) go through the same filter (the run's,
under --filter-draws sets of filter keys) and the same purified buffer (--buffer-draws sets of buffer keys),
so the only difference left is the features. Also per program, pooled over chunks and classes, what the
filter sees: the mean of S = max(0, cos) between clean pairs, clean-noisy pairs and noisy pairs of one label
class, the share of S above 0.5, and the filter's precision and removal.

    python benchmarks/release_reference/feature_swap.py --release-features FEAT.npz --spr WORKDIR
"""
import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from buffer_swap import cached_chunks, final_purities  # noqa: E402

from spr_jax import rng, run_setup  # noqa: E402
from spr_jax import metrics as metrics_lib  # noqa: E402


def spr_features(workdir, n):
    by_chunk = cached_chunks(workdir, ("features",))
    return np.stack([by_chunk[c][0] for c in range(n)])


def similarity_stats(features, labels, corrupt):
    pairs = {"clean_clean": [], "clean_noisy": [], "noisy_noisy": []}
    above = []
    for f, y, z in zip(features, labels, corrupt):
        for c in np.unique(y):
            m = y == c
            s = np.maximum(f[m] @ f[m].T, 0.0)
            zc = z[m]
            off = ~np.eye(m.sum(), dtype=bool)
            pairs["clean_clean"].append(s[np.ix_(~zc, ~zc)][off[np.ix_(~zc, ~zc)]])
            pairs["clean_noisy"].append(s[np.ix_(~zc, zc)].ravel())
            pairs["noisy_noisy"].append(s[np.ix_(zc, zc)][off[np.ix_(zc, zc)]])
            above.append(s[off].ravel())
    out = {f"mean_S_{k}": round(float(np.mean(np.concatenate(v))), 4) for k, v in pairs.items()}
    out["share_S_above_0.5"] = round(float(np.mean(np.concatenate(above) > 0.5)), 4)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--release-features", required=True)
    parser.add_argument("--spr", required=True)
    parser.add_argument("--filter-draws", type=int, default=8)
    parser.add_argument("--buffer-draws", type=int, default=10)
    args = parser.parse_args()
    with open(os.path.join(args.spr, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f)["config"])
    p, s, _, _ = run_setup.setup(config)
    chunks = np.asarray(p.stream.chunks)
    n = chunks.shape[0]
    release = np.load(args.release_features)
    if not np.array_equal(release["indices"][:n], chunks):
        sys.exit("the release's chunks are not this run's: same seed and the release's stream, please")
    fn = jax.jit(jax.vmap(lambda k, f, y: s.filter.fn(k, f, y, num_classes=s.filter.num_classes)))
    labels, corrupt = p.noisy.noisy[chunks], p.noisy.corrupt[chunks]
    out = {"seed": int(config.seed), "chunks": n, "filter_draws": args.filter_draws,
           "buffer_draws": args.buffer_draws}
    for name, feats in (("release_features", release["features"][:n]), ("spr_jax_features", spr_features(args.spr, n))):
        purities, precision, removed = [], [], []
        for d in range(args.filter_draws):
            keys = jax.vmap(lambda c: jax.random.fold_in(rng.chunk_key(1000 + d, rng.FILTER, c), 7))(jnp.arange(n))
            clean_p, keep = jax.device_get(fn(keys, jnp.asarray(feats, jnp.float32), jnp.asarray(labels)))
            offers = [(chunks[c], labels[c], corrupt[c], np.asarray(clean_p[c], np.float32), np.asarray(keep[c]))
                      for c in range(n)]
            purities += final_purities(offers, args.buffer_draws)
            precision.append(1 - (keep & corrupt).sum() / keep.sum())
            removed.append(1 - (keep & corrupt).sum() / corrupt.sum())
        st = metrics_lib.seed_stats([100 * x for x in purities])
        r2 = lambda x: None if x is None else round(x, 2)  # (sd and interval need two draws)
        out[name] = {"purity_mean": r2(st["mean"]), "purity_sd": r2(st["sd"]),
                     "purity_ci": [r2(st["ci_low"]), r2(st["ci_high"])],
                     "per_filter_draw_purity": [round(100 * float(np.mean(purities[i * args.buffer_draws:(i + 1) * args.buffer_draws])), 2)
                                                for i in range(args.filter_draws)],
                     "precision": round(100 * float(np.mean(precision)), 2),
                     "noisy_removed": round(100 * float(np.mean(removed)), 2),
                     **similarity_stats(np.asarray(feats, np.float64), labels, corrupt)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
