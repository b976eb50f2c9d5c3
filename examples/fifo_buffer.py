"""A buffer policy written outside spr_jax: first in, first out (the most recent kept samples).

    PYTHONPATH=examples python launch.py --config=configs/fashion_mnist_cpu.py \
        --config.buffer.policy=fifo_buffer:FIFO --workdir=workdirs/fifo
"""
import flax
import jax
import jax.numpy as jnp

from spr_jax import buffers


@flax.struct.dataclass
class FifoState:
    index: jax.Array  # int32 [P] training-set index (-1 when empty)
    label: jax.Array  # int32 [P] noisy label
    corrupt: jax.Array  # bool [P] (metrics only)
    clean_p: jax.Array  # float32 [P]
    valid: jax.Array  # bool [P]
    next: jax.Array  # int32 (): the slot the next kept sample overwrites


def init(size, num_classes):
    del num_classes
    return FifoState(index=jnp.full(size, -1, jnp.int32), label=jnp.full(size, -1, jnp.int32),
                     corrupt=jnp.zeros(size, bool), clean_p=jnp.zeros(size, jnp.float32),
                     valid=jnp.zeros(size, bool), next=jnp.zeros((), jnp.int32))


def offer(state, key, c):
    del key  # nothing random
    size = state.valid.shape[0]

    def one(s, x):
        index, label, corrupt, clean_p, keep = x
        slot = s.next
        put = lambda a, v: a.at[slot].set(jnp.where(keep, v, a[slot]))
        s = s.replace(index=put(s.index, index), label=put(s.label, label), corrupt=put(s.corrupt, corrupt),
                      clean_p=put(s.clean_p, clean_p), valid=put(s.valid, True),
                      next=jnp.where(keep, (slot + 1) % size, slot))
        return s, None

    return jax.lax.scan(one, state, (c.index, c.label, c.corrupt, c.clean_p, c.keep))[0]


FIFO = buffers.BufferPolicy(init=init, offer=offer, sample=buffers.sample_indices)
