"""The continual-learning methods of the online protocol beyond experience replay's random retrieval
(docs/algorithm.md, "Baselines"): online EWC's penalty, Fisher and consolidation, and MIR's retrieval.

Pure functions of arrays and parameter pytrees; online.py calls them inside its scanned step.

- Online EWC (Kirkpatrick et al., PNAS 2017; the online form of Schwarz et al., ICML 2018): the loss gains
  (lambda / 2) sum_i F*_i (theta_i - theta*_i)^2. F* is a consolidated diagonal Fisher and theta* the anchor.
  Every step measures the empirical Fisher of its stream batch (the mean over the batch of each sample's
  squared gradient of -log p(y | x), at the parameters before the step); a chunk's Fisher is the mean over its
  steps. At the end of each chunk F* <- decay F* + F_chunk and theta* <- theta: a chunk plays the role of
  Schwarz's task, so the learner needs no task boundaries (the stream gives none to any method here).
- MIR (Aljundi et al., NeurIPS 2019): before each step a virtual SGD step theta_v = theta - alpha grad L(stream
  batch); among C memory samples drawn at random (without replacement), the k whose loss rises most from theta
  to theta_v are replayed.
- L2R (Ren et al., ICML 2018), a noisy-label learner of both protocols: each step's samples are weighted by how
  much a virtual step on them would lower the loss of a small clean meta set (l2r_weights, meta_set).
- Pencil (Yi and Wu, CVPR 2019) online: every training sample's label logits (K x its one-hot noisy label at
  first) are learned in the stream's second stage whenever the sample is in a step's batch, from the stream or
  replayed (pencil_per_sample, pencil_stage); the fine-tuning's form is evaluate.finetune's.
"""
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from spr_jax import losses


# -- online EWC ----------------------------------------------------------------------------------------------

@flax.struct.dataclass
class EWCState:
    anchor: Any  # theta*: the parameters at the end of the last chunk (a params pytree)
    fisher: Any  # F*: the consolidated diagonal Fisher (same pytree; zeros before the first chunk ends)


def ewc_init(params) -> EWCState:
    """No penalty yet: F* = 0, theta* a copy of the parameters (its own buffers: the state is donated)."""
    return EWCState(anchor=jax.tree.map(lambda p: jnp.array(p, copy=True), params),
                    fisher=jax.tree.map(jnp.zeros_like, params))


def ewc_penalty(params, ewc: EWCState, lam: float):
    """(lam / 2) sum_i F*_i (theta_i - theta*_i)^2 over every parameter."""
    terms = jax.tree.map(lambda p, a, f: jnp.sum(f * jnp.square(p - a)), params, ewc.anchor, ewc.fisher)
    return 0.5 * lam * sum(jax.tree.leaves(terms))


def empirical_fisher(per_sample_nll, params):
    """The diagonal empirical Fisher of a batch: mean over its samples of (d nll_n / d theta)^2, where
    per_sample_nll(params) -> [B] is each sample's -log p(y | x) (computed on the whole batch, so BatchNorm's
    batch statistics are those of a training step)."""
    jac = jax.jacrev(per_sample_nll)(params)  # each leaf [B, *shape]
    return jax.tree.map(lambda g: jnp.mean(jnp.square(g), axis=0), jac)


def ewc_consolidate(ewc: EWCState, params, chunk_fisher, decay: float) -> EWCState:
    """End of a chunk: F* <- decay F* + F_chunk, theta* <- theta."""
    return EWCState(anchor=params, fisher=jax.tree.map(lambda f, c: decay * f + c, ewc.fisher, chunk_fisher))


# -- MIR -----------------------------------------------------------------------------------------------------

def mir_candidates(valid, key, n: int):
    """n memory slots drawn uniformly without replacement among the valid ones (int32 [n]) and which of them
    hold a sample (bool [n]: False where the memory has fewer than n valid slots)."""
    n = min(int(n), valid.shape[0])
    order = jnp.where(valid, jax.random.uniform(key, valid.shape), 2.0)  # invalid slots sort last
    slots = jnp.argsort(order, stable=True)[:n].astype(jnp.int32)
    return slots, valid[slots]


