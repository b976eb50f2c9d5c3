"""Whose filter outputs make the purer buffer? Feeds spr_jax's purified buffer, with many independent buffer
draws, (a) the release's per-chunk kept samples and clean_p (its driver's dump) and (b) spr_jax's own (the
expert cache of a run on the release's stream), chunk by chunk on the same stream, and prints JSON: the final
purity's mean and 95% interval over the draws for each. A gap between (a) and (b) lies in the filter's outputs;
(a) against the release's own final purity tells whether the buffer (and its chance) reproduces the release.
It also replays (b) with the run's own buffer keys (rng.chunk_key(seed, BUFFER, c): the run's purity exactly)
and with the buffer keys of --draws other seeds, and prints the own keys' rank among them: over many seeds the
rank should spread evenly (a run's buffer draws independent of its filter's outputs).

    python benchmarks/release_reference/buffer_swap.py --release /tmp/spr_release/results/release_seed2.json \
        --spr workdirs/release_stream_seed2 [--draws 200]
"""
import argparse
import glob
import json
import os

import jax
import ml_collections
import numpy as np

from spr_jax import metrics as metrics_lib
from spr_jax import rng
from spr_jax.buffers import purified
from spr_jax.data import prepare as prepare_lib


def release_offers(path):
    with open(path) as f:
        r = json.load(f)
    out = []
    for c in r["chunks"]:
        keep = np.zeros(len(c["indices"]), bool)
        clean_p = np.zeros(len(c["indices"]), np.float32)
        keep[c["kept_positions"]] = True
        clean_p[c["kept_positions"]] = c["kept_clean_p"]
        out.append((np.asarray(c["indices"]), np.asarray(c["labels"]), np.asarray(c["noisy"]), clean_p, keep))
    return out, r["chunks"][-1]["buffer_purity"]


def cached_chunks(workdir, names):
    """{chunk index: tuple of the named arrays} from a run's expert cache (WORKDIR/expert_cache)."""
    by_chunk = {}
    for path in glob.glob(os.path.join(workdir, "expert_cache", "*", "*.npz")):
        d = np.load(path)
        by_chunk[json.loads(str(d["__description__"]))["chunk_index"]] = tuple(d[n] for n in names)
    return by_chunk


def spr_offers(workdir):
    with open(os.path.join(workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f)["config"])
    p = prepare_lib.prepare(config)
    by_chunk = cached_chunks(workdir, ("clean_p", "keep"))
    out = []
    for c in range(p.stream.num_chunks):
        idx = p.stream.chunks[c]
        clean_p, keep = by_chunk[c]
        out.append((idx, p.noisy.noisy[idx], p.noisy.corrupt[idx], np.asarray(clean_p, np.float32), np.asarray(keep)))
    return out


def final_purity(offers, chunk_keys, size=300, classes=10):
    """The buffer's final purity after every chunk's offers, chunk c drawing from chunk_keys[c]."""
    buf = purified.init_buffer(size, classes)
    for key, (idx, label, corrupt, clean_p, keep) in zip(chunk_keys, offers):
        buf = purified.offer(buf, purified.offer_draws(key, idx.shape[0]), idx, label, corrupt, clean_p, keep)
    return float(purified.purity(buf))


def final_purities(offers, draws, seed=0):
    """Final purity under `draws` independent sets of buffer keys."""
    keys = jax.random.split(jax.random.PRNGKey(seed), draws)
    return [final_purity(offers, [jax.random.fold_in(k, c) for c in range(len(offers))]) for k in keys]


def seed_keys(seed, n):
    return [rng.chunk_key(seed, rng.BUFFER, c) for c in range(n)]


def offers_json(offers) -> list:
    """The kept samples of each chunk in the filter's emission order (by class), as release_buffer.py reads them."""
    chunks = []
    for idx, label, corrupt, clean_p, keep in offers:
        order = np.argsort(np.where(keep, label, np.iinfo(np.int32).max), kind="stable")[:int(keep.sum())]
        chunks.append({"idx": idx[order].tolist(), "lab": label[order].tolist(),
                       "noisy": corrupt[order].astype(int).tolist(), "p": clean_p[order].astype(float).tolist()})
    return chunks


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--release", required=True)
    parser.add_argument("--spr", required=True)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--export", default="", help="also write both programs' offers here for release_buffer.py")
    args = parser.parse_args()
    theirs, their_purity = release_offers(args.release)
    ours = spr_offers(args.spr)
    if args.export:
        with open(args.export, "w") as f:
            json.dump({"release": offers_json(theirs), "spr_jax": offers_json(ours)}, f)
    same_stream = all(np.array_equal(a[0], b[0]) for a, b in zip(theirs, ours))
    out = {"same_chunks": same_stream, "release_run_final_purity": their_purity}
    for name, offers in (("release_filter_outputs", theirs), ("spr_jax_filter_outputs", ours)):
        s = metrics_lib.seed_stats(final_purities(offers, args.draws))
        out[name] = {k: s[k] for k in ("mean", "sd", "ci_low", "ci_high", "n")}
    with open(os.path.join(args.spr, "config.json")) as f:
        seed = json.load(f)["config"]["seed"]
    own = final_purity(ours, seed_keys(seed, len(ours)))
    others = [final_purity(ours, seed_keys(s, len(ours))) for s in range(1, args.draws + 2) if s != seed][:args.draws]
    out["spr_jax_own_buffer_keys"] = {"purity": own, "other_seeds_keys_mean": float(np.mean(others)),
                                      "rank_among_other_seeds_keys": int(np.sum(np.asarray(others) < own)),
                                      "of": len(others)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
