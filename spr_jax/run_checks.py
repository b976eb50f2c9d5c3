"""The checks of a run's own results as it goes: a diverged or rule-breaking replay stopped before anything of
it is written, and the warnings that say when an evaluation's numbers mean little."""
import jax
import jax.numpy as jnp
import numpy as np

from spr_jax.errors import Diverged, UserError


def check_replay(names: dict, s, state, m, n: int, start: int, stream, keep, end: int) -> None:
    """The chunks [start, end) just replayed left a usable state: Diverged (naming the chunk and the field
    to change) if the base's loss or weights are non-finite; UserError if the buffer policy admitted a
    sample the filter did not keep. Run before anything of these chunks is written. `names` holds the
    config values the messages quote ({"ssl.lr": ..., "buffer.policy": ...})."""
    if s.replay.epochs > 0:  # (an untrained base reports a NaN loss by design)
        bad = np.flatnonzero(~np.isfinite(np.asarray(m["base_loss"])[:n]))
        finite = all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(state.base.params))
        if bad.size or not finite:
            c = start + int(bad[0]) if bad.size else end - 1
            raise Diverged(f"diverged: the base's self-supervised training gave a non-finite "
                           f"{'loss' if bad.size else 'weight'} at chunk {c} (config.ssl.lr={names['ssl.lr']}); "
                           f"nothing of it was written",
                           f"lower config.ssl.lr (the published value is 3e-4); the checkpoint before chunk "
                           f"{start} is kept")
    buffer = jax.device_get(state.buffer)
    index, valid = np.asarray(buffer.index), np.asarray(buffer.valid)
    if index.ndim == 2:  # replicated over data-parallel devices
        index, valid = index[0], valid[0]
    if s.buffer_size and valid.any():
        offered = stream.chunks[:end][np.asarray(keep[:end], bool)]
        stray = ~np.isin(index[valid], offered)
        if stray.any():
            raise UserError(f"config.buffer.policy={names['buffer.policy']!r} admitted {int(stray.sum())} samples "
                            f"the filter did not keep (e.g. training sample {int(index[valid][stray][0])}), by "
                            f"chunk {end - 1}",
                            "a buffer policy may only store candidates with keep=True (docs/extending.md)")


def evaluation_warnings(s, record: dict, chunk_records: list, episodes, task: int) -> list:
    """What makes an evaluation's numbers meaningless, in words: a memory too small to fine-tune on, or a
    filter that kept nothing over the task's chunks."""
    out = []
    size = record.get("buffer_size", 0)
    if s.online is None and size < s.eval.batch_size:
        out.append(f"after task {task}: the memory holds {size} samples, fewer than config.eval.batch_size="
                   f"{s.eval.batch_size}, so the classifier was not fine-tuned and its accuracy is chance level")
    per_class = np.asarray(record.get("class_accuracy", []))
    seen = sorted({k for t in range(task + 1) for k in episodes[t]}) if per_class.size else []
    if len(seen) > 2 and np.sum(per_class[seen] == 1.0) == 1 and np.sum(per_class[seen] > 0) == 1:
        k = seen[int(np.argmax(per_class[seen]))]
        out.append(f"after task {task}: the classifier predicts class {k} for every test sample of the classes "
                   f"seen (a collapsed fine-tuning or base; check config.eval.lr and config.ssl.lr)")
    mine = [r for r in chunk_records if r["task"] == task]
    if mine and s.online is None and sum(r["kept"] for r in mine) == 0:
        out.append(f"task {task}: the filter kept no sample in any of its {len(mine)} chunks (check "
                   f"config.ssl.lr and the expert's loss; with noise 0.0 see docs/algorithm.md)")
    return out
