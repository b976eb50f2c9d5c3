"""Evaluation (docs/algorithm.md section 5): a copy of the base encoder with a fresh linear head, fine-tuned
on the buffer (the learner's loss: cross-entropy for SPR, or a two-network learner such as JoCoR; no
augmentation, BatchNorm in train mode, Adam 2e-3 with x0.1 every 300 steps, gradients clipped by value at
0.5, batch 16 with drop_last), then tested in eval mode, and the record of one evaluation (accuracies and
the buffer's purity) for metrics.jsonl.

Pure functions of (base state, buffer contents, key); the buffer's size is a static shape, so a run
compiles the fine-tuning once per distinct buffer fill (in practice: once the buffer is full).
"""
import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from spr_jax import compilation
from spr_jax import losses
from spr_jax.errors import Diverged
from spr_jax import metrics as metrics_lib
from spr_jax import online_methods
from spr_jax import optim
from spr_jax import run_checks
from spr_jax.segment_scan import stack_networks
from spr_jax import simclr


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    classifier: Any  # the evaluation flax module (encoder + linear head)
    epochs: int
    batch_size: int
    lr: float
    decay_every: int
    decay: float
    clip: float
    test_batch_size: int
    loss: Callable  # fn(logits, labels) -> scalar; with networks=2, fn(logits [2, B, K], labels, epoch)
    networks: int = 1  # 2: a two-network learner (JoCoR)
    l2r: bool = False  # learning to reweight (eval.loss=l2r): each batch weighted against a clean meta set
    l2r_meta_per_class: int = 0  # L2R: the meta set's clean samples per class (eval.l2r_meta_per_class)
    # Pencil (eval.loss=pencil): (alpha, beta, label lr, K, stage-1 epochs, stage-2 epochs), else ()
    pencil: tuple = ()
    pretrained_base: bool = True  # False: the base is never trained (GDumb), so a second network starts afresh


def _to_float(images):
    return images.astype(jnp.float32) / 255.0


@functools.lru_cache(maxsize=None)
def _feature_shape(classifier, input_shape: tuple) -> tuple:
    """The encoder's output shape for one input (traced abstractly, once per classifier and input shape)."""
    features, _ = jax.eval_shape(lambda k: classifier.init_with_output(
        k, jnp.zeros((1,) + input_shape, jnp.float32), train=False,
        method=lambda m, x, train: m.encoder(x, train=train)), jax.random.PRNGKey(0))
    return features.shape


@functools.partial(compilation.jit, static_argnames=("classifier",))
def _init_head(classifier, key, features):
    return classifier.init(key, features, method=type(classifier).head_only)


def classifier_variables(classifier, base: simclr.TrainState, key, input_shape):
    """A fresh classifier whose encoder (params and BatchNorm statistics) is a copy of the base's.

    Only the head is initialised, to the values a whole init gives it: the encoder a whole init would draw is
    replaced anyway, and drawing and compiling it op by op cost about 2 s of a CPU run. The head's init is
    one compiled program; its uniform draws are bit-identical to the eager ones (tested)."""
    head = _init_head(classifier, key, jnp.zeros(_feature_shape(classifier, tuple(input_shape)), jnp.float32))
    out = {"params": {"encoder": base.params["encoder"], **head["params"]}}
    if "encoder" in (base.batch_stats or {}):
        out["batch_stats"] = {"encoder": base.batch_stats["encoder"]}
    return out


# The CPU's widest vectors (compilation.wide_vector_options: 512-bit with AVX-512, XLA's default 256
# otherwise): the fine-tuning's small batches leave it bound by Adam's elementwise updates; one fine-tune took
# 1.39 s instead of 1.67 s on an AVX-512 Xeon at 512, with bit-identical weights and a bit-identical whole run
# there (benchmarks/finetune.py); on an AVX2-only EPYC 512 was 20% slower than 256.
_FINETUNE_CPU_OPTIONS = compilation.wide_vector_options


@functools.partial(compilation.jit, cpu_options=_FINETUNE_CPU_OPTIONS,
                   static_argnames=("classifier", "epochs", "batch_size", "lr", "decay_every", "decay", "clip", "loss",
                                    "networks", "pencil"))