def virtual_step(params, grads, step_size: float):
    """MIR's estimated update: theta_v = theta - alpha grad (plain SGD, whatever the learner's optimiser)."""
    return jax.tree.map(lambda p, g: p - step_size * g, params, grads)


def mir_select(loss_before, loss_after, ok, k: int):
    """The k candidates of largest loss increase loss_after - loss_before (ties: the earlier candidate),
    ignoring those with ok=False; returns their positions among the candidates (int32 [k]) and whether each
    is a real sample (bool [k]: False only when fewer than k candidates are)."""
    score = jnp.where(ok, loss_after - loss_before, -jnp.inf)
    score = jnp.nan_to_num(score, nan=-jnp.inf)  # a non-finite loss never ranks first
    top = jnp.argsort(-score, stable=True)[:k].astype(jnp.int32)
    return top, ok[top]


# -- L2R -----------------------------------------------------------------------------------------------------

def l2r_weights(batch_losses, meta_loss, params, mask):
    """Learning to reweight's weights of one batch: with theta_hat(eps) = theta - alpha grad sum_i eps_i l_i(theta),
    u = -d meta_loss(theta_hat(eps)) / d eps at eps = 0, then w = max(u, 0) normalised to sum 1 (all zero when
    no u is positive). batch_losses(params) -> [B] per-sample losses; meta_loss(params) -> the clean meta set's
    mean loss; mask [B]: samples that may be weighted (False: a missing replay sample). At eps = 0 theta_hat is
    theta, so u_i = alpha grad meta . grad l_i exactly: alpha cancels in the normalisation and is taken as 1."""
    def meta_after(eps):
        grads = jax.grad(lambda p: jnp.sum(eps * batch_losses(p)))(params)
        return meta_loss(jax.tree.map(lambda p, g: p - g, params, grads))

    u = -jax.grad(meta_after)(jnp.zeros(mask.shape, jnp.float32))
    w = jnp.where(mask & jnp.isfinite(u), jnp.maximum(u, 0.0), 0.0)
    total = jnp.sum(w)
    return jnp.where(total > 0, w / jnp.where(total > 0, total, 1.0), 0.0)


@flax.struct.dataclass
class MetaSet:
    index: jax.Array  # int32 [M] training-set indices
    label: jax.Array  # int32 [M] their TRUE labels (the extra supervision L2R assumes)


def meta_set(true_labels, per_class: int, seed: int) -> MetaSet:
    """L2R's clean meta set: per_class training samples of each class (fewer where a class has fewer), drawn
    without replacement by a numpy generator of (seed, 33), with their true labels; in class order."""
    true_labels = np.asarray(true_labels)
    gen = np.random.default_rng([int(seed), 33])
    index = np.concatenate([gen.choice(np.flatnonzero(true_labels == k), min(per_class, int(np.sum(true_labels == k))),
                                       replace=False) for k in np.unique(true_labels)]).astype(np.int32)
    return MetaSet(index=jnp.asarray(index), label=jnp.asarray(true_labels[index].astype(np.int32)))


# -- Pencil, online ------------------------------------------------------------------------------------------

def pencil_per_sample(logits, labels, label_logits, stage, *, alpha: float, beta: float):
    """Each sample's Pencil loss ([B]) in `stage` (1, 2 or 3; traced): losses.pencil_loss of the sample alone
    (its batch mean over one sample), so the online learner can weight its samples as _batch_loss does."""
    one = lambda lg, y, yl: losses.pencil_loss(lg[None], y[None], yl[None], stage, alpha=alpha, beta=beta)
    return jax.vmap(one)(logits, labels, label_logits)


def pencil_stage(chunk, stage1_chunks: int, stage2_chunks: int):
    """Online Pencil's stage at stream chunk `chunk` (traced): 1 for the first stage1_chunks chunks, 2 for the
    next stage2_chunks, 3 after: the fine-tuning's epoch shares become shares of the stream."""
    return jnp.where(chunk < stage1_chunks, 1, jnp.where(chunk < stage1_chunks + stage2_chunks, 2, 3))


def pencil_label_logits(noisy_labels, num_classes: int, k: float):
    """Every training sample's label logits before any learning: K x its one-hot noisy label (float32 [N, C])."""
    return k * jax.nn.one_hot(jnp.asarray(noisy_labels), num_classes, dtype=jnp.float32)
