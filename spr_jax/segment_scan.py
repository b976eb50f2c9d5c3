"""What every protocol's replay loop shares: the device-resident training data it indexes into, the scan
over one segment of chunks (padded to a fixed length, so each protocol's segment compiles once), a chunk's
key for each purpose, what a chunk hands back and the metrics the host makes of it, and the stacking of a
two-network learner."""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from spr_jax import chunk_diagnostics
from spr_jax import rng


class TrainData(NamedTuple):
    """Device-resident arrays the loop indexes into (never copied per chunk)."""
    images: jax.Array  # uint8 [N, H, W, C]
    noisy: jax.Array  # int32 [N]
    corrupt: jax.Array  # bool [N]


def scan_chunks(real, state, chunk_indices, clean_p, keep, active):
    """lax.scan of real(state, indices, clean_p, keep) -> (state, outputs) over a segment of chunks; rows with
    active=False are skipped with zero outputs (padding: every segment has one shape, so it compiles once)."""
    traced = {}  # the real branch's output shapes, recorded when the cond traces it

    def recorded(state, indices, cp, kp):
        out = real(state, indices, cp, kp)
        traced["outputs"] = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), out[1])
        return out

    def skip(state, indices, cp, kp):
        shapes = traced.get("outputs") or jax.eval_shape(real, state, indices, cp, kp)[1]
        return state, jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)

    def body(state, xs):
        indices, cp, kp, on = xs
        # Branch 0 is traced first: the skip branch takes its shapes from that trace instead of tracing the
        # whole chunk step a second time (eval_shape).
        return jax.lax.switch(jnp.where(on, 0, 1), (recorded, skip), state, indices, cp, kp)

    return jax.lax.scan(body, state, (chunk_indices, clean_p, keep, active))


def chunk_key(state, purpose: int) -> jax.Array:
    """rng.chunk_key of `purpose` for the chunk a state is at: a function of the state alone (its seed and
    chunk count), so a resumed run draws what an uninterrupted one does."""
    return rng.chunk_key(state.seed, purpose, state.chunk)


class MemoryView(NamedTuple):
    """The memory's slots as the per-chunk metrics need them, for any policy's state."""
    index: jax.Array  # int32 [size], -1 where empty
    label: jax.Array  # int32 [size]
    corrupt: jax.Array  # bool [size]
    valid: jax.Array  # bool [size]


def memory_view(buffer) -> MemoryView:
    return MemoryView(buffer.index, buffer.label, buffer.corrupt, buffer.valid)


def chunk_outputs(loss, replayed, clean_p, keep, corrupt, buffer) -> dict:
    """What a chunk's step hands back (stacked over the segment by the scan): its last loss, whether it
    replayed from memory, its samples' clean_p, keep and noisy flags and the memory after it; the host makes
    the chunk's metrics of these (segment_metrics), so none of that counting is compiled."""
    return {"base_loss": loss, "replayed_buffer": replayed, "clean_p": jnp.asarray(clean_p, jnp.float32),
            "keep": jnp.asarray(keep, bool), "corrupt": corrupt, "memory": memory_view(buffer)}


def chunk_metrics(outputs: dict, before, num_classes: int) -> dict:
    """A chunk's metrics (outputs.chunk_record turns them into metrics.jsonl's row) from its host outputs
    (chunk_outputs) and the memory it started from, `before` (a MemoryView): counts of the filter and the
    memory, the clean_p diagnostics of the kept samples and the memory's admissions and evictions."""
    keep, corrupt, memory = outputs["keep"], outputs["corrupt"], outputs["memory"]
    valid = np.asarray(memory.valid, bool)
    return {
        "base_loss": outputs["base_loss"],
        "replayed_buffer": outputs["replayed_buffer"],
        "kept": int(keep.sum()),
        "kept_clean": int((keep & ~corrupt).sum()),
        "clean": int((~corrupt).sum()),
        "buffer_valid": int(valid.sum()),
        "buffer_clean": int((valid & ~memory.corrupt).sum()),
        "buffer_counts": np.bincount(memory.label[valid], minlength=num_classes),
        **chunk_diagnostics.clean_p_diagnostics(outputs["clean_p"], keep, corrupt),
        **chunk_diagnostics.buffer_turnover(before, memory),
    }


def segment_metrics(outputs: dict, before, active, num_classes: int) -> dict:
    """The per-chunk metrics of a segment, stacked ([n] or [n, ...] numpy arrays, as the scan stacks): from
    the scan's chunk_outputs and the memory before the segment (`before`); padding rows (active False) are
    zeros."""
    outputs = jax.device_get(outputs)
    rows = [None] * len(active)
    for j in np.flatnonzero(np.asarray(active)):
        row = jax.tree.map(lambda a: a[j], outputs)
        rows[j] = chunk_metrics(row, before, num_classes)
        before = row["memory"]
    some = next(r for r in rows if r is not None)
    rows = [{k: np.zeros_like(v) for k, v in some.items()} if r is None else r for r in rows]
    return {k: np.stack([np.asarray(r[k]) for r in rows]) for k in some}


def stack_networks(first, second):
    """Two networks' variables stacked on a leading axis (a two-network learner such as JoCoR)."""
    return jax.tree.map(lambda a, b: jnp.stack([a, b]), dict(first), dict(second))
