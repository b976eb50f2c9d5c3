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
A two-network learner (JoCoR, `eval.loss=jocor`) trains two classifiers on its joint loss of each step's
batch (stream plus replay; while the memory is empty the stream batch stands in for the replay batch); its
`epoch` is the chunk index, so the forget rate ramps over the first chunks of the stream (our choice: the
online protocol has no epochs). The first classifier is tested.
Pencil (`eval.loss=pencil`) learns every training sample's label distribution (its logits a [N, C] table in the
state, K x the one-hot noisy label at first): its three stages are shares of the stream's chunks
(`eval.pencil_stage1` / `pencil_stage2`, as they are shares of the fine-tuning's epochs there), and in the
second stage every sample of a step's batch, streamed or replayed, takes a step of its label logits with the
network's (our choice: the online protocol has no epochs; a sample's learned label goes with it into memory).
"""
import functools
from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from spr_jax import buffers, compilation, evaluate, losses, online_methods, rng, simclr
from spr_jax.segment_scan import TrainData, chunk_key, chunk_outputs, scan_chunks, stack_networks


class OnlineSettings(NamedTuple):
    classifier: Any
    lr: float
    replay: bool
    stream_batch: int
    replay_batch: int
    loss: Callable
    policy: buffers.BufferPolicy
    num_classes: int
    networks: int = 1  # 2: a two-network learner (JoCoR): two classifiers, stacked, trained on its joint loss
    retrieval: str = "random"  # which memory samples are replayed: "random" (the policy's sample: ER) | "mir"
    mir_candidates: int = 50  # MIR: memory samples scored per step (C)
    mir_step: float = 0.1  # MIR: the virtual SGD step's size (alpha)
    ewc_lambda: float = 0.0  # > 0: online EWC with this penalty weight
    ewc_decay: float = 1.0  # online EWC: F* <- decay F* + F_chunk at each chunk's end (gamma)
    l2r: bool = False  # learning to reweight (eval.loss=l2r): each step's samples weighted against the meta set
    pencil: tuple = ()  # Pencil: (alpha, beta, label lr, K, stage-1 chunks, stage-2 chunks), else ()


@flax.struct.dataclass
class OnlineState:
    learner: simclr.TrainState  # the classifier (encoder + linear head), its BatchNorm statistics, Adam state
    buffer: Any
    chunk: jax.Array
    seed: jax.Array
    ewc: Any = None  # online_methods.EWCState with online EWC (ewc_lambda > 0), else None
    meta: Any = None  # online_methods.MetaSet with L2R (its clean meta set), else None
    label_logits: Any = None  # Pencil: every training sample's label logits, float32 [N, C], else None


@functools.lru_cache(maxsize=None)
def optimizer(lr: float):
    """Adam at lr; one object per value (part of the TrainState's static structure)."""
    return optax.adam(lr)


def init_state(s: OnlineSettings, seed: int, input_shape, buffer_size: int, meta=None,
               noisy_labels=None) -> OnlineState:
    """The state of chunk 0; `meta`: L2R's clean meta set (online_methods.meta_set), needed with s.l2r;
    `noisy_labels`: the training set's labels as the stream gives them, needed with s.pencil."""
    if s.l2r and meta is None:
        raise ValueError("an L2R learner needs its meta set: online_methods.meta_set(...)")
    if s.pencil and noisy_labels is None:
        raise ValueError("a Pencil learner needs the training set's noisy labels")
    init = compilation.jit(s.classifier.init, static_argnames=("train",))
    key, x = rng.purpose_key(seed, rng.BASE_INIT), jnp.zeros((2,) + tuple(input_shape), jnp.float32)
    variables = init(key, x, train=False)
    if s.networks == 2:  # the second classifier from its own key, stacked on a leading axis
        second = init(jax.random.fold_in(key, 1), x, train=False)
        variables = stack_networks(variables, second)
    learner = simclr.TrainState.create(apply_fn=None, params=variables["params"], tx=optimizer(s.lr),
                                      batch_stats=variables.get("batch_stats", {}))
    return OnlineState(learner=learner, buffer=s.policy.init(buffer_size, s.num_classes),
                       chunk=jnp.zeros((), jnp.int32), seed=jnp.asarray(seed, jnp.int32),
                       ewc=online_methods.ewc_init(learner.params) if s.ewc_lambda > 0 else None,
                       meta=meta if s.l2r else None,
                       label_logits=(online_methods.pencil_label_logits(noisy_labels, s.num_classes, s.pencil[3])
                                     if s.pencil else None))


def _forward(s: OnlineSettings, params, batch_stats, x):
    """Logits of x in train mode and the updated BatchNorm statistics."""
    if batch_stats:
        logits, updates = s.classifier.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                             mutable=["batch_stats"])
        return logits, updates["batch_stats"]
    return s.classifier.apply({"params": params}, x, train=True), batch_stats


