"""SPR's purified buffer: a fixed-size, class-balanced reservoir as a pytree (and, with uniform eviction,
plain replay's class-balanced buffer).

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

import flax
import jax
import jax.numpy as jnp

from spr_jax import compilation
from spr_jax.buffers import BufferPolicy, Candidates, class_counts, sample_indices, size


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

    carry = (buf.index, buf.label, buf.corrupt, buf.clean_p, buf.valid, buf.offers, class_counts(buf, num_classes(buf)),
             buf.entered, buf.entries)
    step = functools.partial(_offer_one, capacity_=capacity_, k=k, plain_replay=plain_replay)
    carry, _ = jax.lax.scan(step, carry, (xs, us))
    index, label, corrupt, clean_p, valid, offers, _, entered, entries = carry
    return PurifiedBuffer(index=index, label=label, corrupt=corrupt, clean_p=clean_p, valid=valid,
                          offers=offers, entered=entered, entries=entries)


def _class_balanced_offer(plain_replay: bool):
    def policy_offer(state, key, c: Candidates):
        draws = offer_draws(key, c.index.shape[0])
        return offer(state, draws, c.index, c.label, c.corrupt, c.clean_p, c.keep, plain_replay=plain_replay)
    return policy_offer


PURIFIED = BufferPolicy(init=init_buffer, offer=_class_balanced_offer(False), sample=sample_indices)
CLASS_BALANCED = BufferPolicy(init=init_buffer, offer=_class_balanced_offer(True), sample=sample_indices)
