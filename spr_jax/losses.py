"""Losses: SimCLR's NT-Xent (docs/algorithm.md section 4), and the learners' losses for fitting a
classifier on a memory (`config.eval.loss`): cross-entropy (SPR's) and symmetric cross-entropy (SL)."""
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


def symmetric_cross_entropy(logits, labels, *, sl_alpha: float = 0.1, sl_beta: float = 1.0,
                            sl_log_zero: float = -4.0):
    """Symmetric cross-entropy (SL; Wang et al., ICCV 2019): alpha CE + beta RCE, means over the batch.

    RCE = -sum_k p_k log q_k with q the one-hot label and log 0 taken as A = sl_log_zero (the paper's
    A = -4), i.e. RCE = -A (1 - p_y). alpha 0.1 and beta 1.0 are the paper's CIFAR-10 values; the keyword
    parameters are read from config.eval (eval.sl_alpha, ...) when a config defines them.
    """
    ce = cross_entropy(logits, labels)
    p_y = jnp.take_along_axis(jax.nn.softmax(logits, axis=-1), labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    rce = jnp.mean(-sl_log_zero * (1.0 - p_y))
    return sl_alpha * ce + sl_beta * rce
