"""Run checkpoints: an orbax CheckpointManager under WORKDIR/checkpoints, guarded against mixing runs.

A run's state (any pytree of jax/numpy arrays, e.g. replay_phase.SPRState) is saved with a JSON `meta` (metrics
so far, stream position) every few chunks, so a preempted run resumes where it stopped. What this module
adds to orbax:
- a fingerprint (the config as a dict plus a code version), written once as checkpoints/fingerprint.json;
  a later run whose fingerprint differs is refused (CheckpointMismatchError) instead of resuming from, or
  overwriting, another run's checkpoints;
- a NaN guard: a state with NaN/Inf in a floating leaf is never saved, so a resume cannot start from one;
- integrity: every checkpoint records its tree layout and a per-leaf checksum (exact integer arithmetic,
  so the same number whether a leaf sits on one host or is sharded over many). A step that cannot be
  read, or reads back different bytes, raises CorruptCheckpointError naming the step and the fix; nothing
  is deleted automatically.
Atomicity is orbax's: a step is written to `<step>.orbax-checkpoint-tmp-<t>` and renamed when complete, and
such unfinished folders are never listed as steps, so a crash mid-save leaves the previous step usable.
"""
import errno
import json
import os
import shutil
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from spr_jax import compilation
from spr_jax import files
from spr_jax import parallel
from spr_jax.errors import UserError

FINGERPRINT_FILE = "fingerprint.json"
_FORMAT = 1  # version of the "meta" item's layout below
_MAX_LISTED = 10  # differences shown in an error message


class CheckpointMismatchError(UserError, RuntimeError):
    """The workdir holds checkpoints of a different run (config, code version or state layout)."""


class CorruptCheckpointError(UserError, RuntimeError):
    """A checkpoint step exists but cannot be read back intact."""


def _canonical(obj, what: str, sort_keys: bool = True):
    """JSON round trip: tuples become lists, so a stored and a fresh value compare equal. sort_keys=False keeps
    the dicts' key order (meta: a resume rewrites metrics.jsonl's records from it, byte for byte)."""
    try:
        return json.loads(json.dumps(obj, sort_keys=sort_keys))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} must be JSON-serialisable: {e}") from e


def _flatten(d, prefix="") -> dict:
    """Nested dicts -> {"a.b.c": value}; other values (lists included) are leaves."""
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        if d or not prefix:
            return out
    out[prefix[:-1]] = d
    return out


