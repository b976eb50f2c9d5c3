"""The online protocol (`config.protocol = "online"`): a supervised classifier trained on the stream as it
arrives, for the continual-learning baselines (docs/architecture.md).

Per chunk, the chunk's samples are read in stream batches (`online.stream_batch`, 10 as the stream is read);
each batch is one optimiser step of the learner's loss (`eval.loss`) on the batch, plus, with
`online.replay`, a batch of `online.replay_batch` samples drawn from the buffer policy's memory (experience
replay; nothing while the memory is empty); the batch is then offered to the buffer policy (reservoir
sampling for ER, with `filter.kind=none`). Without replay this is plain fine-tuning on the stream. At each
task boundary the classifier itself is tested (no fine-tuning). Everything is a pure function of the run's
seed, scanned like the replay phase, and checkpointed the same way.

Hyperparameters (ours, stated in the config): Adam at `online.lr` (1e-3), one pass over the stream.
"""
import functools
from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from spr_jax import buffers, evaluate, rng, steps
from spr_jax.replay_phase import TrainData, scan_chunks


class OnlineSettings(NamedTuple):
    classifier: Any
    lr: float
    replay: bool
    stream_batch: int
    replay_batch: int
    loss: Callable
    policy: buffers.BufferPolicy
    num_classes: int


@flax.struct.dataclass
class OnlineState:
    learner: steps.TrainState  # the classifier (encoder + linear head), its BatchNorm statistics, Adam state
    buffer: Any
    chunk: jax.Array
    seed: jax.Array


@functools.lru_cache(maxsize=None)
def optimizer(lr: float):
    """Adam at lr; one object per value (part of the TrainState's static structure)."""
    return optax.adam(lr)


def init_state(s: OnlineSettings, seed: int, input_shape, buffer_size: int) -> OnlineState:
    variables = jax.jit(s.classifier.init, static_argnames=("train",))(
        rng.purpose_key(seed, rng.BASE_INIT), jnp.zeros((2,) + tuple(input_shape), jnp.float32), train=False)
    learner = steps.TrainState.create(apply_fn=None, params=variables["params"], tx=optimizer(s.lr),
                                      batch_stats=variables.get("batch_stats", {}))
    return OnlineState(learner=learner, buffer=s.policy.init(buffer_size, s.num_classes),
                       chunk=jnp.zeros((), jnp.int32), seed=jnp.asarray(seed, jnp.int32))


def _key(state: OnlineState, purpose: int):
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(state.seed), purpose), state.chunk)


def _update(s: OnlineSettings, learner, x, y, weight):
    """One step on the weighted mean loss of (x, y); weight 0 drops a sample (replay from an empty memory)."""
    def loss_fn(params):
        variables = {"params": params, "batch_stats": learner.batch_stats} if learner.batch_stats else {
            "params": params}
        if learner.batch_stats:
            logits, updates = s.classifier.apply(variables, x, train=True, mutable=["batch_stats"])
            stats = updates["batch_stats"]
        else:
            logits, stats = s.classifier.apply(variables, x, train=True), learner.batch_stats
        per_sample = jax.vmap(lambda lg, t: s.loss(lg[None], t[None]))(logits, y)
        return jnp.sum(per_sample * weight) / jnp.maximum(jnp.sum(weight), 1.0), stats

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(learner.params)
    return learner.apply_gradients(grads=grads, batch_stats=stats), loss


def chunk_step(s: OnlineSettings, data: TrainData, state: OnlineState, indices, clean_p, keep):
    """One chunk: a step per stream batch (plus replay), each batch then offered to the memory."""
    n = indices.shape[0] // s.stream_batch
    batches = indices[:n * s.stream_batch].reshape(n, s.stream_batch)
    keys = jax.random.split(_key(state, rng.REPLAY), n)
    keep = jnp.asarray(keep, bool)

    def step(carry, xs):
        learner, buffer = carry
        idx, key, cp, kp = xs
        k_replay, k_offer = jax.random.split(key)
        x = data.images[idx].astype(jnp.float32) / 255.0
        y = data.noisy[idx]
        weight = jnp.ones(s.stream_batch, jnp.float32)
        replayed = jnp.asarray(False)
        if s.replay:
            slots = s.policy.sample(buffer, k_replay, s.replay_batch)
            replayed = jnp.any(buffer.valid)
            slots = jnp.maximum(slots, 0)
            x = jnp.concatenate([x, data.images[buffer.index[slots]].astype(jnp.float32) / 255.0])
            y = jnp.concatenate([y, buffer.label[slots]])
            weight = jnp.concatenate([weight, jnp.full(s.replay_batch, replayed, jnp.float32)])
        learner, loss = _update(s, learner, x, y, weight)
        cands = buffers.Candidates(index=idx, label=data.noisy[idx], corrupt=data.corrupt[idx], clean_p=cp, keep=kp)
        buffer = s.policy.offer(buffer, k_offer, cands)
        return (learner, buffer), (loss, replayed)

    xs = (batches, keys, clean_p[:n * s.stream_batch].reshape(n, -1), keep[:n * s.stream_batch].reshape(n, -1))
    (learner, buffer), (losses, replayed) = jax.lax.scan(step, (state.learner, state.buffer), xs)
    corrupt = data.corrupt[indices]
    metrics = {
        "base_loss": losses[-1], "replayed_buffer": jnp.any(replayed), "kept": keep.sum(),
        "kept_clean": (keep & ~corrupt).sum(), "clean": (~corrupt).sum(), "buffer_valid": buffer.valid.sum(),
        "buffer_clean": (buffer.valid & ~buffer.corrupt).sum(),
        "buffer_counts": buffers.memory_counts(buffer, s.num_classes),
    }
    return state.replace(learner=learner, buffer=buffer, chunk=state.chunk + 1), metrics


@functools.partial(jax.jit, static_argnames=("settings",), donate_argnames=("state",))
def run_chunks(settings: OnlineSettings, state: OnlineState, data: TrainData, chunk_indices, clean_p, keep, active):
    """Scans `chunk_step` over a segment of chunks; rows with active=False are skipped (padding)."""
    def real(state, indices, cp, kp):
        return chunk_step(settings, data, state, indices, cp, kp)

    return scan_chunks(real, state, chunk_indices, clean_p, keep, active)


def evaluation_record(s: OnlineSettings, state: OnlineState, *, test_images, test_labels, episodes, num_classes,
                      noise_known, after_task, test_batch_size) -> dict:
    """Tests the online classifier as it is (eval mode) and returns metrics.jsonl's record."""
    variables = {"params": state.learner.params}
    if state.learner.batch_stats:
        variables["batch_stats"] = state.learner.batch_stats
    preds = np.asarray(evaluate.predict(s.classifier, variables, test_images,
                                        batch_size=min(test_batch_size, test_images.shape[0])))
    buf = jax.device_get(state.buffer)
    return evaluate.record_from_predictions(preds, buf, test_labels=test_labels, episodes=episodes,
                                            num_classes=num_classes, noise_known=noise_known,
                                            after_task=after_task, chunks_processed=int(state.chunk))
