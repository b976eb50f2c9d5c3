"""XLA compilation: JAX's persistent compilation cache, and how long a run spent compiling.

The cache (on by default, `config.cache.compile_dir`, "" switches it off) keeps compiled programs on disk,
so a resumed or repeated run with the same shapes does not compile them again; it changes no result.
"""
import contextlib
import os

import jax
from jax import monitoring

# jax's own event names (jax._src.dispatch): tracing, lowering and XLA compilation of a program.
_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")


def use_persistent_cache(folder: str) -> str:
    """Points JAX's persistent compilation cache at `folder` (~ expanded) unless one is set already (e.g.
    by JAX_COMPILATION_CACHE_DIR); returns the folder in use ("" = none)."""
    current = jax.config.jax_compilation_cache_dir
    if current or not folder:
        return current or ""
    folder = os.path.expanduser(folder)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:  # an unwritable cache only costs compile time
        return ""
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    return folder


@contextlib.contextmanager
def compile_timer():
    """Yields a dict whose "seconds" adds up the tracing, lowering and compiling done inside the block, and
    whose "programs" maps each program's name to its XLA compile seconds (summed over its compilations)."""
    total = {"seconds": 0.0, "programs": {}}

    def listener(event, duration, **kwargs):
        if event in _COMPILE_EVENTS:
            total["seconds"] += duration
        if event == _COMPILE_EVENTS[-1]:
            name = str(kwargs.get("fun_name", "?"))
            total["programs"][name] = total["programs"].get(name, 0.0) + duration

    monitoring.register_event_duration_secs_listener(listener)
    try:
        yield total
    finally:
        monitoring.unregister_event_duration_listener(listener)
