"""Typed, frozen settings of each phase, built once from the run's config at the edge (docs/architecture.md);
each type is defined beside its phase (which so never imports this module) and re-exported here.

Below this module nothing reads a ConfigDict: the expert phase gets `ExpertSettings`, the filter
`FilterSettings`, the replay phase `ReplaySettings`, the evaluation `EvalSettings`. The plug-ins
(filter, buffer policy, encoder, evaluation loss) are resolved here, checked on abstract inputs of the
run's shapes before any training, and their identities recorded for the expert cache and checkpoints.
Decisions that depend on the data live here once: the models are built here, and colour jitter is on
for RGB images only (docs/algorithm.md section 4).
"""
import dataclasses
import warnings
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from spr_jax import augment, buffers, filters, losses, models, plugins
# Each phase's settings type lives beside its phase; they are built here, and re-exported under these names.
from spr_jax.evaluate import EvalSettings
from spr_jax.expert_phase import ExpertSettings
from spr_jax.filters import FilterSettings
from spr_jax.online import OnlineSettings
from spr_jax.replay_phase import ReplaySettings
from spr_jax.errors import ConfigError
from spr_jax.errors import first_line

@dataclasses.dataclass(frozen=True)
class RunSettings:
    seed: int
    precision: str  # matmul precision of the SimCLR steps (see compilation.matmul_precision)
    buffer_size: int
    model: Any
    expert: ExpertSettings
    filter: FilterSettings
    replay: ReplaySettings
    eval: EvalSettings
    identities: dict  # plug-in identities (spr_jax.plugins.identity), for cache keys and fingerprints
    online: OnlineSettings = None  # when config.protocol == "online"


class Plugins(NamedTuple):
    filter: Callable
    policy: buffers.BufferPolicy
    encoder: Callable  # the module factory
    loss: Callable
    identities: dict


def apply_deprecations(config: ml_collections.ConfigDict) -> None:
    """`buffer.plain_replay=True` (deprecated) is `filter.kind=none` + `buffer.policy=class_balanced`."""
    if config.buffer.get("plain_replay", False):
        warnings.warn("config.buffer.plain_replay is deprecated and will be removed in the next release; "
                      "use --config.filter.kind=none --config.buffer.policy=class_balanced", DeprecationWarning,
                      stacklevel=2)
        with config.unlocked():
            config.filter.kind = "none"
            config.buffer.policy = "class_balanced"


def resolve_plugins(config) -> Plugins:
    """Imports the four plug-ins named by the config (ConfigError naming the field if one cannot be)."""
    fn = plugins.resolve(config.filter.kind, filters.FILTERS, "config.filter.kind")
    if not callable(fn):
        raise ConfigError(f"config.filter.kind={config.filter.kind!r} is a {type(fn).__name__}, not a function "
                          f"fn(key, features, labels, *, num_classes) -> (clean_p, keep)")
    policy = plugins.resolve(config.buffer.policy, buffers.POLICIES, "config.buffer.policy")
    if not all(callable(getattr(policy, name, None)) for name in ("init", "offer", "sample")):
        raise ConfigError(f"config.buffer.policy={config.buffer.policy!r} is a {type(policy).__name__}; it must "
                          f"be a spr_jax.buffers.BufferPolicy(init, offer, sample)")
    policy = buffers.BufferPolicy(policy.init, policy.offer, policy.sample)
    encoder = plugins.resolve(config.model.encoder, models.ENCODERS, "config.model.encoder")
    if not callable(encoder):
        raise ConfigError(f"config.model.encoder={config.model.encoder!r} is not a flax module factory")
    loss = plugins.resolve(config.eval.loss, losses.EVAL_LOSSES, "config.eval.loss")
    if not callable(loss):
        raise ConfigError(f"config.eval.loss={config.eval.loss!r} is not a function fn(logits, labels) -> loss")
    identities = {"filter": plugins.identity(config.filter.kind, fn),
                  "buffer_policy": plugins.identity(config.buffer.policy, policy),
                  "encoder": plugins.identity(config.model.encoder, encoder),
                  "eval_loss": plugins.identity(config.eval.loss, loss)}
    return Plugins(filter=fn, policy=policy, encoder=encoder, loss=loss, identities=identities)


