"""Buffer policies: the replay memory as a pytree with pure `init / offer / sample` (docs/algorithm.md
section 2, docs/extending.md).

A policy is a `BufferPolicy(init, offer, sample)` of pure functions, chosen by `config.buffer.policy`:
  * init(size, num_classes) -> state: a pytree with (at least) the [size] fields index, label, corrupt,
    clean_p and valid: the memory the replay phase samples from and the evaluation fine-tunes on.
  * offer(state, key, candidates) -> state: one chunk's `Candidates` ([D] index, label, corrupt, clean_p,
    keep); only kept ones may enter. Same tree structure and shapes in and out (it runs inside lax.scan).
  * sample(state, key, n) -> int32 [n] slots to replay (with replacement).
Built-ins: `purified` (SPR's class-balanced buffer with lowest-clean_p eviction, below), `class_balanced`
(the same admission with uniform eviction within the chosen class: plain replay's buffer), `reservoir`
(Vitter's algorithm R over every offered sample) and `gdumb` (GDumb's greedy class-balanced sampler).

The purified buffer: a fixed-size, class-balanced reservoir as a pytree.

The buffer holds P slots of training-set indices (not images, so it stays small and the images never leave
the device), each with its noisy label, its corrupt flag, and the clean probability the filter gave it.
`offer` is a pure function (lax.scan over a chunk's candidates, static shapes, no Python control flow on
values), so it runs under jit, inside the replay scan, and under vmap.

Rules (partitioning reservoir sampling with power 0), for each offered sample of class k:
  * n_prev = offers of class k before this one (admitted or not); then n_k = n_prev + 1 is counted.
  * Not full (fewer than P valid slots): store it in the first empty slot.
  * Full: m = P / C with C the number of classes present in the buffer; admit with probability
    min(1, m / n_prev), 1 for a class offered for the first time (n_prev = 0), as the release decides
    admission before counting the offer (admit_u < p). To admit, choose a class j among the present
    classes with probability softmax_j(count_j - m) by inverse CDF over ascending class ids (class_u),
    evict the sample of class j with the lowest clean_p, among equal lowest the OLDEST (the earliest
    stored: `entered` keeps each slot's entry number), and store the new sample in that slot. With
    plain_replay=True the evicted sample is uniform within class j instead: the floor(evict_u * count_j)-th
    slot of class j in slot order.
  * Candidates are offered in the order the filter emits them: grouped by class, ascending class id,
    chunk order within a class (a stable sort inside `offer`); unmasked ones are skipped entirely.

Readings of the rule we had to choose:
  * "Present" means count > 0 in the buffer at the moment of the offer, before the new sample is stored.
    A class that is new to the buffer is therefore not part of C, neither for its own target share m nor
    for the eviction softmax (it has nothing to evict). This matches the reference, whose proportions are
    recomputed after each sample over the classes then in the buffer. Under power 0 every present class
    has the same target m = P / C.
  * A class that was offered before but has since been evicted entirely is offered like any other:
    p = min(1, (P / C) / n_prev) with C not counting it.
  * The i-th OFFERED sample (in emission order) consumes draw i of each uniform array, so draws are
    independent of how masked-out candidates are interleaved in the chunk. Draws that are not needed (not
    full, not admitted) are simply unused.
  * Inverse CDF: j = the first present class whose cumulative probability exceeds class_u; if rounding
    leaves class_u above the last cumulative value, the last present class.
  * Non-finite clean_p (the filter must never produce one, docs/algorithm.md section 3) is stored as 0 for NaN and
    -inf and as 1 for +inf, so the buffer never holds NaN and such a sample is the first evicted. Labels
    outside [0, K) are treated as not offered.

Ties in clean_p are common (a 100-bin lookup averaged over 5 graphs saturates at its maximum); evicting
the oldest of them keeps the class's samples turning over, where a fixed slot order would make one slot
churn while the rest of the class froze.
"""
import functools
from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp

from spr_jax import compilation


@flax.struct.dataclass
class PurifiedBuffer:
    index: jax.Array  # int32 [P] training-set index of each slot (-1 when empty)
    label: jax.Array  # int32 [P] noisy label (-1 when empty)
    corrupt: jax.Array  # bool [P] label != true label (False when unknown or empty)
    clean_p: jax.Array  # float32 [P] the filter's clean probability (0 when empty)
    valid: jax.Array  # bool [P]
    offers: jax.Array  # int32 [K] n_k: how many samples of class k were offered so far
    entered: jax.Array  # int32 [P] entry order of each slot's sample (ties in clean_p evict the oldest)
    entries: jax.Array  # int32 (): samples stored so far (the next entry number)


