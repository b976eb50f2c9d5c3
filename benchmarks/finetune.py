"""The evaluation's fine-tuning at XLA's default CPU vector width (256) and at 512, interleaved in one process;
prints one JSON object: median seconds of one 50-epoch fine-tune of the MLP classifier on a 300-sample buffer
(batch 16), and whether both give bit-identical weights.

    python benchmarks/finetune.py --repeats 4
"""
import argparse
import hashlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--epochs", type=int, default=50)
    a = p.parse_args()
    from spr_jax import evaluate, losses, models
    jax.config.update("jax_enable_compilation_cache", False)
    clf = models.Classifier(models.MLPEncoder(), 10)
    key = jax.random.PRNGKey(0)
    v = clf.init(key, jnp.zeros((1, 28, 28, 1)), train=False)
    rs = np.random.RandomState(0)
    images = jnp.asarray(rs.randint(0, 255, (300, 28, 28, 1)).astype(np.uint8))
    labels = jnp.asarray(rs.randint(0, 10, 300))
    kw = dict(epochs=a.epochs, batch_size=16, lr=2e-3, decay_every=300, decay=0.1, clip=0.5, loss=losses.cross_entropy,
              networks=1)
    programs, digests, times = {}, {}, {}
    for width in (256, 512):
        jitted = evaluate.finetune.with_compiler_options({
            "xla_backend_optimization_level": 1, "xla_cpu_prefer_vector_width": width})
        programs[width] = jitted.lower(clf, v, images, labels, key, **kw).compile()
        out = jax.block_until_ready(programs[width](v, images, labels, key))
        digests[width] = hashlib.sha1(b"".join(np.asarray(x).tobytes() for x in jax.tree.leaves(out))).hexdigest()
        times[width] = []
    for _ in range(a.repeats):
        for width, program in programs.items():
            t = time.perf_counter()
            jax.block_until_ready(program(v, images, labels, key))
            times[width].append(time.perf_counter() - t)
    print(json.dumps({"finetune_s": {str(w): round(float(np.median(t)), 4) for w, t in times.items()},
                      "bit_identical": digests[256] == digests[512], "device": str(jax.devices()[0]),
                      "cpu_count": os.cpu_count()}))


if __name__ == "__main__":
    main()