def _per_sample_loss(s: OnlineSettings, params, batch_stats, x, y, epoch):
    """The learner's loss of each sample of (x, y), [B], the batch forwarded as one (train mode); a
    two-network learner's joint loss of each sample alone (its small-loss selection keeps a lone sample)."""
    if s.networks == 2:
        logits, _ = jax.vmap(functools.partial(_forward, s), in_axes=(0, 0, None))(params, batch_stats, x)
        return jax.vmap(lambda lg, t: s.loss(lg[:, None], t[None], epoch), in_axes=(1, 0))(logits, y)
    logits, _ = _forward(s, params, batch_stats, x)
    return jax.vmap(lambda lg, t: s.loss(lg[None], t[None]))(logits, y)


def _batch_loss(s: OnlineSettings, params, batch_stats, x, y, weight, epoch):
    """The step's loss of (x, y) and the updated BatchNorm statistics: the weighted mean loss (weight 0 drops a
    sample: replay from an empty memory); a two-network learner's own joint loss over the batch."""
    if s.networks == 2:
        logits, stats = jax.vmap(functools.partial(_forward, s), in_axes=(0, 0, None))(params, batch_stats, x)
        return s.loss(logits, y, epoch), stats
    logits, stats = _forward(s, params, batch_stats, x)
    per_sample = jax.vmap(lambda lg, t: s.loss(lg[None], t[None]))(logits, y)
    return jnp.sum(per_sample * weight) / jnp.maximum(jnp.sum(weight), 1.0), stats


def _pencil_update(s: OnlineSettings, learner, x, y, weight, label_logits, stage, ewc=None):
    """One step of Pencil's loss (the weighted mean of online_methods.pencil_per_sample) on the batch, plus
    online EWC's penalty when `ewc` is given; in stage 2 the batch's label logits take a step of size label lr
    on the same loss. Returns (learner, loss, the batch's label logits after the step)."""
    alpha, beta, label_lr = s.pencil[:3]

    def loss_fn(params, y_logits):
        logits, stats = _forward(s, params, learner.batch_stats, x)
        per_sample = online_methods.pencil_per_sample(logits, y, y_logits, stage, alpha=alpha, beta=beta)
        loss = jnp.sum(per_sample * weight) / jnp.maximum(jnp.sum(weight), 1.0)
        if ewc is not None:
            loss = loss + online_methods.ewc_penalty(params, ewc, s.ewc_lambda)
        return loss, stats

    (loss, stats), (grads, y_grads) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
        learner.params, label_logits)
    label_logits = label_logits - jnp.where(stage == 2, label_lr, 0.0) * y_grads
    return learner.apply_gradients(grads=grads, batch_stats=stats), loss, label_logits