def finetune(classifier, variables, images, labels, key, meta_images=None, meta_labels=None, *, epochs, batch_size,
             lr, decay_every, decay, clip, loss=losses.cross_entropy, networks: int = 1, pencil: tuple = ()):
    """Fine-tunes all of the classifier on (images uint8 [n, ...], labels [n]) with `loss(logits, labels)`;
    returns the variables and each epoch's mean training loss (float32 [epochs]).

    networks=2 (a two-network learner such as JoCoR): `variables` holds two classifiers stacked on a leading
    axis, both are applied to every batch and trained together on `loss(logits [2, B, K], labels, epoch)`.
    With a clean meta set (meta_images, meta_labels: L2R) each batch's samples are weighted by
    online_methods.l2r_weights and the step's loss is sum_i w_i loss(sample i).
    With `pencil` = (alpha, beta, label_lr, K, stage-1 epochs, stage-2 epochs) it runs Pencil's three stages
    (losses.pencil_loss): every sample's label logits start at K x its one-hot noisy label and, in stage 2,
    take a gradient step of size label_lr on the batch's loss with each network step.
    """
    tx = optim.finetune_optimizer(lr=lr, decay_every=decay_every, decay=decay, clip=clip)
    params = variables["params"]
    stats = variables.get("batch_stats", {})
    opt_state = tx.init(params)
    n = images.shape[0]
    per_epoch = n // batch_size

    def forward(params, stats, x):
        logits, updates = classifier.apply({"params": params, "batch_stats": stats}, _to_float(x), train=True,
                                           mutable=["batch_stats"])
        return logits, updates.get("batch_stats", stats)

    def loss_fn(params, stats, x, y, e):
        if meta_images is not None:  # L2R: the batch's weights from the parameters before the step
            per_sample = lambda p: jax.vmap(lambda lg, t: loss(lg[None], t[None]))(forward(p, stats, x)[0], y)
            meta_loss = lambda p: losses.cross_entropy(forward(p, stats, meta_images)[0], meta_labels)
            w = jax.lax.stop_gradient(online_methods.l2r_weights(per_sample, meta_loss, params,
                                                                 jnp.ones(y.shape, bool)))
            logits, stats = forward(params, stats, x)
            return jnp.sum(w * jax.vmap(lambda lg, t: loss(lg[None], t[None]))(logits, y)), stats
        if networks == 1:
            logits, stats = forward(params, stats, x)
            return loss(logits, y), stats
        logits, stats = jax.vmap(forward, in_axes=(0, 0, None))(params, stats, x)
        return loss(logits, y, e), stats

    def step(carry, idx, e):
        params, stats, opt_state, label_logits = carry
        if pencil:
            alpha, beta, label_lr, _, stage1, stage2 = pencil
            stage = jnp.where(e < stage1, 1, jnp.where(e < stage1 + stage2, 2, 3))

            def pencil_fn(params, y_logits):
                logits, new_stats = forward(params, stats, images[idx])
                return losses.pencil_loss(logits, labels[idx], y_logits, stage, alpha=alpha, beta=beta), new_stats

            (value, stats), (grads, y_grads) = jax.value_and_grad(pencil_fn, argnums=(0, 1), has_aux=True)(
                params, label_logits[idx])
            label_logits = label_logits.at[idx].add(jnp.where(stage == 2, -label_lr * y_grads, 0.0))
        else:
            (value, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, images[idx], labels[idx],
                                                                              e)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), stats, opt_state, label_logits), value

    def epoch(carry, xs):
        k, e = xs
        order = jax.random.permutation(k, n)[:per_epoch * batch_size].reshape(per_epoch, batch_size)
        carry, step_losses = jax.lax.scan(functools.partial(step, e=e), carry, order)
        return carry, jnp.mean(step_losses)

    label_logits = (pencil[3] * jax.nn.one_hot(labels, classifier.num_classes) if pencil
                    else None)  # Pencil: every sample's learned label distribution, as logits
    (params, stats, _, _), epoch_losses = jax.lax.scan(epoch, (params, stats, opt_state, label_logits),
                                                       (jax.random.split(key, epochs), jnp.arange(epochs)))
    return ({"params": params, "batch_stats": stats} if stats else {"params": params}), epoch_losses


@functools.partial(compilation.jit, static_argnames=("classifier", "batch_size"))
def predict(classifier, variables, images, *, batch_size):
    """Argmax predictions in eval mode, in fixed-size batches (the last one padded)."""
    n = images.shape[0]
    pad = (-n) % batch_size
    batches = jnp.pad(images, ((0, pad),) + ((0, 0),) * (images.ndim - 1)).reshape(
        (-1, batch_size) + images.shape[1:])

    def one(x):
        return jnp.argmax(classifier.apply(variables, _to_float(x), train=False), axis=-1)

    return jax.lax.map(one, batches).reshape(-1)[:n]


def initial_variables(s: EvalSettings, base, k_init, input_shape):
    """The classifier (two, stacked, for a two-network learner) that an evaluation starts from."""
    variables = classifier_variables(s.classifier, base, k_init, input_shape)
    if s.networks == 2:  # the second network: its own head, and its own encoder when the base is untrained
        k_second = jax.random.fold_in(k_init, 1)
        second = (classifier_variables(s.classifier, base, k_second, input_shape) if s.pretrained_base
                  else s.classifier.init(k_second, jnp.zeros((1,) + tuple(input_shape)), train=False))
        variables = stack_networks(variables, second)
    return variables


def _finetune_settings(s: EvalSettings) -> dict:
    return dict(epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, decay_every=s.decay_every, decay=s.decay,
                clip=s.clip, loss=s.loss, networks=s.networks, pencil=s.pencil)


@compilation.jit
def _split(key):
    return jax.random.split(key)


@compilation.jit
def _rows(images, index):
    return images[index]


