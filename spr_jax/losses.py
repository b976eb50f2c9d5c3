"""Losses: SimCLR's NT-Xent (docs/algorithm.md section 4), and the learners' losses for fitting a
classifier on a memory (`config.eval.loss`): cross-entropy (SPR's), symmetric cross-entropy (SL) and JoCoR's
joint loss of two networks with small-loss selection."""
import jax
import jax.numpy as jnp

from spr_jax.errors import ConfigError
from spr_jax.errors import first_line


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


def per_sample_cross_entropy(logits, labels):
    """Softmax cross-entropy per sample: logits [..., N, K], int labels [N] -> [..., N]."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    labels = jnp.broadcast_to(labels.astype(jnp.int32), logits.shape[:-1])
    return -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]


def small_loss_selection(per_sample, keep_share):
    """Mask of the floor(keep_share * N) samples of lowest loss (ties broken by position, lower first), at
    least one: the small-loss trick of Co-teaching and JoCoR, where small-loss samples are likely clean."""
    n = per_sample.shape[0]
    count = jnp.clip(jnp.floor(keep_share * n + 1e-6).astype(jnp.int32), 1, n)
    rank = jnp.argsort(jnp.argsort(per_sample, stable=True), stable=True)
    return rank < count


def forget_rate_schedule(epoch, *, forget_rate, gradual_epochs: int = 10, exponent: float = 1.0):
    """JoCoR's schedule of the share of each batch dropped: forget_rate**exponent * e / (T_k - 1) for epochs
    e < T_k (linear from 0), then forget_rate."""
    ramp = forget_rate ** exponent * epoch / max(gradual_epochs - 1, 1)
    return jnp.where(epoch < gradual_epochs, ramp, forget_rate)


def jocor(logits, labels, epoch, *, noise_rate: float, jocor_lambda: float = 0.1, jocor_forget_rate: float = -1.0,
          jocor_gradual_epochs: int = 10, jocor_exponent: float = 1.0):
    """JoCoR (Wei et al., CVPR 2020): two networks trained on one joint loss; a two-network learner.

    logits [2, N, K] of the two networks on one batch, labels [N], `epoch` the fine-tuning epoch (from 0).
    Per sample: (1 - lambda) (CE_1 + CE_2) + lambda (KL(p_1 || p_2) + KL(p_2 || p_1)); the mean is taken
    over the samples of smallest joint loss, a share 1 - forget rate of the batch, where the forget rate
    ramps linearly from 0 to its final value over the first `jocor_gradual_epochs` epochs. The final forget
    rate is the run's noise rate (config.noise.rate) unless `eval.jocor_forget_rate` >= 0 sets it; lambda
    0.1, T_k = 10 and exponent 1 are the paper's defaults.
    """
    rate = noise_rate if jocor_forget_rate < 0 else jocor_forget_rate
    ce = per_sample_cross_entropy(logits, labels)  # [2, N]
    logp = jax.nn.log_softmax(logits, axis=-1)
    p = jnp.exp(logp)
    kl_12 = jnp.sum(p[1] * (logp[1] - logp[0]), axis=-1)  # KL(p_2 || p_1)
    kl_21 = jnp.sum(p[0] * (logp[0] - logp[1]), axis=-1)  # KL(p_1 || p_2)
    joint = (1.0 - jocor_lambda) * (ce[0] + ce[1]) + jocor_lambda * (kl_12 + kl_21)
    keep = small_loss_selection(jax.lax.stop_gradient(joint), 1.0 - forget_rate_schedule(
        epoch, forget_rate=rate, gradual_epochs=jocor_gradual_epochs, exponent=jocor_exponent))
    return jnp.sum(jnp.where(keep, joint, 0.0)) / jnp.sum(keep)


jocor.networks = 2  # the learner trains two networks: called as fn(logits [2, N, K], labels, epoch)


def l2r(logits, labels):
    """Learning to reweight (L2R; Ren et al., ICML 2018): the learner's loss is each sample's cross-entropy,
    weighted per step by spr_jax.online_methods.l2r_weights against a small clean meta set (the extra
    supervision of eval.l2r_meta_per_class true labels per class); alone, as here, the batch's mean
    cross-entropy. A learner recognises it by its attribute `meta_set`."""
    return cross_entropy(logits, labels)


l2r.meta_set = True  # the learner reweights each batch against a clean meta set (evaluate.py, online.py)


def pencil(logits, labels):
    """Pencil (Yi and Wu, CVPR 2019) as a learner's loss: alone, its first stage's cross-entropy. A fine-tuning
    recognises it by its attribute `label_learning` and runs its three stages (pencil_loss)."""
    return cross_entropy(logits, labels)


pencil.label_learning = True  # the fine-tuning learns a label distribution per sample (evaluate.finetune)


def pencil_loss(logits, labels, label_logits, stage, *, alpha: float, beta: float):
    """Pencil's loss of a batch in `stage` (1, 2 or 3; traced): stage 1 the cross-entropy with the noisy labels;
    stage 2 L_c + alpha L_o + beta L_e; stage 3 L_c. With f = softmax(logits) and y_d = softmax(label_logits),
    each sample's learned label distribution: L_c = mean KL(f || y_d), the classification loss; L_o = mean
    cross-entropy of y_d against the noisy one-hot label, the compatibility loss; L_e = mean entropy of f."""
    logf = jax.nn.log_softmax(logits, axis=-1)
    f = jnp.exp(logf)
    log_yd = jax.nn.log_softmax(label_logits, axis=-1)
    onehot = jax.nn.one_hot(labels, logits.shape[-1])
    l_c = jnp.mean(jnp.sum(f * (logf - log_yd), axis=-1))
    l_o = -jnp.mean(jnp.sum(onehot * log_yd, axis=-1))
    l_e = -jnp.mean(jnp.sum(f * logf, axis=-1))
    ce = -jnp.mean(jnp.sum(onehot * logf, axis=-1))
    return jnp.where(stage == 1, ce, jnp.where(stage == 2, l_c + alpha * l_o + beta * l_e, l_c))


# Built-in names of config.eval.loss -> import paths. A loss is fn(logits [B, K], labels [B]) -> scalar; a
# two-network learner (attribute networks = 2, as JoCoR) is fn(logits [2, B, K], labels [B], epoch) -> scalar.
EVAL_LOSSES = {"cross_entropy": "spr_jax.losses:cross_entropy", "sl": "spr_jax.losses:symmetric_cross_entropy",
               "jocor": "spr_jax.losses:jocor", "l2r": "spr_jax.losses:l2r",
               "pencil": "spr_jax.losses:pencil"}


def check(loss, num_classes: int, kind, networks: int = 1) -> None:
    """A loss plug-in runs on abstract logits of the run's classes and returns a scalar (ConfigError naming
    config.eval.loss if not)."""
    labels = jax.ShapeDtypeStruct((4,), jnp.int32)
    if networks == 2:
        shape, args, form = (2, 4, num_classes), (jax.ShapeDtypeStruct((), jnp.int32),), "fn(logits, labels, epoch)"
    else:
        shape, args, form = (4, num_classes), (), "fn(logits, labels)"
    try:
        out = jax.eval_shape(loss, jax.ShapeDtypeStruct(shape, jnp.float32), labels, *args)
    except Exception as e:
        raise ConfigError(f"config.eval.loss={kind!r} fails on logits {list(shape)} ({first_line(e)}); "
                          f"a loss is {form} -> scalar") from e
    if getattr(out, "shape", None) != ():
        raise ConfigError(f"config.eval.loss={kind!r} returns {getattr(out, 'shape', type(out).__name__)}; "
                          f"it must return a scalar")