def build(config, *, image_shape, num_classes: int, chunk_size: int, data_parallel: int = 1,
          resolved: Plugins = None, buffer_size: int = None, num_chunks: int = 0) -> RunSettings:
    """The run's settings; checks every plug-in on abstract inputs of these shapes (no training).
    `buffer_size` is the memory's size when config.buffer.size = 0 (the whole stream); `num_chunks`, the
    stream's length in chunks, is needed by an online Pencil learner (its stages are shares of the stream)."""
    p = resolved or resolve_plugins(config)
    buffer_size = int(buffer_size or config.buffer.size)
    if buffer_size < 1:  # config.buffer.size = 0 needs the stream's length, which only the data knows
        raise ValueError("config.buffer.size = 0 (the whole stream) needs buffer_size=<the stream's length>; "
                         "run_setup.prepare passes it")
    image_shape = tuple(int(d) for d in image_shape)
    model_block = {k: v for k, v in config.model.items() if k not in ("encoder", "proj_dim")}
    try:
        encoder = p.encoder(**plugins.accepted_settings(p.encoder, model_block))
    except Exception as e:
        raise ConfigError(f"config.model.encoder={config.model.encoder!r} cannot be built from config.model "
                          f"({first_line(e)}); an encoder is a flax module factory") from e
    if not isinstance(encoder, nn.Module):
        raise ConfigError(f"config.model.encoder={config.model.encoder!r} returns a {type(encoder).__name__}, "
                          f"not a flax module")
    model = models.SimCLRModel(encoder, int(config.model.proj_dim))
    models.check_encoder(model, image_shape, config.model.encoder)
    classifier = models.Classifier(encoder, num_classes)
    views = view_settings(config, channels=image_shape[-1])

    filter_fn = plugins.bind(p.filter, plugins.accepted_settings(p.filter, config.filter, exclude=("num_classes",)))
    filters.check(filter_fn, chunk_size=chunk_size, feature_dim=int(config.model.proj_dim), num_classes=num_classes)
    policy = plugins.bind_policy(p.policy, config.buffer, num_classes)  # its settings from config.buffer
    buffers.check(policy, buffer_size, num_classes, chunk_size, config.buffer.policy)
    loss_settings = plugins.accepted_settings(p.loss, config.eval)
    if "noise_rate" in plugins.accepted_settings(p.loss, {"noise_rate": 0.0}):  # e.g. JoCoR's forget rate
        loss_settings["noise_rate"] = float(config.noise.rate)
    loss = plugins.bind(p.loss, loss_settings)
    networks = loss_networks(p.loss, config)
    losses.check(loss, num_classes, config.eval.loss, networks)
    l2r = bool(getattr(p.loss, "meta_set", False))  # learning to reweight: a clean meta set of true labels
    label_learning = bool(getattr(p.loss, "label_learning", False))
    pencil = pencil_settings(config) if label_learning and config.protocol != "online" else ()
    if l2r and (networks != 1 or config.noise.kind == "real"):
        raise ConfigError(f"config.eval.loss={config.eval.loss!r} reweights against a clean meta set of true labels"
                          + (" and one network" if networks != 1 else "; with config.noise.kind='real' the true "
                             "labels are unknown: use another loss"))

    ssl = dict(base_lr=float(config.ssl.lr), warmup_epochs=int(config.ssl.warmup_epochs),
               temperature=float(config.ssl.temperature), views=views)
    return RunSettings(
        seed=int(config.seed), precision=config.precision, buffer_size=buffer_size, model=model,
        expert=ExpertSettings(model=model, epochs=int(config.expert.epochs),
                              group_size=expert_group_size(int(config.expert.group_size), model, image_shape,
                                                           chunk_size),
                              **ssl),
        filter=FilterSettings(kind=config.filter.kind, fn=filter_fn, needs_features=filters.needs_features(p.filter),
                              num_classes=num_classes),
        replay=ReplaySettings(epochs=int(config.base.epochs), batch_size=int(config.base.batch_size),
                              policy=policy, num_classes=num_classes, data_parallel=data_parallel, **ssl),
        eval=EvalSettings(classifier=classifier, epochs=int(config.eval.epochs), batch_size=int(config.eval.batch_size),
                          lr=float(config.eval.lr), decay_every=int(config.eval.decay_every),
                          decay=float(config.eval.decay), clip=float(config.eval.clip),
                          test_batch_size=int(config.eval.test_batch_size), loss=loss, networks=networks,
                          l2r=l2r, l2r_meta_per_class=int(config.eval.l2r_meta_per_class) if l2r else 0,
                          pencil=pencil,
                          pretrained_base=config.protocol == "spr" and int(config.base.epochs) > 0),
        identities=p.identities,
        online=online_settings(config, classifier, loss, policy, num_classes, chunk_size, networks, l2r,
                               pencil=online_pencil_settings(config, num_chunks) if label_learning else ()))


def loss_networks(loss, config) -> int:
    """How many networks the learner `loss` trains (its attribute `networks`, default 1)."""
    networks = getattr(loss, "networks", 1)
    if networks not in (1, 2):
        raise ConfigError(f"config.eval.loss={config.eval.loss!r} declares networks={networks!r}; 1 or 2 are supported")
    return networks


