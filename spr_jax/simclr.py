"""Pure contrastive training steps: no I/O, jit-able, vmap-able (the expert phase vmaps them over chunks).

The model is a flax.linen module (static: hashable); everything that changes is the `TrainState` pytree.
The jitted entry points donate the state they are given (pass a state once, use the returned one).
"""
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.training import train_state

from spr_jax import augment, compilation, losses, optim


class TrainState(train_state.TrainState):
    """flax's TrainState (step, params, tx, opt_state) plus BatchNorm running statistics ({} without BN).

    apply_fn is unused (None): steps call `model.apply` of the static model they are given."""
    batch_stats: Any = None


def _variables(params, batch_stats):
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def init_state(model: nn.Module, key, input_shape) -> TrainState:
    """Fresh parameters (PyTorch-like init) and Adam state; input_shape is one image's (H, W, C)."""
    return _init_state(model, key, tuple(int(d) for d in input_shape))


@functools.partial(compilation.jit, static_argnames=("model", "input_shape"))
def _init_state(model: nn.Module, key, input_shape) -> TrainState:
    # Compiled once per (model, shape): eager init runs and compiles op by op, which is slower on CPU.
    variables = model.init(key, jnp.zeros((2,) + input_shape, jnp.float32), train=False)
    return TrainState.create(apply_fn=None, params=variables["params"], tx=optim.ssl_optimizer(),
                             batch_stats=variables.get("batch_stats", {}))


def contrastive_loss(model: nn.Module, params, batch_stats, x, temperature: float = 0.5,
                     separate_batches: bool = True):
    """NT-Xent of the 2B views x (rows b and B + b are one image) in BN train mode. Returns (loss, new
    batch_stats).

    separate_batches (the release): the two views are forwarded as two batches of B, so BatchNorm
    normalises each view with its own statistics and updates its running statistics twice (view a, then
    view b). Otherwise one batch of 2B. A model without BatchNorm gives the same numbers either way and is
    forwarded in one batch.
    """
    b = x.shape[0] // 2
    if not batch_stats:
        _, z = model.apply(_variables(params, batch_stats), x, train=True)
        return losses.nt_xent(z[:b], z[b:], temperature), batch_stats
    if separate_batches:
        (_, z_a), updates = model.apply(_variables(params, batch_stats), x[:b], train=True, mutable=["batch_stats"])
        (_, z_b), updates = model.apply(_variables(params, updates["batch_stats"]), x[b:], train=True,
                                        mutable=["batch_stats"])
        return losses.nt_xent(z_a, z_b, temperature), updates["batch_stats"]
    (_, z), updates = model.apply(_variables(params, batch_stats), x, train=True, mutable=["batch_stats"])
    return losses.nt_xent(z[:b], z[b:], temperature), updates["batch_stats"]


def contrastive_update(model: nn.Module, state: TrainState, x, lr, temperature: float = 0.5,
                       separate_batches: bool = True):
    """One Adam step on the NT-Xent of already augmented views x [2B, H, W, C]."""
    def loss_fn(params):
        return contrastive_loss(model, params, state.batch_stats, x, temperature, separate_batches)

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.replace(opt_state=optim.with_lr(state.opt_state, lr))
    return state.apply_gradients(grads=grads, batch_stats=batch_stats), loss


@functools.partial(compilation.jit, static_argnames=("model", "views", "temperature"), donate_argnames=("state",))
def contrastive_step(model: nn.Module, state: TrainState, images_uint8, key, lr, *,
                     views: augment.Views = augment.Views(), temperature: float = 0.5):
    """Two views of the batch images_uint8 [B, H, W, C] (made and forwarded as `views` says), NT-Xent, Adam
    step. Returns (state, loss).
    """
    x = augment.views(key, images_uint8, spec=views)
    return contrastive_update(model, state, x, lr, temperature, views.separate_batches)


@functools.partial(compilation.jit, static_argnames=("model", "epochs", "warmup_epochs", "views", "temperature",
                                             "on_epoch"), donate_argnames=("state",))
def contrastive_fit(model: nn.Module, state: TrainState, images_uint8, key, *, epochs: int, base_lr,
                    warmup_epochs: int, views: augment.Views = augment.Views(), temperature: float = 0.5,
                    call_index=0, on_epoch=None):
    """`epochs` epochs of one batch of the whole set images_uint8 (the expert's regime), in one lax.scan.

    Epoch e draws its views with fold_in(key, e) and runs at ssl_lr(base_lr, epochs, warmup_epochs,
    call_index, e). `on_epoch(e)`, optional, is a host function called after each epoch (a progress bar;
    it sees only the epoch index and changes nothing). Returns (state, losses [epochs]).
    """
    def epoch(state, e):
        if on_epoch is not None:
            jax.debug.callback(on_epoch, e)
        lr = optim.ssl_lr(base_lr, epochs, warmup_epochs, call_index, e)
        x = augment.views(jax.random.fold_in(key, e), images_uint8, spec=views)
        return contrastive_update(model, state, x, lr, temperature, views.separate_batches)

    return jax.lax.scan(epoch, state, jnp.arange(epochs, dtype=jnp.int32))


@functools.partial(compilation.jit, static_argnames=("model",))
def embed(model: nn.Module, params, batch_stats, images_uint8):
    """L2-normalised projections [N, proj_dim] of un-augmented images, BatchNorm in eval mode."""
    x = images_uint8.astype(jnp.float32) * (1.0 / 255.0)
    _, z = model.apply(_variables(params, batch_stats), x, train=False)
    return z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
