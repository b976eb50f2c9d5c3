"""The replay phase: SPRState through the chunks of the stream, one lax.scan per segment of chunks.

Per chunk (docs/algorithm.md section 3, steps 2 and 4; the expert and the filter, steps 1 and 3, come in
as the chunk's clean_p and keep, computed ahead by the expert phase or inline by `inline_filter`):
1. self-replay: the persistent base trains base_epochs on the chunk; while the buffer is not full every
   batch is min(B, D) chunk samples, once it is full half of B comes from the chunk (shuffled, drop_last)
   and half is drawn with replacement from the buffer (the policy's `sample`);
2. offer: the chunk's candidates go to the buffer policy's `offer`, which admits kept ones (SPR's
   purified buffer: class-balanced, lowest-clean_p eviction).
All randomness of chunk c derives from `rng.chunk_key(seed, purpose, c)`, so a run is a pure function of
its seed, and a segment can be resumed from a checkpointed state.
"""
import functools
from typing import Any, Callable, NamedTuple, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from spr_jax import buffers
from spr_jax.buffers import purified
from spr_jax import compilation
from spr_jax import optim
from spr_jax import rng
from spr_jax import simclr
from spr_jax.segment_scan import TrainData, chunk_key, chunk_outputs, scan_chunks  # (shared with online)
from spr_jax import augment


class ReplaySettings(NamedTuple):
    """Static settings of the replay phase (hashable: a jit static argument)."""
    epochs: int
    batch_size: int
    base_lr: float
    warmup_epochs: int
    temperature: float
    views: augment.Views
    policy: buffers.BufferPolicy
    num_classes: int
    data_parallel: int = 1  # >1: split every self-replay batch over this many local devices


@flax.struct.dataclass
class SPRState:
    base: simclr.TrainState  # the persistent SimCLR base: params, BatchNorm statistics, Adam state
    buffer: Any  # the buffer policy's state (buffers.purified.PurifiedBuffer for SPR)
    chunk: jax.Array  # int32: chunks processed so far (the schedule position and the key index)
    seed: jax.Array  # int32: the run's seed, so the state alone determines every later draw


def data_mesh(devices: int) -> Mesh:
    return Mesh(np.asarray(jax.local_devices()[:devices]), ("data",))


def batch_sharding(devices: int) -> NamedSharding:
    return NamedSharding(data_mesh(devices), P("data"))


def replicate(tree, devices: int):
    """Puts a pytree on every device of the data-parallel mesh (parameters, buffer, training images)."""
    return jax.device_put(tree, NamedSharding(data_mesh(devices), P()))


def init_state(model, seed: int, input_shape, buffer_size: int, num_classes: int,
               policy: buffers.BufferPolicy = purified.PURIFIED) -> SPRState:
    base = simclr.init_state(model, rng.purpose_key(seed, rng.BASE_INIT), input_shape)
    return SPRState(base=base, buffer=policy.init(buffer_size, num_classes),
                    chunk=jnp.zeros((), jnp.int32), seed=jnp.asarray(seed, jnp.int32))


