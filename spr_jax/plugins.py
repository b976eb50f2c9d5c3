"""Plug-ins: resolving a config's `kind` string to a Python object, and that object's identity.

SPR is one composition of four parts, each chosen in the config (docs/extending.md):

    config.filter.kind     a filter          fn(key, features, labels, *, num_classes) -> (clean_p, keep)
    config.buffer.policy   a buffer policy   buffers.BufferPolicy(init, offer, sample)
    config.model.encoder   an encoder        flax module factory(**settings) -> module(x, train) -> [B, d]
    config.eval.loss       a learner's loss  fn(logits, labels) -> scalar

A value is either a built-in name (a key of that seam's registry, which maps it to an importable path) or
an importable path `package.module:attribute` of the user's own code (on PYTHONPATH). Both are resolved
the same way, by importing the module and reading the attribute at resolution time, so the object used
is always the one the module holds now (a monkeypatched one too).

Extra settings: a plug-in's keyword parameters are filled from its own config block (`config.filter` for
filters, `config.buffer` for the three functions of a buffer policy, `config.model` for encoders, `config.eval`
for losses) by name, when the block has a field of that name; the others keep their defaults. So `def knn(key, features, labels, *, num_classes, k=10)` reads `config.filter.k` if a
config defines it; launch.py, sweeps and load_config declare such a field at its default when an override
names it (config_files.declare_plugin_settings).

Identity: `identity(kind, obj)` is {"kind", "object", "source_sha256"}; the expert cache key and the
checkpoint fingerprint include it, so editing a plug-in's source never silently reuses results of the
old one.
"""
import functools
import hashlib
import importlib
import inspect
import sys
from typing import Any, Mapping

from spr_jax.errors import ConfigError


def resolve(kind: str, registry: Mapping[str, str], field: str) -> Any:
    """The object named by `kind`: a key of `registry` or a `package.module:attribute` path.

    Raises ConfigError naming `field` (e.g. "config.filter.kind") when it cannot be resolved.
    """
    if not isinstance(kind, str) or not kind:
        raise ConfigError(f"{field}={kind!r} must be a built-in name ({', '.join(sorted(registry))}) or a "
                          f"path 'package.module:name'")
    path = registry.get(kind, kind)
    if ":" not in path:
        raise ConfigError(f"{field}={kind!r} is not a built-in ({', '.join(sorted(registry))}); a plug-in of "
                          f"your own is named by its import path, 'package.module:name' (the folder holding "
                          f"the module on PYTHONPATH)")
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"{field}={kind!r}: module {module_name!r} cannot be imported ({e}); put the folder "
                          f"holding it on PYTHONPATH, e.g. PYTHONPATH=plugins python launch.py ...") from e
    except Exception as e:  # the module itself fails: say so in one line, the user's code is at fault
        raise ConfigError(f"{field}={kind!r}: importing {module_name!r} failed with "
                          f"{type(e).__name__}: {e}") from e
    obj = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(module) if not n.startswith("_")]
            raise ConfigError(f"{field}={kind!r}: module {module_name!r} has no attribute {attribute!r} "
                              f"(it has: {', '.join(names[:12])}{' ...' if len(names) > 12 else ''})")
        obj = getattr(obj, part)
    return obj


def _settable_parameters(fn, skip: int = 0) -> dict:
    """{name: inspect.Parameter} of fn's parameters that can be given by keyword, less its first `skip`
    (the interface's own arguments, e.g. a buffer policy's `state, key, candidates`)."""
    try:
        params = list(inspect.signature(fn).parameters.values())[skip:]
    except (TypeError, ValueError):
        return {}
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return {p.name: p for p in params if p.kind in kinds}


def accepted_settings(fn, block: Mapping[str, Any], exclude=(), skip: int = 0) -> dict:
    """The fields of a config block that `fn` takes as keyword parameters (by name), its first `skip`
    parameters apart."""
    return {name: block[name] for name in _settable_parameters(fn, skip) if name in block and name not in exclude}


def setting_defaults(fn, skip: int = 0) -> dict:
    """{name: default} of fn's keyword parameters with a default (not None), its first `skip` apart: the
    settings a config can declare for it (config_files.declare_plugin_settings)."""
    return {name: p.default for name, p in _settable_parameters(fn, skip).items()
            if p.default not in (inspect.Parameter.empty, None)}


def _freeze(value):
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value


@functools.lru_cache(maxsize=None)
def _bound(fn, frozen_settings):
    return functools.partial(fn, **dict(frozen_settings)) if frozen_settings else fn


def bind(fn, settings: Mapping[str, Any]):
    """`fn` with `settings` as keyword arguments; the same object for equal inputs, so jit caches that take
    it as a static argument are reused across runs of one process."""
    return _bound(fn, _freeze(dict(settings)))


# How many leading arguments each function of a buffer policy (spr_jax.buffers.BufferPolicy) gets from the
# interface; keyword parameters after them are settings.
POLICY_ARGUMENTS = {"init": 2, "offer": 3, "sample": 3}


def policy_setting_defaults(policy) -> dict:
    """{name: default} of the settings the policy's functions take (num_classes apart: the run gives it)."""
    out = {}
    for name, skip in POLICY_ARGUMENTS.items():
        out.update(setting_defaults(getattr(policy, name), skip))
    out.pop("num_classes", None)
    return out


def bind_policy(policy, block, num_classes: int):
    """The policy with its settings bound: each function's keyword parameters from `block` (config.buffer)
    by name, and `num_classes` (offer, sample) the run's class count. Equal inputs give equal functions, so
    compiled programs taking the policy are reused."""
    bound = []
    for name, skip in POLICY_ARGUMENTS.items():
        fn = getattr(policy, name)
        settings = accepted_settings(fn, block, exclude=("num_classes",), skip=skip)
        if name != "init" and accepted_settings(fn, {"num_classes": None}, skip=skip):
            settings["num_classes"] = int(num_classes)
        bound.append(bind(fn, settings))
    return type(policy)(*bound)  # a BufferPolicy (a NamedTuple of the three functions)


def _source_hash(obj) -> str:
    """sha256 of the object's own source and of the file that defines it (what changes its behaviour).

    A tuple of functions (a buffer policy) hashes each of its members."""
    if isinstance(obj, tuple):
        return hashlib.sha256("".join(_source_hash(x) if callable(x) else repr(x) for x in obj).encode()).hexdigest()
    target = inspect.unwrap(obj.func if isinstance(obj, functools.partial) else obj)
    h = hashlib.sha256()
    try:
        h.update(inspect.getsource(target).encode())
    except (OSError, TypeError):
        code = getattr(target, "__code__", None)  # defined without a file (exec, a notebook): its bytecode
        h.update(repr((code.co_code, code.co_consts)).encode() if code else repr(target).encode())
    module = sys.modules.get(getattr(target, "__module__", None) or "")
    try:
        h.update(inspect.getsource(module).encode() if module else b"")
    except (OSError, TypeError):
        pass
    return h.hexdigest()


def identity(kind: str, obj) -> dict:
    """What names a plug-in in cache keys and fingerprints: its config value, object and source hash."""
    target = obj.func if isinstance(obj, functools.partial) else obj
    name = f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', type(target).__name__)}"
    return {"kind": kind, "object": name, "source_sha256": _source_hash(obj)}
