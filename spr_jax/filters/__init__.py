"""Filters: which of a chunk's samples may enter the buffer, and how clean each one looks. This package
holds the seam: the interface (below), its settings (`FilterSettings`), its check (`check`), the built-ins
(`none` here, SPR's self-centered filter in `centrality.py`; the baselines AUM in `aum.py`, INCV in `incv.py`
and k-NN agreement in `knn.py`) and their registry (`FILTERS`).

A filter is a pure, jit-able function on one chunk (docs/extending.md):

    fn(key, features, labels, *, num_classes) -> (clean_p, keep)

features [D, F] float32 (the chunk's expert features: L2-normalised SimCLR projections), labels [D] int32
noisy labels, key a PRNG key of its own for the chunk; clean_p [D] float32 (finite), keep [D] bool. It
runs inside the compiled expert phase (vmapped over chunks), so it must be traceable: jnp, lax, no
Python branching on values. Extra keyword parameters are filled from `config.filter` fields of the same
name (spr_jax.plugins.bind).

A filter that does not look at the features sets the attribute `needs_features = False`; the run then
trains no experts and calls it with zero features.
"""
import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from spr_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class FilterSettings:
    kind: str
    fn: Callable  # fn(key, features, labels, *, num_classes) -> (clean_p, keep), its settings bound
    needs_features: bool  # False: no experts are trained, the filter sees zero features
    num_classes: int


def keep_all(key, features, labels, *, num_classes):
    """Keeps every sample with clean_p 1 (no purification: plain replay's filter)."""
    del key, features, num_classes
    d = labels.shape[0]
    return jnp.ones((d,), jnp.float32), jnp.ones((d,), bool)


keep_all.needs_features = False

# Built-in names of config.filter.kind -> import paths. aum and incv are the filters SPR's paper compares its
# own with, knn the k-NN agreement of examples/knn_filter.py (docs/algorithm.md, "Other filters").
FILTERS = {"centrality": "spr_jax.filters.centrality:purify_chunk", "none": "spr_jax.filters:keep_all",
           "aum": "spr_jax.filters.aum:aum_filter", "incv": "spr_jax.filters.incv:incv_filter",
           "knn": "spr_jax.filters.knn:knn_filter"}

# config.filter's settings of aum, incv and knn. They came after runs had been cached and checkpointed, so
# a run's keys (expert cache, checkpoint fingerprint) hold them only when its filter reads them
# (run_identity): the keys of every other run stay what they were.
BASELINE_SETTINGS = ("aum_steps", "aum_lr", "aum_percentile", "incv_iterations", "incv_steps", "incv_lr",
                     "incv_remove_ratio", "knn_k")


def needs_features(fn) -> bool:
    target = getattr(fn, "func", fn)  # a functools.partial with bound settings
    return bool(getattr(target, "needs_features", True))


def check(fn, *, chunk_size: int, feature_dim: int, num_classes: int, field: str = "config.filter.kind") -> None:
    """Traces `fn` on abstract inputs of one chunk and refuses outputs of the wrong structure, shape or dtype."""
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    features = jax.ShapeDtypeStruct((chunk_size, feature_dim), jnp.float32)
    labels = jax.ShapeDtypeStruct((chunk_size,), jnp.int32)
    try:
        out = jax.eval_shape(lambda k, f, l: fn(k, f, l, num_classes=num_classes), key, features, labels)
    except Exception as e:
        raise ConfigError(f"{field}: the filter fails on a chunk of {chunk_size} samples with {feature_dim}-d "
                          f"features ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); it must "
                          f"be fn(key, features, labels, *, num_classes) -> (clean_p, keep)") from e
    want = f"(clean_p float [{chunk_size}], keep bool [{chunk_size}])"
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise ConfigError(f"{field}: the filter returns {_describe(out)}; it must return {want}")
    clean_p, keep = out
    if clean_p.shape != (chunk_size,) or keep.shape != (chunk_size,):
        raise ConfigError(f"{field}: the filter returns shapes {clean_p.shape} and {keep.shape} for a chunk of "
                          f"{chunk_size}; it must return {want}")
    if not jnp.issubdtype(clean_p.dtype, jnp.floating) or keep.dtype != jnp.bool_:
        raise ConfigError(f"{field}: the filter returns dtypes {clean_p.dtype} and {keep.dtype}; it must "
                          f"return {want}")


def _describe(out) -> str:
    if hasattr(out, "shape"):
        return f"one array {tuple(out.shape)}"
    return type(out).__name__ + (f" of {len(out)}" if isinstance(out, (tuple, list, dict)) else "")
