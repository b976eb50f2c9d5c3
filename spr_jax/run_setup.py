"""A run's setup: the config read once into the prepared inputs (data, noisy labels, stream) and the run's
settings, every value and plug-in checked before anything is written."""
import jax

from spr_jax import configlib
from spr_jax import settings as settings_lib
from spr_jax.data import prepare as prepare_lib
from spr_jax.errors import UserError


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
        buffer_size=int(config.buffer.size) or offered)
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
