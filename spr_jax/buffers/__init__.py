"""Buffer policies: the replay memory as a pytree with pure `init / offer / sample` (docs/algorithm.md
section 2, docs/extending.md).

A policy is a `BufferPolicy(init, offer, sample)` of pure functions, chosen by `config.buffer.policy`:
  * init(size, num_classes) -> state: a pytree with (at least) the [size] fields index, label, corrupt,
    clean_p and valid: the memory the replay phase samples from and the evaluation fine-tunes on.
  * offer(state, key, candidates) -> state: one chunk's `Candidates` ([D] index, label, corrupt, clean_p,
    keep); only kept ones may enter. Same tree structure and shapes in and out (it runs inside lax.scan).
  * sample(state, key, n) -> int32 [n] slots to replay (with replacement).
Settings: a keyword parameter after these arguments is filled from `config.buffer`'s field of its name (set
on the command line and in sweeps like any field: `--config.buffer.<name>=...`), and a keyword parameter
`num_classes` of offer or sample receives the run's class count, as init's second argument does
(`spr_jax.plugins.bind_policy`, at the edge).
Built-ins: `purified` (SPR's class-balanced buffer with lowest-clean_p eviction, purified.py), `class_balanced`
(the same admission with uniform eviction within the chosen class: plain replay's buffer), `reservoir`
(Vitter's algorithm R over every offered sample) and `gdumb` (GDumb's greedy class-balanced sampler).

This package holds the seam: the interface (`BufferPolicy`, `Candidates`), the one memory API every policy's
state answers (`class_counts`, `is_full`, `sample_indices`: any state with [size] `label` and `valid`), the
built-ins (SPR's purified buffer and plain replay's class-balanced one in `purified.py`; reservoir and
GDumb in `baselines.py`) and their registry (`POLICIES`).
"""
from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp

from spr_jax.errors import ConfigError
from spr_jax.errors import first_line


@flax.struct.dataclass
class Candidates:
    """One chunk's samples as offered to a buffer policy ([D] each)."""
    index: jax.Array  # int32 training-set index
    label: jax.Array  # int32 noisy label
    corrupt: jax.Array  # bool label != true label (False when unknown): for metrics only, never for decisions
    clean_p: jax.Array  # float32 the filter's clean probability
    keep: jax.Array  # bool kept by the filter: only these may enter


class BufferPolicy(NamedTuple):
    """A replay-memory policy: three pure functions (see the module docstring)."""
    init: Callable[[int, int], Any]
    offer: Callable[[Any, jax.Array, Candidates], Any]
    sample: Callable[[Any, jax.Array, int], jax.Array]


def class_counts(state, num_classes: int) -> jax.Array:
    """int32 [K]: valid slots per class, for any policy's state."""
    # One-hot compare instead of a scatter: empty slots (label -1) match no class.
    return jnp.sum((state.label[:, None] == jnp.arange(num_classes)[None, :]) & state.valid[:, None], axis=0,
                   dtype=jnp.int32)


def size(state) -> jax.Array:
    """int32 (): valid slots."""
    return jnp.sum(state.valid, dtype=jnp.int32)


def is_full(state) -> jax.Array:
    """bool (): every slot holds a sample."""
    return jnp.all(state.valid)


def sample_indices(buf, key, n: int) -> jax.Array:
    """int32 [n]: slots drawn uniformly with replacement among the valid slots (for self-replay).

    Returns slots, not training-set indices: use buf.index[slots] / buf.label[slots]. An empty buffer gives
    -1 everywhere (the caller only replays from a full buffer).
    """
    total = size(buf)
    r = jnp.floor(jax.random.uniform(key, (n,)) * total).astype(jnp.int32)
    r = jnp.minimum(r, total - 1)
    # The r-th valid slot: first position where the running count of valid slots exceeds r.
    slots = jnp.searchsorted(jnp.cumsum(buf.valid.astype(jnp.int32)), r, side="right").astype(jnp.int32)
    return jnp.where(total > 0, slots, -1)


def check(policy: BufferPolicy, size: int, num_classes: int, chunk_size: int, kind) -> None:
    """A policy's init/offer/sample run on abstract inputs of the run's shapes and keep the contract above
    (ConfigError naming config.buffer.policy if not)."""
    field = f"config.buffer.policy={kind!r}"
    d = chunk_size
    cands = Candidates(index=jnp.zeros(d, jnp.int32), label=jnp.zeros(d, jnp.int32),
                               corrupt=jnp.zeros(d, bool), clean_p=jnp.zeros(d, jnp.float32), keep=jnp.ones(d, bool))
    key = jax.random.PRNGKey(0)
    try:
        state = jax.eval_shape(lambda: policy.init(size, num_classes))
        after = jax.eval_shape(policy.offer, state, key, cands)
        slots = jax.eval_shape(lambda st, k: policy.sample(st, k, 7), state, key)
    except Exception as e:
        raise ConfigError(f"{field}: its init/offer/sample fail on a buffer of {size} and a chunk of {d} "
                          f"({first_line(e)})") from e
    for name, dtype in (("index", jnp.int32), ("label", jnp.int32), ("corrupt", jnp.bool_),
                        ("clean_p", jnp.float32), ("valid", jnp.bool_)):
        leaf = getattr(state, name, None)
        if leaf is None or leaf.shape != (size,) or leaf.dtype != dtype:
            raise ConfigError(f"{field}: init's state needs a field {name!r} of shape ({size},) and dtype "
                              f"{jnp.dtype(dtype).name}; got {None if leaf is None else (leaf.shape, leaf.dtype)}")
    if jax.tree.structure(after) != jax.tree.structure(state) or jax.tree.map(
            lambda a, b: (a.shape, a.dtype) != (b.shape, b.dtype), after, state) != jax.tree.map(lambda a: False, state):
        raise ConfigError(f"{field}: offer must return a state of the same structure, shapes and dtypes as it "
                          f"receives (it runs inside lax.scan)")
    if slots.shape != (7,) or not jnp.issubdtype(slots.dtype, jnp.integer):
        raise ConfigError(f"{field}: sample(state, key, n) must return n integer slots; got {slots.shape} "
                          f"{slots.dtype}")


# Built-in names of config.buffer.policy -> import paths (spr_jax.plugins resolves both the same way).
POLICIES = {"purified": "spr_jax.buffers.purified:PURIFIED", "class_balanced": "spr_jax.buffers.purified:CLASS_BALANCED",
            "reservoir": "spr_jax.buffers.baselines:RESERVOIR", "gdumb": "spr_jax.buffers.baselines:GDUMB"}