def evaluate(s: EvalSettings, base, buffer_images, buffer_labels, test_images, key, meta=None):
    """Fine-tunes a copy of the base on the buffer's (images, noisy labels); returns the test predictions
    and the fine-tune's mean loss per epoch (None: the memory holds less than one batch, no fine-tune).
    meta: (images, true labels) of L2R's clean meta set, with s.l2r."""
    k_init, k_tune = _split(key)  # (one compiled program, warmed up, instead of jax's op-by-op compiles)
    variables = initial_variables(s, base, k_init, test_images.shape[1:])
    epoch_losses = None
    if buffer_images.shape[0] >= s.batch_size:
        variables, epoch_losses = finetune(s.classifier, variables, buffer_images, buffer_labels, k_tune,
                                           *(meta if s.l2r else ()), **_finetune_settings(s))
        epoch_losses = [float(x) for x in np.asarray(epoch_losses)]
        if not all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(variables)) or not np.isfinite(
                epoch_losses).all():
            raise Diverged("diverged: fine-tuning the classifier on the memory gave non-finite weights or losses; "
                           "nothing of this evaluation was written",
                           run_checks.likely_fields({"eval.lr": s.lr, "eval.clip": s.clip}, run_checks.FINETUNE_FIELDS)
                           + "; the last checkpoint is kept")
    if s.networks == 2:  # tested: the first network, as JoCoR reports
        variables = jax.tree.map(lambda a: a[0], variables)
    preds = predict(s.classifier, variables, test_images, batch_size=min(s.test_batch_size, test_images.shape[0]))
    return np.asarray(preds), epoch_losses


def warm_up(s: EvalSettings, base, buffer_size: int, test_images, train_images=None) -> None:
    """Compiles an evaluation's programs for a full buffer ahead of the first evaluation (base and
    train_images may be abstract): the fine-tuning and the prediction (ahead-of-time compilation fills the
    cache their jit calls look up), the initialisation of the classifier's head, the key's split and (given
    train_images) the buffer's gather. Changes no result; run_loop calls it in a background thread while the
    experts train."""
    input_shape = tuple(test_images.shape[1:])
    key = jax.random.PRNGKey(0)
    _split.lower(key).compile()
    if train_images is not None:
        _rows.lower(jax.ShapeDtypeStruct(train_images.shape, train_images.dtype),
                    jax.ShapeDtypeStruct((buffer_size,), jnp.int32)).compile()
    variables = jax.eval_shape(lambda b, k: initial_variables(s, b, k, input_shape), base, key)
    features = jax.ShapeDtypeStruct(_feature_shape(s.classifier, input_shape), jnp.float32)
    _init_head.lower(s.classifier, key, features).compile()
    images = jax.ShapeDtypeStruct((buffer_size,) + input_shape, test_images.dtype)
    labels = jax.ShapeDtypeStruct((buffer_size,), jnp.int32)
    if buffer_size >= s.batch_size and not s.l2r:  # (L2R's compiles at its first call)
        finetune.lower(s.classifier, variables, images, labels, key, **_finetune_settings(s)).compile()
    if s.networks == 2:
        variables = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), variables)
    test = jax.ShapeDtypeStruct(test_images.shape, test_images.dtype)
    predict.lower(s.classifier, variables, test, batch_size=min(s.test_batch_size, test_images.shape[0])).compile()


def evaluation_record(s: EvalSettings, *, base, buffer, train_images, test_images, test_labels, episodes,
                      num_classes: int, noise_known: bool, key, after_task: int, chunks_processed: int,
                      meta=None) -> dict:
    """Evaluates the base on the buffer's contents (any policy's state) and returns metrics.jsonl's record;
    `meta`: (images, true labels) of L2R's meta set when s.l2r.

    "accuracy" covers the test samples of every class of the episodes (seen or not yet seen);
    "task_accuracy"[j] those of task j's classes; "class_accuracy"[k] those of class k.
    """
    buf = jax.device_get(buffer)
    valid = np.asarray(buf.valid)
    idx = np.asarray(buf.index)[valid]
    preds, epoch_losses = evaluate(s, base, _rows(train_images, jnp.asarray(idx, jnp.int32)), jnp.asarray(np.asarray(buf.label)[valid]),
                     test_images, key, meta)
    record = record_from_predictions(preds, buf, test_labels=test_labels, episodes=episodes, num_classes=num_classes,
                                     noise_known=noise_known, after_task=after_task, chunks_processed=chunks_processed)
    record["finetune_loss"] = epoch_losses  # the classifier's mean training loss per fine-tune epoch
    return record


def record_from_predictions(preds, buf, *, test_labels, episodes, num_classes, noise_known, after_task,
                            chunks_processed) -> dict:
    """metrics.jsonl's evaluation record from test predictions and the buffer's contents (host arrays)."""
    valid = np.asarray(buf.valid)
    return {
        "type": "eval", "after_task": after_task, "chunks_processed": chunks_processed,
        "accuracy": metrics_lib.overall_accuracy(preds, test_labels, episodes),
        "task_accuracy": metrics_lib.task_accuracies(preds, test_labels, episodes),
        "class_accuracy": metrics_lib.accuracy_by_class(preds, test_labels, num_classes).tolist(),
        "buffer_size": int(valid.sum()),
        "buffer_purity": metrics_lib.purity(np.asarray(buf.corrupt)[valid]) if noise_known else None,
    }
