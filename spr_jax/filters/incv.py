"""INCV: Iterative Noisy Cross-Validation (Chen, Liao, Chen, Zhang, "Understanding and Utilizing Deep Neural
Networks Trained with Noisy Labels", ICML 2019, PMLR 97), as a filter on one chunk (docs/algorithm.md, "Other
filters").

The paper's procedure keeps a selected set S (empty at first) and a candidate set C (all samples). Each
iteration splits C at random into halves C1 and C2, trains a classifier on S + C1 and selects the samples of
C2 whose predicted class is their label (S1); it also removes from C the n = r |S1| samples of C2 with the
largest loss under that classifier (R1). The same with the halves' roles swapped gives S2 and R2. Then
S <- S + S1 + S2 and C <- C - (S1 + S2 + R1 + R2). The output S is the clean set. The removal ratio r
follows from the noise rate eps that the first iteration's held-out agreement a = |S1| / |C2| implies: with
c classes, a classifier that is right on the clean share and a noisy label drawn uniformly among the others
agree with probability (1 - eps)^2 + eps^2 / (c - 1) = a; r = min(2, eps / (1 - eps)) (as in the authors'
release).

Here, on a chunk with C distinct noisy labels:
- the classifier is `linear_probe`: a linear softmax classifier on the chunk's expert features, trained
  afresh (zero weights) for every half by `incv_steps` full-batch gradient steps at rate `incv_lr`;
- `incv_iterations` iterations (the paper's 4); halves of floor(|C| / 2) and the rest, from the filter's key;
- c in the noise estimate is the chunk's C (at least 2): the classifier only learns labels the chunk holds;
  `incv_remove_ratio` >= 0 sets r instead of the estimate;
- keep = S; clean_p = the probability the held-out classifier gave the sample's label at its last
  evaluation (the one that selected or removed it, or the last iteration for a sample still a candidate):
  a cross-validated confidence in [0, 1]; the purified buffer evicts the least confident kept samples first.
- A classifier with nothing to train on (S and its half both empty) selects and removes nothing.
"""
import functools

import jax
import jax.numpy as jnp

from spr_jax import compilation
from spr_jax.filters import linear_probe


def random_halves(u, candidate):
    """(first, second) [D] bool: the candidates in the order of the uniforms u, the first floor(n / 2) of them
    and the rest."""
    n = jnp.sum(candidate)
    rank = jnp.argsort(jnp.argsort(jnp.where(candidate, u, jnp.inf)))
    first = candidate & (rank < n // 2)
    return first, candidate & ~first


def noise_rate_estimate(agreement, num_labels):
    """eps in [0, (c - 1) / c] solving (1 - eps)^2 + eps^2 / (c - 1) = agreement (c = num_labels >= 2); an
    agreement below 1 / c gives (c - 1) / c."""
    c = jnp.maximum(num_labels, 2).astype(jnp.float32)
    inside = jnp.maximum(1.0 - c * (1.0 - agreement) / (c - 1.0), 0.0)
    return (c - 1.0) / c * (1.0 - jnp.sqrt(inside))


def largest(values, mask, n):
    """[D] bool: the n entries of `mask` with the largest values (ties: the lower index first)."""
    rank = jnp.argsort(jnp.argsort(jnp.where(mask, -values, jnp.inf), stable=True), stable=True)
    return mask & (rank < n)


def held_out(x, labels, train_mask, test_mask, *, num_classes, steps, lr):
    """The classifier trained on train_mask, on test_mask: (agree [D] bool: test samples it predicts as
    labelled, loss [D] cross-entropy, p [D] probability of the label, trained: whether it had anything to
    train on)."""
    params, _ = linear_probe.train(x, labels, train_mask.astype(jnp.float32), num_outputs=num_classes,
                                   steps=steps, lr=lr)
    log_p = jax.nn.log_softmax(linear_probe.logits_of(x, params), axis=-1)
    own = jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]
    trained = jnp.any(train_mask)
    agree = test_mask & trained & jnp.isfinite(own) & (jnp.argmax(log_p, axis=-1) == labels)
    return agree, -own, jnp.exp(own), trained


@functools.partial(compilation.jit, static_argnames=("num_classes", "incv_iterations", "incv_steps", "incv_lr",
                                                     "incv_remove_ratio"))
def incv_filter(key, features, labels, *, num_classes: int, incv_iterations: int = 4, incv_steps: int = 25,
                incv_lr: float = 1.0, incv_remove_ratio: float = -1.0):
    """clean_p [D] float32 (held-out probability of the label), keep [D] bool (INCV's selected set) of one
    chunk."""
    labels = labels.astype(jnp.int32)
    d = labels.shape[0]
    x = linear_probe.unit_rows(features)
    present = jnp.sum(jnp.any(labels[:, None] == jnp.arange(num_classes)[None, :], axis=0))
    fit = functools.partial(held_out, x, labels, num_classes=num_classes, steps=incv_steps, lr=incv_lr)

    def iteration(i, state):
        selected, candidate, clean_p, ratio = state
        c1, c2 = random_halves(jax.random.uniform(jax.random.fold_in(key, i), (d,)), candidate)
        agree1, loss1, p1, trained1 = fit(selected | c1, c2)
        estimate = noise_rate_estimate(jnp.sum(agree1) / jnp.maximum(jnp.sum(c2), 1), present)
        first = (i == 0) & (incv_remove_ratio < 0)
        ratio = jnp.where(first, jnp.minimum(2.0, estimate / (1.0 - estimate)), ratio)
        removed1 = largest(loss1, c2 & trained1, jnp.floor(ratio * jnp.sum(agree1)).astype(jnp.int32))
        agree2, loss2, p2, trained2 = fit(selected | c2, c1)
        removed2 = largest(loss2, c1 & trained2, jnp.floor(ratio * jnp.sum(agree2)).astype(jnp.int32))
        clean_p = jnp.where(c2 & trained1, p1, jnp.where(c1 & trained2, p2, clean_p))
        chosen = agree1 | agree2
        return selected | chosen, candidate & ~(chosen | removed1 | removed2), clean_p, ratio

    start = (jnp.zeros((d,), bool), jnp.ones((d,), bool), jnp.zeros((d,), jnp.float32),
             jnp.float32(max(incv_remove_ratio, 0.0)))
    selected, _, clean_p, _ = jax.lax.fori_loop(0, incv_iterations, iteration, start)
    clean_p = jnp.where(jnp.isfinite(clean_p), clean_p, 0.0)
    return clean_p.astype(jnp.float32), selected