@flax.struct.dataclass
class OfferDraws:
    """Uniforms in [0, 1) for one chunk's offers; entry i belongs to the i-th offered sample."""
    admit_u: jax.Array  # float32 [n] admission (admit when admit_u < p)
    class_u: jax.Array  # float32 [n] which class to evict from (inverse CDF)
    evict_u: jax.Array  # float32 [n] which sample of that class (plain_replay only)


def init_buffer(size: int, num_classes: int) -> PurifiedBuffer:
    return PurifiedBuffer(
        index=jnp.full((size,), -1, jnp.int32),
        label=jnp.full((size,), -1, jnp.int32),
        corrupt=jnp.zeros((size,), bool),
        clean_p=jnp.zeros((size,), jnp.float32),
        valid=jnp.zeros((size,), bool),
        offers=jnp.zeros((num_classes,), jnp.int32),
        entered=jnp.zeros((size,), jnp.int32),
        entries=jnp.zeros((), jnp.int32),
    )


def capacity(buf: PurifiedBuffer) -> int:
    return buf.valid.shape[-1]


def num_classes(buf: PurifiedBuffer) -> int:
    return buf.offers.shape[-1]


def _counts(label, valid, k):
    # One-hot compare instead of a scatter: empty slots (label -1) match no class.
    return jnp.sum((label[:, None] == jnp.arange(k)[None, :]) & valid[:, None], axis=0, dtype=jnp.int32)


def class_counts(buf: PurifiedBuffer) -> jax.Array:
    """int32 [K]: how many valid slots hold each class."""
    return _counts(buf.label, buf.valid, num_classes(buf))


def size(buf: PurifiedBuffer) -> jax.Array:
    return jnp.sum(buf.valid, dtype=jnp.int32)


def is_full(buf: PurifiedBuffer) -> jax.Array:
    return size(buf) >= capacity(buf)


def purity(buf: PurifiedBuffer) -> jax.Array:
    """Share of valid slots whose label is right (1.0 for an empty buffer: nothing in it is wrong)."""
    n = size(buf)
    right = jnp.sum(buf.valid & ~buf.corrupt)
    return jnp.where(n > 0, right / jnp.maximum(n, 1), 1.0).astype(jnp.float32)


def offer_draws(key, n: int) -> OfferDraws:
    ka, kc, ke = jax.random.split(key, 3)
    return OfferDraws(
        admit_u=jax.random.uniform(ka, (n,), jnp.float32),
        class_u=jax.random.uniform(kc, (n,), jnp.float32),
        evict_u=jax.random.uniform(ke, (n,), jnp.float32),
    )


def _nth_true(flags, n):
    """Slot of the n-th (0-based) True entry of flags (n must be < flags.sum())."""
    return jnp.argmax(flags & (jnp.cumsum(flags) - 1 == n)).astype(jnp.int32)


def _offer_one(carry, x, *, capacity_, k, plain_replay):
    index, label, corrupt, clean_p, valid, offers, counts, entered, entries = carry
    (c_index, c_label, c_corrupt, c_clean, c_mask), (admit_u, class_u, evict_u) = x

    n_prev = offers[c_label]  # earlier offers of the class: the release decides before counting this one
    offers = offers.at[c_label].add(c_mask.astype(jnp.int32))
    full = jnp.sum(counts) >= capacity_

    # Not full: the first empty slot.
    empty_slot = jnp.argmax(~valid).astype(jnp.int32)

    # Full: admission against the target share of the classes present now (before storing).
    present = counts > 0
    m = capacity_ / jnp.maximum(jnp.sum(present), 1).astype(jnp.float32)
    p = jnp.where(n_prev == 0, 1.0, jnp.minimum(1.0, m / jnp.maximum(n_prev, 1).astype(jnp.float32)))
    admit = admit_u < p

    # Class to evict from: softmax over present classes of count - m, inverse CDF in class order.
    logits = jnp.where(present, counts.astype(jnp.float32) - m, -jnp.inf)
    cdf = jnp.cumsum(jax.nn.softmax(logits))
    hit = (cdf > class_u) & present
    last_present = (k - 1 - jnp.argmax(present[::-1])).astype(jnp.int32)
    j = jnp.where(jnp.any(hit), jnp.argmax(hit).astype(jnp.int32), last_present)

    in_j = valid & (label == j)
    if plain_replay:
        count_j = counts[j]
        r = jnp.minimum(jnp.floor(evict_u * count_j).astype(jnp.int32), count_j - 1)
        evict_slot = _nth_true(in_j, r)
    else:
        # The lowest clean_p of class j; among equal lowest, the oldest sample (smallest entry number).
        lowest = jnp.min(jnp.where(in_j, clean_p, jnp.inf))
        tied = in_j & (clean_p == lowest)
        evict_slot = jnp.argmin(jnp.where(tied, entered, jnp.iinfo(jnp.int32).max)).astype(jnp.int32)

    slot = jnp.where(full, evict_slot, empty_slot)
    write = c_mask & (~full | admit)

    old_label, old_valid = label[slot], valid[slot]
    counts = counts.at[old_label].add(-(write & old_valid).astype(jnp.int32))
    counts = counts.at[c_label].add(write.astype(jnp.int32))
    index = index.at[slot].set(jnp.where(write, c_index, index[slot]))
    label = label.at[slot].set(jnp.where(write, c_label, old_label))
    corrupt = corrupt.at[slot].set(jnp.where(write, c_corrupt, corrupt[slot]))
    clean_p = clean_p.at[slot].set(jnp.where(write, c_clean, clean_p[slot]))
    valid = valid.at[slot].set(write | old_valid)
    entered = entered.at[slot].set(jnp.where(write, entries, entered[slot]))
    entries = entries + write.astype(jnp.int32)
    return (index, label, corrupt, clean_p, valid, offers, counts, entered, entries), None