def self_replay(model, s: ReplaySettings, base, chunk_images, buffer, data: TrainData, key, call_index,
                one_step_program: bool = True):
    """base_epochs of contrastive training on the chunk (and the buffer once full).

    Returns (base, loss of the last epoch, whether batches mixed in buffer samples). With base_epochs = 0 the
    base is not trained at all (it keeps its random initialisation: a learner that trains only on the memory,
    e.g. GDumb) and the loss is NaN, which the chunk's record turns into null.

    Before the buffer is full an epoch is n1 = D // min(B, D) batches of the chunk, after it n2 = D // (B / 2)
    mixed batches. When both batch shapes are one (B even and B <= D, as in the bundled configs) the SimCLR
    step appears once in the program: each epoch builds its n1 or n2 batches (padded to n2), then a loop of
    n steps trains on them. Otherwise (or one_step_program=False) the two regimes are two branches, each
    with its own step. Both forms run the same steps on the same batches with the same keys; the single step
    halves the XLA work of compiling the replay program.
    """
    d = chunk_images.shape[0]
    if s.epochs == 0:
        return base, jnp.float32(jnp.nan), buffers.is_full(buffer)
    b1 = min(s.batch_size, d)
    half = s.batch_size // 2
    n1, n2 = d // b1, d // half

    def lr_and_keys(e):
        lr = optim.ssl_lr(s.base_lr, s.epochs, s.warmup_epochs, call_index, e)
        k_batches, k_steps = jax.random.split(jax.random.fold_in(key, e))
        return lr, k_batches, k_steps

    def chunk_batches(k):
        perm = jax.random.permutation(k, d)[:n1 * b1].reshape(n1, b1)
        return chunk_images[perm]

    def mixed_batches(k):
        k_perm, k_buf = jax.random.split(k)
        perm = jax.random.permutation(k_perm, d)[:n2 * half].reshape(n2, half)
        slots = s.policy.sample(buffer, k_buf, n2 * half).reshape(n2, half)
        return jnp.concatenate([chunk_images[perm], data.images[buffer.index[slots]]], axis=1)

    def step(base, images, k, lr):
        if s.data_parallel > 1:  # GSPMD splits the batch; gradients and BatchNorm stats stay global
            images = jax.lax.with_sharding_constraint(images, batch_sharding(s.data_parallel))
        return simclr.contrastive_step(model, base, images, k, lr, views=s.views, temperature=s.temperature)

    full = buffers.is_full(buffer)
    if one_step_program and b1 == 2 * half:
        def pad(a):  # [n1, ...] -> [n2, ...] (n2 >= 2 n1 here); the padding rows are never trained on
            return jnp.concatenate([a, jnp.zeros((n2 - n1,) + a.shape[1:], a.dtype)]) if n2 > n1 else a

        n = jnp.where(full, n2, n1)

        def epoch(base, e):
            lr, k_batches, k_steps = lr_and_keys(e)
            batches = jax.lax.cond(full, mixed_batches, lambda k: pad(chunk_batches(k)), k_batches)
            keys = jnp.where(full, jax.random.split(k_steps, n2), pad(jax.random.split(k_steps, n1)))

            def body(i, carry):
                base, total = carry
                base, loss = step(base, batches[i], keys[i], lr)
                return base, total + loss

            base, total = jax.lax.fori_loop(0, n, body, (base, jnp.float32(0.0)))
            return base, total / n

        base, losses = jax.lax.scan(epoch, base, jnp.arange(s.epochs))
        return base, losses[-1], full

    def run(base, batches_per_epoch, batch_fn):
        def epoch(base, e):
            lr, k_batches, k_steps = lr_and_keys(e)
            xs = (batch_fn(k_batches), jax.random.split(k_steps, batches_per_epoch))
            base, losses = jax.lax.scan(lambda base, x: step(base, *x, lr), base, xs)
            return base, losses.mean()

        base, losses = jax.lax.scan(epoch, base, jnp.arange(s.epochs))
        return base, losses[-1]

    base, loss = jax.lax.cond(full, lambda b: run(b, n2, mixed_batches), lambda b: run(b, n1, chunk_batches), base)
    return base, loss, full


def chunk_step(model, s: ReplaySettings, data: TrainData, state: SPRState, indices, clean_p, keep):
    """One chunk: self-replay of the base, then the chunk's candidates are offered to the buffer policy."""
    base, loss, mixed = self_replay(model, s, state.base, data.images[indices], state.buffer, data,
                                    chunk_key(state, rng.REPLAY), state.chunk)
    corrupt = data.corrupt[indices]
    keep = jnp.asarray(keep, bool)
    candidates = buffers.Candidates(index=indices, label=data.noisy[indices], corrupt=corrupt, clean_p=clean_p,
                                    keep=keep)
    buffer = s.policy.offer(state.buffer, chunk_key(state, rng.BUFFER), candidates)
    return state.replace(base=base, buffer=buffer, chunk=state.chunk + 1), chunk_outputs(loss, mixed, clean_p, keep,
                                                                                          corrupt, buffer)


@functools.partial(compilation.jit, static_argnames=("model", "settings", "inline_filter"), donate_argnames=("state",))
def run_chunks(model, settings: ReplaySettings, state: SPRState, data: TrainData, chunk_indices, clean_p, keep,
               active, inline_filter: Optional[Callable] = None):
    """Scans `chunk_step` over a segment of chunks ([n, D] inputs); rows with active=False are skipped
    (padding, so every segment has one shape and the loop compiles once).

    With `inline_filter(state.chunk, indices) -> (clean_p, keep)` each chunk's expert and filter run
    inside the loop instead of coming precomputed (the reference's order; used to check the two agree).
    """
    def real(state, indices, cp, kp):
        if inline_filter is not None:
            cp, kp = inline_filter(state.chunk, indices)
        return chunk_step(model, settings, data, state, indices, cp, kp)

    return scan_chunks(real, state, chunk_indices, clean_p, keep, active)


def warm_up(model, settings: ReplaySettings, state, data: TrainData, chunk_size: int, piece: int) -> None:
    """Compiles `run_chunks` for segments of `piece` chunks ahead of the replay phase (state and data may be
    abstract; ahead-of-time compilation fills the cache the jit call looks up). Changes no result; see
    learners.ReplayLearner.warm_up."""
    xs = (jax.ShapeDtypeStruct((piece, chunk_size), jnp.int32), jax.ShapeDtypeStruct((piece, chunk_size), jnp.float32),
          jax.ShapeDtypeStruct((piece, chunk_size), jnp.bool_), jax.ShapeDtypeStruct((piece,), jnp.bool_))
    run_chunks.lower(model, settings, state, data, *xs).compile()
