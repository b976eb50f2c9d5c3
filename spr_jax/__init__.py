"""spr_jax: Self-Purified Replay (SPR) as pure JAX functions.

The public API (docs/api.md), imported on first use so that `import spr_jax` stays light:
    load_config(name_or_path, overrides) -> ConfigDict
    run(config, workdir) -> summary dict
    compare(config, workdir, methods=, rates=, seeds=) -> rows
    read_run(workdir) -> Run(summary, config, chunks, evals, accuracy_matrix)
"""

from spr_jax.version import __version__

_API = ("load_config", "run", "compare", "read_run", "Run")
_ERRORS = ("UserError", "RunStopped", "Diverged", "WriteFailed")
__all__ = list(_API + _ERRORS)


def __getattr__(name):
    if name in _API:
        from spr_jax import api
        return getattr(api, name)
    if name in _ERRORS:
        from spr_jax import errors
        return getattr(errors, name)
    raise AttributeError(f"module 'spr_jax' has no attribute {name!r}")
