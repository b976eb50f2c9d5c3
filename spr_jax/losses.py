"""Losses: SimCLR's NT-Xent (docs/algorithm.md section 4) and cross-entropy for the evaluation head."""
import jax
import jax.numpy as jnp


def nt_xent(z_a, z_b, temperature: float = 0.5):
    """Normalised-temperature cross-entropy of two views [N, d] each; mean over the 2N anchors.

    Anchor i of the 2N rows of concat(z_a, z_b) has as positive the other view of the same image and as
    negatives the other 2N - 2 rows; similarities are cosines divided by the temperature.
    """
    n = z_a.shape[0]
    z = jnp.concatenate([z_a, z_b], axis=0)
    # x / max(|x|, eps) as torch's F.normalize / cosine_similarity, so a zero vector stays finite.
    z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-8)
    sim = (z @ z.T) / temperature
    two_n = 2 * n
    idx = jnp.arange(two_n)
    sim = jnp.where(idx[:, None] == idx[None, :], -jnp.inf, sim)  # an anchor is not its own negative
    # The positive of row i is row (i + N) mod 2N: one dot per pair, counted for both of its anchors.
    positive = jnp.sum(z[:n] * z[n:], axis=-1) / temperature
    return jnp.mean(jax.nn.logsumexp(sim, axis=-1)) - jnp.mean(positive)


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy of logits [N, K] and int labels [N] (torch's nn.CrossEntropyLoss)."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1))
