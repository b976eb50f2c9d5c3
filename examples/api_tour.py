"""A tour of the Python API (the script form of a notebook): run the tiny config, read it back, plot its
accuracy matrix and buffer purity, then run a plug-in filter and compare the two.

    python examples/api_tour.py /tmp/spr_tour        # writes /tmp/spr_tour/tour.png

tests/test_api.py runs it.
"""
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the plug-ins beside this file
import spr_jax  # noqa: E402


def main(out: str) -> dict:
    spr = spr_jax.read_run(_run("tiny", {}, os.path.join(out, "spr")))
    knn = spr_jax.read_run(_run("tiny", {"filter.kind": "knn_filter:knn_agreement"}, os.path.join(out, "knn")))

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    im = a.imshow(100 * spr.accuracy_matrix, vmin=0, vmax=100, cmap="viridis")  # NaN (unseen): blank
    a.set(title="SPR: accuracy (%) after task i on task j", xlabel="task j", ylabel="after task i")
    fig.colorbar(im, ax=a)
    for name, r in (("SPR (centrality)", spr), ("kNN agreement filter", knn)):
        b.plot(100 * r.chunks["buffer_purity"], label=f"{name}: {100 * r.summary['final_accuracy']:.1f}% final")
    b.set(title="buffer purity (%) per chunk", xlabel="chunk", ylabel="purity (%)")
    b.legend()
    fig.tight_layout()
    path = os.path.join(out, "tour.png")
    fig.savefig(path, dpi=80)
    result = {"spr_accuracy": spr.summary["final_accuracy"], "knn_accuracy": knn.summary["final_accuracy"],
              "spr_mean_kept": float(np.mean(spr.chunks["kept"])), "plot": path}
    print(result)
    return result


def _run(name, overrides, workdir):
    spr_jax.run(spr_jax.load_config(name, overrides), workdir, progress=False)
    return workdir


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/spr_tour")
