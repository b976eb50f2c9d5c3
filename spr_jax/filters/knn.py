"""k-nearest-neighbour label agreement in the expert's feature space, as a filter on one chunk (docs/algorithm.md,
"Other filters"). The rule of examples/knn_filter.py, built in as `--config.filter.kind=knn`.

A sample's neighbours are the `knn_k` other samples of its chunk with the highest cosine similarity of the
expert's features (itself excluded; ties: the lower index first); clean_p is the share of them that carry its
noisy label, and the sample is kept when that share is above one half (a strict majority). Deep k-NN (Bahri,
Jiang, Gupta, ICML 2020, arXiv 2004.12289) filters the same way with a plurality vote among the neighbours; the
strict majority is stricter when the neighbours split over three or more labels. No draws: the key is unused.
"""
import functools

import jax
import jax.numpy as jnp

from spr_jax import compilation


def neighbours(features, k: int):
    """[D, min(k, D - 1)] int: each sample's nearest other samples by cosine similarity, nearest first."""
    d = features.shape[0]
    f = features.astype(jnp.float32)
    f = f / jnp.maximum(jnp.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    sim = jnp.dot(f, f.T, precision=jax.lax.Precision.HIGHEST)
    sim = jnp.where(jnp.eye(d, dtype=bool), -jnp.inf, sim)  # a sample is not its own neighbour
    return jax.lax.top_k(sim, min(k, d - 1))[1]


@functools.partial(compilation.jit, static_argnames=("num_classes", "knn_k"))
def knn_filter(key, features, labels, *, num_classes: int, knn_k: int = 10):
    """clean_p [D] float32 (the neighbours' agreement with the label), keep [D] bool (agreement > 1/2)."""
    del key, num_classes
    labels = labels.astype(jnp.int32)
    agreement = jnp.mean(labels[neighbours(features, knn_k)] == labels[:, None], axis=1)
    return agreement.astype(jnp.float32), agreement > 0.5
