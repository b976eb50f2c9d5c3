"""The baselines' buffer policies: reservoir sampling over every offered sample (Vitter's algorithm R: the
memory of experience replay) and GDumb's greedy class-balanced sampler."""
import jax
import jax.numpy as jnp
import flax

from spr_jax.buffers import BufferPolicy, Candidates, class_counts, sample_indices
from spr_jax.buffers.purified import PurifiedBuffer, _nth_true, capacity, init_buffer, num_classes


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
        counts = class_counts(s, k)
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
