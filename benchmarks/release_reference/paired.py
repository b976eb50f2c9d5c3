"""Pairs runs of the original release (release_reference.py run) with spr_jax runs on the release's stream
(--config.dataset.stream=release), seed by seed, and prints JSON: per seed both programs' headline numbers and
clean_p diagnostics, and per metric the paired difference (spr_jax - release) with its 95% t interval.

    python benchmarks/release_reference/paired.py --release /tmp/spr_release/results \
        --spr 'workdirs/release_stream_seed{seed}' [--seeds 1 2 3] [--markdown]

The diagnostics are computed the same way on both sides: spr_jax's from its metrics.jsonl chunk records
(spr_jax/chunk_diagnostics.py), the release's from the kept samples' clean_p and noisy flags its driver
dumped, with numpy here; pooled over a run's chunks as noted per metric.
"""
import argparse
import glob
import json
import os
import re

import ml_collections
import numpy as np

from spr_jax import comparison
from spr_jax import metrics as metrics_lib

METRICS = (  # key, label, scale, digits
    ("final_accuracy", "final accuracy (%)", 100, 1),
    ("buffer_purity", "buffer purity (%)", 100, 1),
    ("kept", "filter kept (samples)", 1, 0),
    ("precision", "filter precision (%)", 100, 1),
    ("noisy_removed", "noisy removed (%)", 100, 1),
    ("auc", "clean_p ROC-AUC among kept (mean over chunks)", 1, 3),
    ("tied_share", "kept at the chunk's max clean_p (%, pooled)", 100, 1),
    ("tied_noisy_share", "noisy among those tied (%, pooled)", 100, 1),
    ("admitted_noisy", "noisy admitted to the buffer (sum over chunks)", 1, 1),
    ("evicted_noisy", "noisy evicted from the buffer (sum over chunks)", 1, 1),
    ("admitted_clean", "clean admitted (sum)", 1, 1),
    ("evicted_clean", "clean evicted (sum)", 1, 1),
    ("wall_s", "wall time (s; the release's under load, see BENCHMARKS.md)", 1, 0),
)


def auc(clean_p, noisy) -> float | None:
    """Mann-Whitney ROC-AUC of clean_p at telling clean from noisy (ties count 1/2)."""
    clean, bad = clean_p[~noisy], clean_p[noisy]
    if not clean.size or not bad.size:
        return None
    greater = (clean[:, None] > bad[None, :]).sum()
    ties = (clean[:, None] == bad[None, :]).sum()
    return float((greater + 0.5 * ties) / (clean.size * bad.size))


def release_seed(path) -> dict:
    with open(path) as f:
        r = json.load(f)
    aucs, kept, tied, tied_noisy, kept_noisy, noisy_total = [], 0, 0, 0, 0, 0
    turnover = dict(admitted_noisy=0, evicted_noisy=0, admitted_clean=0, evicted_clean=0)
    for c in r["chunks"]:
        flags = np.asarray(c["noisy"], bool)
        positions = np.asarray(c["kept_positions"], int)
        # float32, as the release stores clean_p in its buffer (and as spr_jax computes it)
        p = np.asarray(c["kept_clean_p"], np.float32)
        n = flags[positions]
        a = auc(p, n)
        if a is not None:
            aucs.append(a)
        if p.size:
            at_max = p == p.max()
            tied += int(at_max.sum())
            tied_noisy += int((at_max & n).sum())
        kept += int(p.size)
        kept_noisy += int(n.sum())
        noisy_total += int(flags.sum())
        for k in turnover:
            turnover[k] += c[k]
    last = r["chunks"][-1]
    return dict(final_accuracy=r["final_accuracy"], buffer_purity=last["buffer_purity"], kept=kept,
                precision=(kept - kept_noisy) / kept, noisy_removed=1 - kept_noisy / noisy_total,
                auc=float(np.mean(aucs)), tied_share=tied / kept, tied_noisy_share=tied_noisy / tied if tied else None,
                wall_s=r.get("wall_s"), **turnover)


def spr_seed(folder) -> dict:
    records = [json.loads(line) for line in open(os.path.join(folder, "metrics.jsonl")) if line.strip()]
    chunks = [r for r in records if r.get("type") == "chunk"]
    with open(os.path.join(folder, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f)["config"])
    with open(os.path.join(folder, "summary.json")) as f:
        summary = json.load(f)
    rates = comparison.filter_rates(folder, config)
    kept = sum(r["kept"] for r in chunks)
    tied = sum(round(r["clean_p_tied_share"] * r["kept"]) for r in chunks if r["kept"])
    tied_noisy = sum(round(r["clean_p_tied_noisy_share"] * round(r["clean_p_tied_share"] * r["kept"]))
                     for r in chunks if r["kept"] and r["clean_p_tied_noisy_share"] is not None)
    out = dict(final_accuracy=summary["final_accuracy"], buffer_purity=summary["final_purity"], kept=kept,
               precision=rates["filter_precision"], noisy_removed=rates["noisy_removed"],
               auc=float(np.mean([r["clean_p_auc"] for r in chunks if r["clean_p_auc"] is not None])),
               tied_share=tied / kept, tied_noisy_share=tied_noisy / tied if tied else None, wall_s=sum(summary["wall_time_s"].values()))
    for k in ("admitted_noisy", "evicted_noisy", "admitted_clean", "evicted_clean"):
        out[k] = sum(r["buffer_" + k] for r in chunks)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--release", required=True, help="folder of release_seed{N}.json files")
    parser.add_argument("--spr", required=True, help="spr_jax workdir pattern with {seed}")
    parser.add_argument("--seeds", type=int, nargs="*", help="default: every seed both sides have")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    args = parser.parse_args()
    found = sorted(int(re.search(r"seed(\d+)\.json$", p).group(1))
                   for p in glob.glob(os.path.join(args.release, "release_seed*.json")))
    seeds = args.seeds or [s for s in found
                           if os.path.exists(os.path.join(args.spr.format(seed=s), "summary.json"))]
    release = {s: release_seed(os.path.join(args.release, f"release_seed{s}.json")) for s in seeds}
    ours = {s: spr_seed(args.spr.format(seed=s)) for s in seeds}
    table = {}
    for key, label, scale, _ in METRICS:
        a, b = [ours[s][key] for s in seeds], [release[s][key] for s in seeds]
        table[key] = {"label": label, "scale": scale, "spr_jax": metrics_lib.seed_stats(a),
                      "release": metrics_lib.seed_stats(b), "difference": metrics_lib.paired_stats(a, b)}
    print(json.dumps({"seeds": seeds, "per_seed": {"spr_jax": ours, "release": release}, "metrics": table}))
    if args.markdown:
        print(f"\nseeds {seeds}; mean +- sd [95% t interval]; difference = spr_jax - release, paired by seed\n")
        print("| metric | spr_jax | release (pinned) | paired difference |\n| --- | --- | --- | --- |")
        for key, label, scale, digits in METRICS:
            t = table[key]
            cells = [metrics_lib.format_stats(t[side], scale, digits) for side in ("spr_jax", "release", "difference")]
            print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