@functools.partial(compilation.jit, static_argnames=("plain_replay",))
def offer(buf: PurifiedBuffer, draws: OfferDraws, index, label, corrupt, clean_p, mask, *,
          plain_replay: bool = False) -> PurifiedBuffer:
    """Offers a chunk's candidates ([D] arrays; mask = kept by the filter) to the buffer, in filter order.

    `draws` needs at least as many entries as there can be offered samples (D): the i-th offered sample
    uses entry i. Returns the new buffer; `buf` is not modified.
    """
    k = num_classes(buf)
    capacity_ = capacity(buf)
    label = jnp.asarray(label, jnp.int32)
    mask = jnp.asarray(mask, bool) & (label >= 0) & (label < k)
    label = jnp.clip(label, 0, k - 1)
    clean_p = jnp.nan_to_num(jnp.asarray(clean_p, jnp.float32), nan=0.0, posinf=1.0, neginf=0.0)

    # The filter's emission order: by class, stable within a class; skipped candidates sort last.
    order = jnp.argsort(jnp.where(mask, label, k), stable=True)
    xs = (jnp.asarray(index, jnp.int32)[order], label[order], jnp.asarray(corrupt, bool)[order],
          clean_p[order], mask[order])
    d = order.shape[0]
    us = (draws.admit_u[:d], draws.class_u[:d], draws.evict_u[:d])

    carry = (buf.index, buf.label, buf.corrupt, buf.clean_p, buf.valid, buf.offers, class_counts(buf),
             buf.entered, buf.entries)
    step = functools.partial(_offer_one, capacity_=capacity_, k=k, plain_replay=plain_replay)
    carry, _ = jax.lax.scan(step, carry, (xs, us))
    index, label, corrupt, clean_p, valid, offers, _, entered, entries = carry
    return PurifiedBuffer(index=index, label=label, corrupt=corrupt, clean_p=clean_p, valid=valid,
                          offers=offers, entered=entered, entries=entries)


def sample_indices(buf: PurifiedBuffer, key, n: int) -> jax.Array:
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


# ---------------------------------------------------------------------------------------- policies

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


def memory_counts(state, num_classes: int) -> jax.Array:
    """int32 [K]: valid slots per class, for any policy's state."""
    return _counts(state.label, state.valid, num_classes)


def memory_is_full(state) -> jax.Array:
    return jnp.all(state.valid)


def _class_balanced_offer(plain_replay: bool):
    def policy_offer(state, key, c: Candidates):
        draws = offer_draws(key, c.index.shape[0])
        return offer(state, draws, c.index, c.label, c.corrupt, c.clean_p, c.keep, plain_replay=plain_replay)
    return policy_offer


PURIFIED = BufferPolicy(init=init_buffer, offer=_class_balanced_offer(False), sample=sample_indices)
CLASS_BALANCED = BufferPolicy(init=init_buffer, offer=_class_balanced_offer(True), sample=sample_indices)


@flax.struct.dataclass
class ReservoirBuffer:
    index: jax.Array  # int32 [P] (-1 when empty)
    label: jax.Array  # int32 [P]
    corrupt: jax.Array  # bool [P]
    clean_p: jax.Array  # float32 [P]
    valid: jax.Array  # bool [P]
    seen: jax.Array  # int32 (): samples offered so far