def _update(s: OnlineSettings, learner, x, y, weight, epoch, ewc=None, meta=None):
    """One step on the batch's loss (_batch_loss; `epoch`: see chunk_step), plus online EWC's penalty when
    `ewc` is given; with `meta` (L2R: the meta set's images and true labels) the samples' weights are L2R's."""
    if meta is not None:
        xm, ym = meta
        per_sample = lambda p: _per_sample_loss(s, p, learner.batch_stats, x, y, epoch)
        meta_loss = lambda p: losses.cross_entropy(_forward(s, p, learner.batch_stats, xm)[0], ym)
        weight = online_methods.l2r_weights(per_sample, meta_loss, learner.params, weight > 0)

    def loss_fn(params):
        loss, stats = _batch_loss(s, params, learner.batch_stats, x, y, weight, epoch)
        if ewc is not None:
            loss = loss + online_methods.ewc_penalty(params, ewc, s.ewc_lambda)
        return loss, stats

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(learner.params)
    return learner.apply_gradients(grads=grads, batch_stats=stats), loss


def _stream_fisher(s: OnlineSettings, learner, x, y):
    """Online EWC: the empirical diagonal Fisher of the stream batch at the parameters before the step. Without
    BatchNorm a sample's gradient is its own: one backward pass per sample, in a scan (vmapping them stacked a
    [B, parameters] array per step, 8x slower on the MLP); with it, each sample's gradient through the batch's
    statistics (online_methods.empirical_fisher: a backward pass of the batch per sample)."""
    if not learner.batch_stats:  # one sample at a time, its squared gradient summed (no [B, params] stack)
        def add_one(total, xy):
            g = jax.grad(lambda p: losses.per_sample_cross_entropy(_forward(s, p, {}, xy[0][None])[0],
                                                                   xy[1][None])[0])(learner.params)
            return jax.tree.map(lambda t, gi: t + jnp.square(gi), total, g), None
        total = jax.lax.scan(add_one, jax.tree.map(jnp.zeros_like, learner.params), (x, y))[0]
        return jax.tree.map(lambda t: t / x.shape[0], total)

    def nll(params):
        logits, _ = _forward(s, params, learner.batch_stats, x)
        return losses.per_sample_cross_entropy(logits, y)
    return online_methods.empirical_fisher(nll, learner.params)


def _images(data: TrainData, index):
    return data.images[index].astype(jnp.float32) / 255.0


def _mir_slots(s: OnlineSettings, data: TrainData, learner, buffer, key, x, y, epoch):
    """MIR's replay: the virtual SGD step on the stream batch (x, y), then the replay_batch candidates of
    largest loss increase among mir_candidates drawn from the memory; returns their slots and which are real."""
    cand, ok = online_methods.mir_candidates(buffer.valid, key, s.mir_candidates)
    xc = _images(data, jnp.maximum(buffer.index[cand], 0))
    yc = jnp.maximum(buffer.label[cand], 0)
    weight = jnp.ones(y.shape[0], jnp.float32)
    grads = jax.grad(lambda p: _batch_loss(s, p, learner.batch_stats, x, y, weight, epoch)[0])(learner.params)
    virtual = online_methods.virtual_step(learner.params, grads, s.mir_step)
    before = _per_sample_loss(s, learner.params, learner.batch_stats, xc, yc, epoch)
    after = _per_sample_loss(s, virtual, learner.batch_stats, xc, yc, epoch)
    top, real = online_methods.mir_select(before, after, ok, s.replay_batch)
    return cand[top], real


