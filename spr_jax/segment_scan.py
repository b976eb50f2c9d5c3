"""What every protocol's replay loop shares: the device-resident training data it indexes into, and the
scan over one segment of chunks (padded to a fixed length, so each protocol's segment compiles once)."""
from typing import NamedTuple

import jax
import jax.numpy as jnp


class TrainData(NamedTuple):
    """Device-resident arrays the loop indexes into (never copied per chunk)."""
    images: jax.Array  # uint8 [N, H, W, C]
    noisy: jax.Array  # int32 [N]
    corrupt: jax.Array  # bool [N]


def scan_chunks(real, state, chunk_indices, clean_p, keep, active):
    """lax.scan of real(state, indices, clean_p, keep) -> (state, metrics) over a segment of chunks; rows with
    active=False are skipped with zero metrics (padding: every segment has one shape, so it compiles once)."""
    def skip(state, indices, cp, kp):
        shapes = jax.eval_shape(real, state, indices, cp, kp)[1]
        return state, jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)

    def body(state, xs):
        indices, cp, kp, on = xs
        return jax.lax.cond(on, real, skip, state, indices, cp, kp)

    return jax.lax.scan(body, state, (chunk_indices, clean_p, keep, active))
