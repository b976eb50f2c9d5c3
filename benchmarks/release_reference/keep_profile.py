"""Where in the stream each program's filter keeps its noisy samples, and how they rank against the clean ones
the buffer will compare them with. Prints JSON per program (the release's driver dump, spr_jax's expert cache
on the release's stream), pooled over chunks:

* kept samples in three groups: clean; noisy whose true class is among the chunk's labels (a flip between
  two classes learned together); noisy from a class the chunk holds no label of. Per group: how many were
  offered and kept, mean clean_p, share at the highest clean_p of its chunk and class.
* per label class, the ROC-AUC of clean_p among all kept offers of that class over the whole stream (clean
  above noisy), the ranking the purified buffer's lowest-clean_p eviction acts on: unlike the per-chunk AUC it
  compares clean_p across chunks, i.e. across separate mixture fits.
* the buffers' final noisy samples by group (the release's run; spr_jax's buffer on its own outputs, mean over
  draws) - which noisy samples survive.

    python benchmarks/release_reference/keep_profile.py --release RESULTS/release_seedS.json \
        --spr workdirs/release_stream_seedS [--draws 20]
"""
import argparse
import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from buffer_swap import release_offers, spr_offers  # noqa: E402

from spr_jax.buffers import purified  # noqa: E402


def groups(offers, true_labels):
    """Per chunk: int array, 0 clean, 1 noisy from a class of the chunk (its true class is among the chunk's
    labels: a flip between classes being learned together), 2 noisy from a class the chunk does not hold."""
    out = []
    for idx, label, corrupt, clean_p, keep in offers:
        truth = true_labels[idx]
        out.append(np.where(~corrupt, 0, np.where(np.isin(truth, np.unique(label)), 1, 2)))
    return out


def auc(pos, neg):
    """P(a clean sample's clean_p > a noisy one's), ties counting one half."""
    if len(pos) == 0 or len(neg) == 0:
        return None
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


def profile(offers, draws, true_labels):
    g = groups(offers, true_labels)
    names = ("clean", "noisy_from_chunk_class", "noisy_from_other_class")
    out = {}
    for k, name in enumerate(names):
        n = p_sum = at_max = offered = 0
        for (idx, label, corrupt, clean_p, keep), gc in zip(offers, g):
            sel = keep & (gc == k)
            offered += int((gc == k).sum())
            n += int(sel.sum())
            p_sum += float(clean_p[sel].sum())
            for c in np.unique(label[sel]):
                cls = keep & (label == c)
                at_max += int(np.sum(sel & (label == c) & (clean_p == clean_p[cls].max())))
        out[name] = {"offered": offered, "kept": n, "kept_share": round(n / max(offered, 1), 4),
                     "mean_clean_p": round(p_sum / max(n, 1), 4), "at_class_max_share": round(at_max / max(n, 1), 4)}
    # Cross-chunk ranking per label class (what eviction compares).
    per_class, per_class_off = [], []
    labels = np.concatenate([o[1] for o in offers])
    for c in np.unique(labels):
        p_clean, p_noisy, p_off = [], [], []
        for (idx, label, corrupt, clean_p, keep), gc in zip(offers, g):
            sel = keep & (label == c)
            p_clean += clean_p[sel & (gc == 0)].tolist()
            p_noisy += clean_p[sel & (gc > 0)].tolist()
            p_off += clean_p[sel & (gc == 2)].tolist()
        a, b = auc(p_clean, p_noisy), auc(p_clean, p_off)
        if a is not None:
            per_class.append(a)
        if b is not None:
            per_class_off.append(b)
    out["pooled_class_auc_clean_vs_noisy"] = round(float(np.mean(per_class)), 4)
    out["pooled_class_auc_clean_vs_other_class"] = round(float(np.mean(per_class_off)), 4)
    # Which noisy samples survive in spr_jax's buffer fed these offers (mean over draws).
    group_of = {int(i): int(k) for (idx, *_), gc in zip(offers, g) for i, k in zip(idx, gc)}
    finals = {name: [] for name in names}
    for d in range(draws):
        key = jax.random.PRNGKey(1000 + d)
        buf = purified.init_buffer(300, 10)
        for c, (idx, label, corrupt, clean_p, keep) in enumerate(offers):
            buf = purified.offer(buf, purified.offer_draws(jax.random.fold_in(key, c), idx.shape[0]), idx, label,
                                 corrupt, clean_p, keep)
        members = np.asarray(buf.index)[np.asarray(buf.valid)]
        ks = np.array([group_of[int(i)] for i in members])
        for k, name in enumerate(names):
            finals[name].append(int((ks == k).sum()))
    out["final_buffer_mean_over_draws"] = {k: round(float(np.mean(v)), 1) for k, v in finals.items()}
    return out, group_of


def true_labels(workdir):
    """The training set's true labels, through the spr_jax run's own data preparation."""
    import ml_collections
    from spr_jax.data import prepare as prepare_lib
    with open(os.path.join(workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f)["config"])
    return np.asarray(prepare_lib.prepare(config).dataset.train.labels)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--release", required=True)
    parser.add_argument("--spr", required=True)
    parser.add_argument("--draws", type=int, default=20)
    args = parser.parse_args()
    theirs, _ = release_offers(args.release)
    ours = spr_offers(args.spr)
    out = {}
    truth = true_labels(args.spr)
    out["release"], group_of = profile(theirs, args.draws, truth)
    out["spr_jax"], _ = profile(ours, args.draws, truth)
    with open(args.release) as f:
        last = json.load(f)["chunks"][-1]
    if "buffer_noisy" in last:  # the release run's own final buffer, by group
        members = [i for i, c in zip(last.get("buffer_idxs", []), last["buffer_noisy"])] if "buffer_idxs" in last else None
        out["release_run_final_noisy"] = int(sum(last["buffer_noisy"]))
        if members is not None:
            out["release_run_final_by_group"] = np.bincount([group_of[int(i)] for i in members], minlength=3).tolist()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