def chunk_step(s: OnlineSettings, data: TrainData, state: OnlineState, indices, clean_p, keep):
    """One chunk: a step per stream batch (plus replay), each batch then offered to the memory."""
    n = indices.shape[0] // s.stream_batch
    batches = indices[:n * s.stream_batch].reshape(n, s.stream_batch)
    keys = jax.random.split(chunk_key(state, rng.REPLAY), n)
    keep = jnp.asarray(keep, bool)

    stage = online_methods.pencil_stage(state.chunk, *s.pencil[4:]) if s.pencil else None

    def step(carry, xs):
        learner, buffer, fisher, label_logits = carry
        idx, key, cp, kp = xs
        k_replay, k_offer = jax.random.split(key)
        x = _images(data, idx)
        y = data.noisy[idx]
        if s.ewc_lambda > 0:  # the stream batch's Fisher, before the step changes the parameters
            fisher = jax.tree.map(jnp.add, fisher, _stream_fisher(s, learner, x, y))
        weight = jnp.ones(s.stream_batch, jnp.float32)
        replayed = jnp.asarray(False)
        batch_index = idx  # (Pencil: whose label logits the step learns)
        if s.replay:
            if s.retrieval == "mir":
                slots, real = _mir_slots(s, data, learner, buffer, k_replay, x, y, state.chunk)
            else:
                slots = s.policy.sample(buffer, k_replay, s.replay_batch)
                real = jnp.broadcast_to(jnp.any(buffer.valid), (s.replay_batch,))
            replayed = jnp.any(real)
            slots = jnp.maximum(slots, 0)
            x_replay = _images(data, buffer.index[slots])
            y_replay = buffer.label[slots]
            if s.networks == 2:  # a joint loss has no weights: stream samples stand in for missing memory ones
                take = jnp.arange(s.replay_batch) % s.stream_batch
                x_replay = jnp.where(real.reshape((-1,) + (1,) * (x.ndim - 1)), x_replay, x[take])
                y_replay = jnp.where(real, y_replay, y[take])
            x = jnp.concatenate([x, x_replay])
            y = jnp.concatenate([y, y_replay])
            weight = jnp.concatenate([weight, real.astype(jnp.float32)])
            batch_index = jnp.concatenate([idx, jnp.maximum(buffer.index[slots], 0)])
        if s.pencil:  # the batch's label logits learned with the network; a missing replay sample's left alone
            before = label_logits[batch_index]
            learner, loss, after = _pencil_update(s, learner, x, y, weight, before, stage, state.ewc)
            label_logits = label_logits.at[batch_index].add(jnp.where(weight[:, None] > 0, after - before, 0.0))
        else:
            learner, loss = _update(s, learner, x, y, weight, state.chunk, state.ewc, meta)
        cands = buffers.Candidates(index=idx, label=data.noisy[idx], corrupt=data.corrupt[idx], clean_p=cp, keep=kp)
        buffer = s.policy.offer(buffer, k_offer, cands)
        return (learner, buffer, fisher, label_logits), (loss, replayed)

    fisher = jax.tree.map(jnp.zeros_like, state.learner.params) if s.ewc_lambda > 0 else None
    meta = (_images(data, state.meta.index), state.meta.label) if s.l2r else None
    xs = (batches, keys, clean_p[:n * s.stream_batch].reshape(n, -1), keep[:n * s.stream_batch].reshape(n, -1))
    (learner, buffer, fisher, label_logits), (losses_, replayed) = jax.lax.scan(
        step, (state.learner, state.buffer, fisher, state.label_logits), xs)
    outputs = chunk_outputs(losses_[-1], jnp.any(replayed), clean_p, keep, data.corrupt[indices], buffer)
    ewc = state.ewc
    if s.ewc_lambda > 0:  # the chunk's mean Fisher consolidated, the anchor moved to the chunk's end
        ewc = online_methods.ewc_consolidate(ewc, learner.params, jax.tree.map(lambda f: f / n, fisher),
                                             s.ewc_decay)
    return state.replace(learner=learner, buffer=buffer, chunk=state.chunk + 1, ewc=ewc,
                         label_logits=label_logits), outputs


@functools.partial(compilation.jit, static_argnames=("settings",), donate_argnames=("state",))
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
    if s.networks == 2:  # tested: the first classifier, as JoCoR reports
        variables = jax.tree.map(lambda a: a[0], variables)
    preds = np.asarray(evaluate.predict(s.classifier, variables, test_images,
                                        batch_size=min(test_batch_size, test_images.shape[0])))
    buf = jax.device_get(state.buffer)
    return evaluate.record_from_predictions(preds, buf, test_labels=test_labels, episodes=episodes,
                                            num_classes=num_classes, noise_known=noise_known,
                                            after_task=after_task, chunks_processed=int(state.chunk))
