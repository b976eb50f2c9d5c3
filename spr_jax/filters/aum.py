"""AUM: the Area Under the Margin ranking with threshold samples (Pleiss, Zhang, Elenberg, Weinberger, NeurIPS
2020, arXiv 2001.10528), as a filter on one chunk (docs/algorithm.md, "Other filters").

The paper's statistic: while a classifier trains on the noisy labels, a sample's margin at epoch t is the logit
of its assigned label minus the largest other logit; its AUM is that margin averaged over the T epochs.
Correctly labelled samples are learned early and have large positive AUM; a wrong label is only memorised
late, against the pull of similar samples, so its AUM is low or negative. Where to cut is learned from
threshold samples: a random subset relabelled to an extra class that does not exist, so all of them are
mislabelled on purpose; a sample is flagged when its AUM is at most the `percentile`-th percentile of their AUMs
(the paper uses the 99th). As the threshold samples lose their real label in that run, the paper trains twice
with two disjoint threshold sets.

Here, on a chunk of D samples with C distinct noisy labels:
- the classifier is `linear_probe`: a linear softmax classifier on the chunk's expert features (K + 1
  outputs, the last one the extra class), trained from zero weights by `aum_steps` full-batch gradient
  steps at rate `aum_lr`; a step stands for an epoch, and the margins are those after each step;
- threshold samples: m = max(1, D // (C + 1)) per run, the paper's N / (c + 1), so the extra class is as
  large as an average class of the data the classifier sees (a chunk holds only a few of the dataset's
  classes); two disjoint random sets, from the filter's key;
- each sample's AUM and threshold come from the first run in which it is not a threshold sample (run 1, or
  run 2 for run 1's threshold samples); keep = AUM > threshold;
- clean_p = sigmoid(AUM - threshold) (logit units): increasing in AUM, >= 1/2 for kept samples and <= 1/2
  for the others, so the purified buffer evicts the lowest-margin samples first. A non-finite AUM (a
  learning rate so large that training overflows) gives clean_p 0 and is never kept.
"""
import functools

import jax
import jax.numpy as jnp

from spr_jax import compilation
from spr_jax.filters import linear_probe


def threshold_sets(key, labels, num_classes: int):
    """[2, D] bool: the two disjoint random threshold sets, m = max(1, D // (C + 1)) samples each (C: the
    number of distinct labels in the chunk)."""
    d = labels.shape[0]
    present = jnp.sum(jnp.any(labels[:, None] == jnp.arange(num_classes)[None, :], axis=0))
    m = jnp.maximum(1, d // (present + 1))
    rank = jnp.argsort(jax.random.permutation(key, d))  # rank[i]: sample i's position in a random order
    return jnp.stack([rank < m, (rank >= m) & (rank < 2 * m)])


def area_under_margin(x, assigned, *, num_outputs: int, steps: int, lr: float):
    """[D] AUM of every sample for its assigned label: the margin after each of the `steps` gradient steps on
    all samples (linear_probe.train), averaged."""
    weight = jnp.ones(assigned.shape, jnp.float32)
    _, margin_sum = linear_probe.train(x, assigned, weight, num_outputs=num_outputs, steps=steps, lr=lr,
                                       track_margins=True)
    return margin_sum / steps


def masked_percentile(values, mask, q: float):
    """numpy's default (linear) percentile q of values[mask] (+inf if mask is empty)."""
    n = jnp.sum(mask)
    s = jnp.sort(jnp.where(mask, values, jnp.inf))
    pos = (q / 100.0) * jnp.maximum(n - 1, 0).astype(jnp.float32)
    lo = jnp.floor(pos).astype(jnp.int32)
    frac = pos - lo.astype(jnp.float32)
    hi = jnp.minimum(lo + 1, jnp.maximum(n - 1, 0))
    a, b = s[lo], s[hi]
    diff = b - a
    value = jnp.where(frac >= 0.5, b - diff * (1 - frac), a + diff * frac)  # numpy's lerp
    return jnp.where(n > 0, value, jnp.inf)


@functools.partial(compilation.jit, static_argnames=("num_classes", "aum_steps", "aum_lr", "aum_percentile"))
def aum_filter(key, features, labels, *, num_classes: int, aum_steps: int = 400, aum_lr: float = 1.0,
               aum_percentile: float = 99.0):
    """clean_p [D] float32 (sigmoid(AUM - threshold)), keep [D] bool (AUM > threshold) of one chunk."""
    labels = labels.astype(jnp.int32)
    x = linear_probe.unit_rows(features)
    sets = threshold_sets(key, labels, num_classes)
    fake = num_classes  # the extra class

    def one_run(is_threshold):
        assigned = jnp.where(is_threshold, fake, labels)
        aum = area_under_margin(x, assigned, num_outputs=num_classes + 1, steps=aum_steps, lr=aum_lr)
        return aum, masked_percentile(aum, is_threshold, aum_percentile)

    aums, thresholds = jax.vmap(one_run)(sets)
    second = sets[0]  # run 1's threshold samples are measured in run 2
    aum = jnp.where(second, aums[1], aums[0])
    threshold = jnp.where(second, thresholds[1], thresholds[0])
    finite = jnp.isfinite(aum) & jnp.isfinite(threshold)
    clean_p = jnp.where(finite, jax.nn.sigmoid(jnp.where(finite, aum - threshold, 0.0)), 0.0)
    return clean_p.astype(jnp.float32), finite & (aum > threshold)