class _Absent:
    def __repr__(self):
        return "<absent>"


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def fingerprint_differences(old: dict, new: dict) -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for each key that differs; a missing side shows as <absent>."""
    a, b = _flatten(old), _flatten(new)
    missing = _Absent()
    return [(k, a.get(k, missing), b.get(k, missing)) for k in sorted(set(a) | set(b))
            if a.get(k, missing) != b.get(k, missing)]


def _is_key(x) -> bool:
    return jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


# Checksum of a leaf: the sum of its raw 32-bit words times odd position weights, mod 2**32. Integer
# addition is associative, so any reduction order or sharding gives the same number, and odd weights make
# it sensitive to changed, zeroed or swapped words. Two implementations of the same formula: numpy for
# arrays this process can see whole (fast, nothing to compile), jax for arrays sharded across hosts.

def _host_words(x: np.ndarray) -> np.ndarray:
    # jax's dtype canonicalisation (e.g. float64 -> float32 without x64) so both paths hash the same words
    x = np.asarray(x, dtype=jax.dtypes.canonicalize_dtype(x.dtype))
    if np.iscomplexobj(x):
        x = np.stack([x.real, x.imag], axis=-1)
    x = np.ascontiguousarray(x).reshape(-1)
    if x.dtype == np.bool_:
        x = x.view(np.uint8)
    size = x.dtype.itemsize
    if size < 4:
        return x.view({1: np.uint8, 2: np.uint16}[size]).astype(np.uint32)
    return x.view(np.uint32)  # 8-byte dtypes: two words each, low word first (little-endian)


def _host_inspect(x: np.ndarray) -> tuple[bool, int]:
    # jnp.issubdtype: numpy's own does not count bfloat16 (ml_dtypes) as floating
    finite = bool(np.isfinite(x).all()) if jnp.issubdtype(x.dtype, jnp.inexact) else True
    w = _host_words(x)
    weights = np.arange(w.size, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    return finite, int(np.sum(w * weights, dtype=np.uint32))


@compilation.jit
def _device_inspect(x: jax.Array):
    if _is_key(x):
        x = jax.random.key_data(x)
    finite = jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.bool_(True)
    if jnp.iscomplexobj(x):
        x = jnp.stack([x.real, x.imag], axis=-1)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    size = x.dtype.itemsize
    if size < 4:
        w = jax.lax.bitcast_convert_type(x, {1: jnp.uint8, 2: jnp.uint16}[size]).astype(jnp.uint32)
    else:
        w = jax.lax.bitcast_convert_type(x, jnp.uint32)  # 8-byte dtypes gain a trailing axis of 2
    w = w.reshape(-1)
    weights = jnp.arange(w.size, dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
    return finite, jnp.sum(w * weights, dtype=jnp.uint32)


def _inspect(leaves) -> tuple[list[bool], list[int]]:
    """Per leaf: (no NaN/Inf, checksum)."""
    whole = [not isinstance(x, jax.Array) or x.is_fully_addressable for x in leaves]
    # one transfer for everything this process holds whole
    host = iter(jax.device_get([jax.random.key_data(x) if _is_key(x) else x
                                for x, w in zip(leaves, whole) if w]))
    out = [_host_inspect(np.asarray(next(host))) if w else tuple(jax.device_get(_device_inspect(x)))
           for x, w in zip(leaves, whole)]
    return [bool(f) for f, _ in out], [int(s) for _, s in out]


def _paths_and_leaves(state):
    flat, _ = jax.tree_util.tree_flatten_with_path(state)
    return [jax.tree_util.keystr(p) for p, _ in flat], [x for _, x in flat]


def _layout(state) -> list:
    paths, leaves = _paths_and_leaves(state)
    return [[p, list(np.shape(x)), str(x.dtype)] for p, x in zip(paths, leaves)]


def _abstract(x):
    """Restore target without touching the data (the caller's arrays may have been donated)."""
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return x


class RunCheckpointer:
    """Checkpoints of one run under WORKDIR/checkpoints, keeping the newest `keep` steps.

        ckpt = RunCheckpointer(workdir, {"config": config.to_dict(), "code": VERSION})
        restored = ckpt.restore(init_state)      # None on a fresh start
        if restored: state, meta, step = restored
        ...
        ckpt.save(step, state, {"metrics": ..., "position": ...})
        ckpt.close()

    A step is written once: saving an existing step again is a no-op (as in orbax), an older one is an error.
    """

    def __init__(self, workdir: str, fingerprint: dict, keep: int = 3):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        # (absolute: orbax's tensorstore refuses a relative path, as a `--workdir=runs/x` gives)
        self.directory = epath.Path(os.path.abspath(workdir)) / "checkpoints"
        self.fingerprint = _canonical(fingerprint, "fingerprint")
        # What a run killed mid-write left (the workdir is locked, so no other process is writing here): an
        # unfinished orbax step (orbax would warn that its folder exists) and the fingerprint's temporary.
        self._remove_unfinished()
        if parallel.is_primary():
            files.remove_temporaries(self.directory)
        self._check_fingerprint()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        # Explicit handlers (not lazily inferred from the first save's args) so restore works on a fresh
        # manager and each item can be restored on its own.
        self._manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})

    # -- fingerprint ------------------------------------------------------------------------------------
    def _existing_steps(self) -> list[int]:
        if not self.directory.exists():
            return []
        # Finished steps only: orbax's unfinished saves carry a ".orbax-checkpoint-tmp" suffix.
        return sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit() and p.is_dir())

    def _check_fingerprint(self) -> None:
        path = self.directory / FINGERPRINT_FILE
        steps = self._existing_steps()
        if steps:
            where = f"{self.directory} (steps {steps})"
            fix = (f"To resume that run, launch it with its own config and code; to start this one, pass a new "
                   f"--workdir, or delete {self.directory} to start over.")
            if not path.exists():
                raise CheckpointMismatchError(
                    f"{where} holds checkpoints but no {FINGERPRINT_FILE}, so they cannot be matched to this "
                    f"run", hint=fix)
            try:
                stored = json.loads(path.read_text())
            except ValueError as e:
                raise CheckpointMismatchError(f"{path} cannot be parsed ({type(e).__name__})", hint=fix) from e
            diffs = fingerprint_differences(stored, self.fingerprint)
            if diffs:
                shown = "; ".join(f"{k}: {_short(old)} (checkpoints) vs {_short(new)} (this run)"
                                  for k, old, new in diffs[:_MAX_LISTED])
                more = f"; and {len(diffs) - _MAX_LISTED} more" if len(diffs) > _MAX_LISTED else ""
                raise CheckpointMismatchError(
                    f"{where} holds checkpoints of a different run; {len(diffs)} setting(s) differ: {shown}{more}",
                    hint=fix)
            return
        # No finished checkpoint: nothing to protect, this run's fingerprint (re)defines the folder.
        if parallel.is_primary():
            self.directory.mkdir(parents=True, exist_ok=True)
            files.write_atomic(path, json.dumps(self.fingerprint, indent=1, sort_keys=True))
        if jax.process_count() > 1:
            ocp.multihost.sync_global_processes("spr_jax_checkpoint_fingerprint")

    # -- steps ------------------------------------------------------------------------------------------
    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state, meta: dict) -> None:
        """Writes `state` and `meta` as `step` and returns once the step is complete on disk."""
        step = int(step)
        latest = self.latest_step()
        if latest is not None and step < latest:
            raise ValueError(f"cannot save step {step}: the latest checkpoint is already step {latest}")
        if latest == step:
            return
        meta = _canonical(meta, "meta", sort_keys=False)
        paths, leaves = _paths_and_leaves(state)
        finite, sums = _inspect(leaves)
        bad = [p for p, ok in zip(paths, finite) if not ok]
        if bad:
            shown = ", ".join(bad[:_MAX_LISTED]) + (" ..." if len(bad) > _MAX_LISTED else "")
            raise ValueError(f"refusing to checkpoint step {step}: non-finite values (NaN/Inf) in {shown}")
        doc = {"format": _FORMAT, "meta": meta, "layout": _layout(state), "checksums": [int(s) for s in sums]}
        self._check_space(step, leaves)
        try:
            saved = self._manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(doc)))
            self._manager.wait_until_finished()  # the caller may rely on the step once save returns
        except BaseException:
            self._remove_unfinished()  # (a full disk, a signal): no half-written step stays behind
            raise
        if not saved:
            raise RuntimeError(f"orbax declined to save step {step} (existing steps: {self.all_steps()})")

    def _check_space(self, step: int, leaves) -> None:
        """OSError(ENOSPC) before writing if the filesystem cannot hold the step (orbax's writer threads would
        otherwise fail half-way, each with its own traceback)."""
        if not parallel.is_primary():
            return
        words = [jax.random.key_data(x) if _is_key(x) else x for x in leaves]
        need = sum(int(np.prod(np.shape(x))) * np.dtype(x.dtype).itemsize for x in words) + 2 ** 20
        free = shutil.disk_usage(str(self.directory)).free
        if free < need:
            raise OSError(errno.ENOSPC, f"No space left on device (checkpoint step {step} needs about "
                          f"{need / 2 ** 20:.1f} MiB, {free / 2 ** 20:.1f} MiB free)", str(self.directory / str(step)))

    def _remove_unfinished(self) -> None:
        if not parallel.is_primary():
            return
        for path in self.directory.glob("*.orbax-checkpoint-tmp*"):
            shutil.rmtree(str(path), ignore_errors=True)

    def latest_meta(self):
        """The meta dict of the latest step (no state read); None if there is none."""
        step = self.latest_step()
        if step is None:
            return None
        try:
            doc = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
            if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
                raise ValueError(f"unexpected meta item: {str(doc)[:200]}")
        except Exception as e:
            raise CorruptCheckpointError(
                f"checkpoint step {step} cannot be read (its metadata: {type(e).__name__})",
                hint=f"Delete {self.directory / str(step)} to fall back to the previous checkpoint "
                     f"(steps: {self.all_steps()}), or start over with a new --workdir.") from e
        return doc["meta"]

    def restore(self, target_state):
        """(state, meta, step) of the latest step, shaped like `target_state`; None if there is none."""
        step = self.latest_step()
        if step is None:
            return None
        step_dir = self.directory / str(step)
        fix = (f"Delete {step_dir} to fall back to the previous checkpoint "
               f"(steps: {self.all_steps()}), or start over with a new --workdir.")
        try:
            doc = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
            if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
                raise ValueError(f"unexpected meta item: {str(doc)[:200]}")
        except Exception as e:
            raise CorruptCheckpointError(f"checkpoint step {step} cannot be read (its metadata: {type(e).__name__})",
                                         hint=fix) from e
        expected = _layout(target_state)
        if doc["layout"] != expected:
            stored = {p: (s, d) for p, s, d in doc["layout"]}
            want = {p: (s, d) for p, s, d in expected}
            diffs = [f"{p}: {stored.get(p, '<absent>')} (checkpoint) vs {want.get(p, '<absent>')} (this run)"
                     for p in sorted(set(stored) | set(want)) if stored.get(p) != want.get(p)]
            raise CheckpointMismatchError(
                f"checkpoint step {step} in {self.directory} has a different state layout (shape, dtype) "
                f"than this run expects: " + "; ".join(diffs[:_MAX_LISTED]),
                hint=f"Start this run with a new --workdir, or delete {self.directory} to start over.")
        try:
            target = jax.tree.map(_abstract, target_state)
            state = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target))).state
            _, leaves = _paths_and_leaves(state)
            sums = _inspect(leaves)[1]
        except Exception as e:
            raise CorruptCheckpointError(f"checkpoint step {step} cannot be read (its state: {type(e).__name__})",
                                         hint=fix) from e
        if sums != doc["checksums"]:
            paths, _ = _paths_and_leaves(state)
            bad = [p for p, a, b in zip(paths, sums, doc["checksums"]) if a != b]
            raise CorruptCheckpointError(
                f"checkpoint step {step} reads back different data than was saved (checksum mismatch in "
                f"{', '.join(bad[:_MAX_LISTED])})", hint=fix)
        return state, doc["meta"], step

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
