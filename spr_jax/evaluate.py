"""Evaluation (SPEC.md section 5): a copy of the base encoder with a fresh linear head, fine-tuned on the
purified buffer (cross-entropy, no augmentation, BatchNorm in train mode, Adam 2e-3 with x0.1 every 300
steps, gradients clipped by value at 0.5, batch 16 with drop_last), then tested in eval mode.

Pure functions of (base state, buffer contents, key); the buffer's size is a static shape, so a run
compiles the fine-tuning once per distinct buffer fill (in practice: once the buffer is full).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from spr_jax import losses
from spr_jax import models
from spr_jax import optim
from spr_jax import steps


def _to_float(images):
    return images.astype(jnp.float32) / 255.0


def classifier_variables(classifier, base: steps.TrainState, key, input_shape):
    """A fresh classifier whose encoder (params and BatchNorm statistics) is a copy of the base's."""
    variables = classifier.init(key, jnp.zeros((1,) + tuple(input_shape), jnp.float32), train=False)
    params = dict(variables["params"])
    params["encoder"] = base.params["encoder"]
    out = {"params": params}
    if "batch_stats" in variables:
        stats = dict(variables["batch_stats"])
        stats["encoder"] = base.batch_stats["encoder"]
        out["batch_stats"] = stats
    return out


@functools.partial(jax.jit, static_argnames=("classifier", "epochs", "batch_size", "lr", "decay_every", "decay",
                                             "clip"))
def finetune(classifier, variables, images, labels, key, *, epochs, batch_size, lr, decay_every, decay, clip):
    """Fine-tunes all of the classifier on (images uint8 [n, ...], labels [n]); returns the variables."""
    tx = optim.finetune_optimizer(lr=lr, decay_every=decay_every, decay=decay, clip=clip)
    params = variables["params"]
    stats = variables.get("batch_stats", {})
    opt_state = tx.init(params)
    n = images.shape[0]
    per_epoch = n // batch_size

    def loss_fn(params, stats, x, y):
        logits, updates = classifier.apply({"params": params, "batch_stats": stats}, _to_float(x), train=True,
                                           mutable=["batch_stats"])
        return losses.cross_entropy(logits, y), updates.get("batch_stats", stats)

    def step(carry, idx):
        params, stats, opt_state = carry
        (_, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, images[idx], labels[idx])
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), stats, opt_state), None

    def epoch(carry, k):
        order = jax.random.permutation(k, n)[:per_epoch * batch_size].reshape(per_epoch, batch_size)
        return jax.lax.scan(step, carry, order)[0], None

    (params, stats, _), _ = jax.lax.scan(epoch, (params, stats, opt_state), jax.random.split(key, epochs))
    return {"params": params, "batch_stats": stats} if stats else {"params": params}


@functools.partial(jax.jit, static_argnames=("classifier", "batch_size"))
def predict(classifier, variables, images, *, batch_size):
    """Argmax predictions in eval mode, in fixed-size batches (the last one padded)."""
    n = images.shape[0]
    pad = (-n) % batch_size
    batches = jnp.pad(images, ((0, pad),) + ((0, 0),) * (images.ndim - 1)).reshape(
        (-1, batch_size) + images.shape[1:])

    def one(x):
        return jnp.argmax(classifier.apply(variables, _to_float(x), train=False), axis=-1)

    return jax.lax.map(one, batches).reshape(-1)[:n]


def evaluate(config, num_classes, base, buffer_images, buffer_labels, test_images, test_labels, key):
    """Fine-tunes a copy of the base on the buffer's (images, noisy labels) and returns test predictions."""
    classifier = models.make_classifier(config.model.encoder, num_classes, config.model.input_norm)
    k_init, k_tune = jax.random.split(key)
    variables = classifier_variables(classifier, base, k_init, test_images.shape[1:])
    e = config.eval
    if buffer_images.shape[0] >= e.batch_size:
        variables = finetune(classifier, variables, buffer_images, buffer_labels, k_tune, epochs=e.epochs,
                             batch_size=e.batch_size, lr=e.lr, decay_every=e.decay_every, decay=e.decay,
                             clip=e.clip)
    preds = predict(classifier, variables, test_images, batch_size=min(e.test_batch_size, test_images.shape[0]))
    return np.asarray(preds)