def _scan_candidates(one, state, c: Candidates, u):
    """lax.scan of one(state, (index, label, corrupt, clean_p, keep, u)) over a chunk's candidates in chunk
    order (clean_p made finite, as in the purified buffer)."""
    clean = jnp.nan_to_num(jnp.asarray(c.clean_p, jnp.float32), nan=0.0, posinf=1.0, neginf=0.0)
    xs = (jnp.asarray(c.index, jnp.int32), jnp.asarray(c.label, jnp.int32), jnp.asarray(c.corrupt, bool), clean,
          jnp.asarray(c.keep, bool), u)
    return jax.lax.scan(one, state, xs)[0]


def reservoir_init(size: int, num_classes: int) -> ReservoirBuffer:
    del num_classes
    b = init_buffer(size, 1)
    return ReservoirBuffer(index=b.index, label=b.label, corrupt=b.corrupt, clean_p=b.clean_p, valid=b.valid,
                           seen=jnp.zeros((), jnp.int32))


def reservoir_offer(state: ReservoirBuffer, key, c: Candidates) -> ReservoirBuffer:
    """Algorithm R (Vitter, 1985) over the kept candidates in chunk order: the t-th offered sample (t counted
    from 0 over the whole stream) fills slot t while t < P, else replaces slot floor(u (t + 1)) if that is
    < P. Every offered sample is then in the buffer with probability P / (samples offered so far)."""
    size = state.valid.shape[0]
    u = jax.random.uniform(key, c.index.shape, jnp.float32)

    def one(s, x):
        index, label, corrupt, clean_p, keep, u = x
        t = s.seen
        j = jnp.where(t < size, t, jnp.floor(u * (t + 1).astype(jnp.float32)).astype(jnp.int32))
        write = keep & (j < size)
        slot = jnp.clip(j, 0, size - 1)
        upd = lambda a, v: a.at[slot].set(jnp.where(write, v, a[slot]))
        s = s.replace(index=upd(s.index, index), label=upd(s.label, label), corrupt=upd(s.corrupt, corrupt),
                      clean_p=upd(s.clean_p, clean_p), valid=upd(s.valid, True),
                      seen=s.seen + keep.astype(jnp.int32))
        return s, None

    return _scan_candidates(one, state, c, u)


RESERVOIR = BufferPolicy(init=reservoir_init, offer=reservoir_offer, sample=sample_indices)


def gdumb_offer(state: PurifiedBuffer, key, c: Candidates) -> PurifiedBuffer:
    """GDumb's greedy class-balanced sampler (Prabhu et al., ECCV 2020) over the kept candidates in chunk order:
    store while there is room; when full, a sample of class y enters only if y holds fewer than P / (classes
    seen so far, y included) slots, replacing a uniformly drawn sample of the largest class (the lowest class
    id among equally large ones). `offers` counts the samples seen per class, as in the purified buffer."""
    k = num_classes(state)
    size = capacity(state)
    u = jax.random.uniform(key, c.index.shape, jnp.float32)

    def one(s, x):
        index, label, corrupt, clean_p, keep, u = x
        label = jnp.clip(label, 0, k - 1)
        offers = s.offers.at[label].add(keep.astype(jnp.int32))
        counts = _counts(s.label, s.valid, k)
        full = jnp.sum(counts) >= size
        seen = jnp.sum(offers > 0)
        room_for_class = counts[label] * seen < size  # counts[y] < P / seen, in integers
        largest = jnp.argmax(counts).astype(jnp.int32)
        in_largest = s.valid & (s.label == largest)
        r = jnp.minimum(jnp.floor(u * counts[largest]).astype(jnp.int32), counts[largest] - 1)
        slot = jnp.where(full, _nth_true(in_largest, r), jnp.argmax(~s.valid).astype(jnp.int32))
        write = keep & (~full | room_for_class)
        upd = lambda a, v: a.at[slot].set(jnp.where(write, v, a[slot]))
        s = s.replace(index=upd(s.index, index), label=upd(s.label, label), corrupt=upd(s.corrupt, corrupt),
                      clean_p=upd(s.clean_p, clean_p), valid=upd(s.valid, True), offers=offers,
                      entered=upd(s.entered, s.entries), entries=s.entries + write.astype(jnp.int32))
        return s, None

    return _scan_candidates(one, state, c, u)


GDUMB = BufferPolicy(init=init_buffer, offer=gdumb_offer, sample=sample_indices)

# Built-in names of config.buffer.policy -> import paths (spr_jax.plugins resolves both the same way).
POLICIES = {"purified": "spr_jax.buffers:PURIFIED", "class_balanced": "spr_jax.buffers:CLASS_BALANCED",
            "reservoir": "spr_jax.buffers:RESERVOIR", "gdumb": "spr_jax.buffers:GDUMB"}
