"""A filter written outside spr_jax: k-nearest-neighbour label agreement in the expert's feature space.

A sample is kept when most of its k nearest neighbours in the chunk (cosine similarity of the expert's
features, itself excluded) carry its noisy label; clean_p is that agreement share.

    PYTHONPATH=examples python launch.py --config=configs/fashion_mnist_cpu.py \
        --config.filter.kind=knn_filter:knn_agreement --workdir=workdirs/knn

`k` is a keyword parameter, so `--config.filter.k=20` (or a config that defines `config.filter.k`) sets it
(default 10).

The same rule ships built in as `--config.filter.kind=knn` (spr_jax/filters/knn.py, its k read from
`config.filter.knn_k`; `--mode=compare` runs it as the method `spr_knn`). This file stays as the template of
a filter of your own (docs/extending.md).
"""
import jax
import jax.numpy as jnp


def knn_agreement(key, features, labels, *, num_classes, k=10):
    del key, num_classes  # deterministic, and agreement does not need the class count
    d = features.shape[0]
    k = min(k, d - 1)
    f = features / jnp.maximum(jnp.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    sim = jnp.dot(f, f.T, precision=jax.lax.Precision.HIGHEST)
    sim = jnp.where(jnp.eye(d, dtype=bool), -jnp.inf, sim)  # a sample is not its own neighbour
    _, neighbours = jax.lax.top_k(sim, k)  # [D, k]
    agreement = jnp.mean(labels[neighbours] == labels[:, None], axis=1)
    return agreement.astype(jnp.float32), agreement > 0.5
