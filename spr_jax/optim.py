"""Optimisers and learning-rate schedules (docs/algorithm.md sections 4 and 5), as optax transformations.

SSL (expert and base): Adam(3e-4, b1 0.9, b2 0.999, eps 1e-8, no weight decay) whose learning rate is
set per step (`ssl_lr` of the epoch position, through optax.inject_hyperparams), because one schedule
position covers a varying number of steps (the base takes one or two batches per epoch). Evaluation fine-tuning: clip by value, then Adam with
a staircase step decay per step.
"""
import functools

import jax.numpy as jnp
import optax


def ssl_lr(base_lr, epochs, warmup_epochs, call_index, local_epoch):
    """Learning rate of SPR's SSL schedule during epoch `local_epoch` of training call `call_index`.

    The reference builds torch's CosineAnnealingLR(T_max=epochs, eta_min=0) once per model and, inside
    each training call of `epochs` epochs (0-based local epoch e), steps it after epoch e whenever
    e >= warmup_epochs - 1 (10 for the default 11). So the first `warmup_epochs` epochs of a fresh model
    run at base_lr, each call advances the scheduler epochs - (warmup_epochs - 1) times, and since the
    base's scheduler is never reset, during call c (0-based) and local epoch e it has taken
        k = c * max(0, epochs - (warmup_epochs - 1)) + max(0, e - (warmup_epochs - 1))
    steps. CosineAnnealingLR's closed form, which keeps going as a cosine wave beyond k = T, gives
        lr = base_lr * (1 + cos(pi * k / T)) / 2,  T = epochs.
    An expert is call_index 0 (a fresh model per chunk); the base is call_index = its chunk counter.
    Arguments may be Python numbers or (traced) arrays; the result is float32.
    """
    w = warmup_epochs - 1
    per_call = jnp.maximum(epochs - w, 0)
    k = call_index * per_call + jnp.maximum(jnp.asarray(local_epoch) - w, 0)
    k = jnp.asarray(k, jnp.float32)
    # (1 + cos(a)) / 2 = cos(a / 2)^2, which keeps float32 relative accuracy near a = pi (lr near 0).
    return jnp.asarray(base_lr, jnp.float32) * jnp.square(jnp.cos(jnp.pi * k / (2.0 * epochs)))


@functools.lru_cache(maxsize=None)
def ssl_optimizer(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformationExtraArgs:
    """torch.optim.Adam without weight decay, its learning rate a hyperparameter of the state (set it per
    step with `with_lr`). b1, b2 and eps stay Python floats (static), as in plain optax.adam, so the
    arithmetic is the same. One object per setting: it is part of TrainState's static structure, so
    compiled steps are reused across models and runs."""
    return optax.inject_hyperparams(optax.adam, static_args=("b1", "b2", "eps"))(
        learning_rate=0.0, b1=b1, b2=b2, eps=eps)


def with_lr(opt_state, lr):
    """`opt_state` of `ssl_optimizer` with its learning rate set to lr (float32)."""
    hyperparams = dict(opt_state.hyperparams, learning_rate=jnp.asarray(lr, jnp.float32))
    return opt_state._replace(hyperparams=hyperparams)


def finetune_schedule(lr: float = 2e-3, decay_every: int = 300, decay: float = 0.1) -> optax.Schedule:
    """torch StepLR(step_size=decay_every, gamma=decay) stepped after every optimiser step."""
    return optax.exponential_decay(lr, transition_steps=decay_every, decay_rate=decay, staircase=True)


def finetune_optimizer(lr: float = 2e-3, decay_every: int = 300, decay: float = 0.1,
                       clip: float = 0.5) -> optax.GradientTransformation:
    """Evaluation fine-tuning: gradients clipped by value at `clip`, then Adam with a step decay."""
    return optax.chain(optax.clip(clip), optax.adam(finetune_schedule(lr, decay_every, decay)))
