"""A run's setup: the config read once into the prepared inputs (data, noisy labels, stream), the run's
settings, its identity and its result-neutral options, every value and plug-in checked before anything is
written. Below this edge nothing reads the config."""
from typing import NamedTuple

import jax

from spr_jax import configlib
from spr_jax import run_identity
from spr_jax import settings as settings_lib
from spr_jax.data import prepare as prepare_lib
from spr_jax.errors import UserError


class RunOptions(NamedTuple):
    """How a run is carried out and recorded; none of it changes a result (config.checkpoint, .cache, .logging)."""
    checkpoint_every: int  # chunks per replay segment, checkpointed after each
    checkpoint_keep: int
    expert_cache: str  # the expert cache folder; "" = WORKDIR/expert_cache
    compile_dir: str  # JAX's persistent compilation cache ("" = off)
    cpu_opt_level: int
    cpu_vector_width: int  # 0: chosen from the CPU (compilation.vector_width)
    cpu_quick_compile: bool  # XLA's quicker-compiling emitters (for runs of seconds)
    warm_up: bool  # compile the replay and evaluation programs while the experts train
    tensorboard: bool
    summary_plot: bool  # WORKDIR/summary.png
    wandb: str  # "" | "offline" | "online"
    wandb_project: str
    profile_segments: int


def run_options(config) -> RunOptions:
    return RunOptions(checkpoint_every=max(1, int(config.checkpoint.every_chunks)),
                      checkpoint_keep=int(config.checkpoint.keep), expert_cache=config.cache.dir,
                      compile_dir=config.cache.compile_dir, cpu_opt_level=config.cache.cpu_opt_level,
                      cpu_vector_width=int(config.cache.get("cpu_vector_width", 0)),
                      cpu_quick_compile=bool(config.cache.get("cpu_quick_compile", False)),
                      warm_up=bool(config.cache.warm_up), tensorboard=bool(config.logging.tensorboard),
                      summary_plot=bool(config.logging.get("summary_plot", True)),
                      wandb=config.logging.wandb, wandb_project=config.logging.wandb_project,
                      profile_segments=int(config.logging.profile_segments))


class Setup(NamedTuple):
    prepared: object  # data.prepare.Prepared: dataset, noisy labels, stream, episodes
    settings: settings_lib.RunSettings
    identity: run_identity.RunIdentity
    options: RunOptions


def setup(config, options: RunOptions = None) -> Setup:
    """Everything a run reads from its config (prepare, then the run's identity; `options`: run_options(config),
    if the caller read them first to set up compilation)."""
    prepared, s = prepare(config)
    return Setup(prepared, s, run_identity.of_run(config, prepared, s.identities), options or run_options(config))


def data_parallel_devices(config) -> int:
    """Local devices the base's self-replay batches are split over (1 = off)."""
    if not config.base.data_parallel:
        return 1
    n = jax.local_device_count()
    half = int(config.base.batch_size) // 2
    if half % n or min(int(config.base.batch_size), int(config.stream.delayed_buffer_size)) % n:
        raise configlib.ConfigError(f"config.base.data_parallel splits batches over {n} devices, but batch sizes "
                         f"{config.base.batch_size} and {half} are not all divisible by {n}")
    return n


def prepare(config):
    """(prepared inputs, run settings): the config read once, every plug-in resolved and checked."""
    settings_lib.apply_deprecations(config)
    configlib.validate(config)
    resolved = settings_lib.resolve_plugins(config)  # before the data: a bad plug-in path fails at once
    prepared = _prepare_data(config)
    offered = prepared.stream.chunks.size
    if int(config.buffer.size) > offered:  # (0 means a memory of the whole stream: the multitask bound)
        raise configlib.ConfigError(
            f"config.buffer.size={config.buffer.size} is larger than the {offered} samples the stream offers, so "
            f"the buffer never fills and self-replay never mixes it in; use at most {offered}")
    run_settings = settings_lib.build(
        config, image_shape=prepared.dataset.train.images.shape[1:], num_classes=prepared.num_classes,
        chunk_size=prepared.stream.chunk_size, data_parallel=data_parallel_devices(config), resolved=resolved,
        buffer_size=int(config.buffer.size) or offered, num_chunks=prepared.stream.num_chunks)
    return prepared, run_settings


def prepare_inputs(config):
    """The data, noisy labels and stream of a config; a bad value or missing data is a UserError."""
    configlib.validate(config)
    return _prepare_data(config)


def _prepare_data(config):  # (of a validated config)
    try:
        return prepare_lib.prepare(config)
    except UserError:
        raise
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:  # everything here comes from user input
        raise UserError(str(e)) from e
