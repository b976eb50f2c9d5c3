"""What every protocol's replay loop shares: the device-resident training data it indexes into, the scan
over one segment of chunks (padded to a fixed length, so each protocol's segment compiles once), a chunk's
key for each purpose, its metrics record, and the stacking of a two-network learner."""
from typing import NamedTuple

import jax
import jax.numpy as jnp

from spr_jax import buffers
from spr_jax import chunk_diagnostics
from spr_jax import rng


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


def chunk_key(state, purpose: int) -> jax.Array:
    """rng.chunk_key of `purpose` for the chunk a state is at: a function of the state alone (its seed and
    chunk count), so a resumed run draws what an uninterrupted one does."""
    return rng.chunk_key(state.seed, purpose, state.chunk)


def chunk_metrics(loss, replayed, clean_p, keep, corrupt, before, buffer, num_classes: int) -> dict:
    """The per-chunk metrics every protocol reports (outputs.chunk_record turns them into metrics.jsonl's row):
    counts of the filter and the memory, the clean_p diagnostics of the kept samples and the memory's
    admissions and evictions (`before`: the buffer state the chunk started from)."""
    return {
        "base_loss": loss,
        "replayed_buffer": replayed,
        "kept": keep.sum(),
        "kept_clean": (keep & ~corrupt).sum(),
        "clean": (~corrupt).sum(),
        "buffer_valid": buffer.valid.sum(),
        "buffer_clean": (buffer.valid & ~buffer.corrupt).sum(),
        "buffer_counts": buffers.class_counts(buffer, num_classes),
        **chunk_diagnostics.clean_p_diagnostics(clean_p, keep, corrupt),
        **chunk_diagnostics.buffer_turnover(before, buffer),
    }


def stack_networks(first, second):
    """Two networks' variables stacked on a leading axis (a two-network learner such as JoCoR)."""
    return jax.tree.map(lambda a, b: jnp.stack([a, b]), dict(first), dict(second))