def pencil_settings(config, periods: int = None, unit: str = "the fine-tuning's epochs") -> tuple:
    """eval.loss=pencil: (alpha, beta, label lr, K, stage-1 periods, stage-2 periods) from config.eval, the
    stages as shares (rounded) of `periods`: eval.epochs by default, the stream's chunks online."""
    e = config.eval
    if float(e.pencil_stage1) + float(e.pencil_stage2) > 1.0:
        raise ConfigError(f"config.eval.pencil_stage1={e.pencil_stage1} + pencil_stage2={e.pencil_stage2} exceed 1; "
                          f"they are shares of {unit}")
    periods = int(e.epochs) if periods is None else int(periods)
    stage1 = int(round(float(e.pencil_stage1) * periods))
    stage2 = min(int(round(float(e.pencil_stage2) * periods)), periods - stage1)
    return (float(e.pencil_alpha), float(e.pencil_beta), float(e.pencil_lr), float(e.pencil_k), stage1, stage2)


def online_pencil_settings(config, num_chunks: int) -> tuple:
    """An online Pencil learner's settings: its stages are shares of the stream's `num_chunks` chunks."""
    if config.protocol != "online":
        return ()
    if num_chunks < 1:
        raise ValueError("an online Pencil learner needs num_chunks=<the stream's chunks>; run_setup.prepare passes it")
    return pencil_settings(config, num_chunks, "the stream's chunks (online)")


def online_settings(config, classifier, loss, policy, num_classes: int, chunk_size: int, networks: int = 1,
                    l2r: bool = False, pencil: tuple = ()):
    if config.protocol != "online":
        return None
    if chunk_size % int(config.online.stream_batch):
        raise ConfigError(f"config.online.stream_batch={config.online.stream_batch} must divide the chunk size "
                          f"{chunk_size}")
    o = config.online
    if float(o.ewc_lambda) > 0 and networks != 1:
        raise ConfigError(f"config.online.ewc_lambda={o.ewc_lambda} (online EWC) needs a one-network learner; "
                          f"config.eval.loss={config.eval.loss!r} trains {networks}")
    return OnlineSettings(classifier=classifier, lr=float(o.lr), replay=bool(o.replay),
                          stream_batch=int(o.stream_batch), replay_batch=int(o.replay_batch),
                          loss=loss, policy=policy, num_classes=num_classes, networks=networks,
                          retrieval=str(o.retrieval), mir_candidates=int(o.mir_candidates), mir_step=float(o.mir_step),
                          ewc_lambda=float(o.ewc_lambda), ewc_decay=float(o.ewc_decay), l2r=l2r, pencil=pencil)


def expert_group_size(requested: int, model, image_shape, chunk_size: int, device=None) -> int:
    """config.expert.group_size, or for 0 the backend's choice: 1 on a CPU (measured fastest there); on an
    accelerator as many experts as half its memory holds by a rough estimate (parameters with Adam state
    and gradients, plus every layer's activations of the 2D views kept for the backward pass)."""
    if requested > 0:
        return requested
    device = device or jax.local_devices()[0]
    if device.platform == "cpu":
        return 1
    stats = getattr(device, "memory_stats", lambda: None)() or {}
    limit = stats.get("bytes_limit", 16 * 2 ** 30)
    x = jax.ShapeDtypeStruct((2 * chunk_size,) + tuple(image_shape), jnp.float32)
    variables = jax.eval_shape(lambda k, x: model.init(k, x, train=False), jax.random.PRNGKey(0), x)
    params = models.param_count(variables)
    # Activations: a generous 64 floats per input value of the 2D views (a deep net keeps several per pixel).
    per_expert = 4 * (4 * params + 64 * int(np.prod(x.shape)))
    return int(max(1, min(1024, (limit // 2) // per_expert)))


def view_settings(config, channels: int) -> augment.Views:
    """How the SimCLR views are made: colour jitter only for RGB (docs/algorithm.md section 4), the
    augmentation semantics, where the input normalisation happens, how the views are forwarded."""
    if config.ssl.augment not in augment.SEMANTICS:
        raise ConfigError(f"config.ssl.augment={config.ssl.augment!r} is unknown; use one of {augment.SEMANTICS}")
    if config.ssl.view_batches not in ("separate", "joint"):
        raise ConfigError(f"config.ssl.view_batches={config.ssl.view_batches!r}; use 'separate' or 'joint'")
    return augment.Views(color_jitter=channels == 3, semantics=config.ssl.augment,
                         normalize_first=config.model.input_norm if config.ssl.normalize_first else "",
                         separate_batches=config.ssl.view_batches == "separate")
