"""On-disk cache of the expert phase's per-chunk outputs (clean_p, keep, optionally features).

An expert depends only on its chunk, and a chunk only on the seeded stream (docs/algorithm.md section 5b), so its
outputs can be reused by any later run with the same dataset, noise, seed, stream and expert settings. The
key is a sha256 over a canonical JSON of all of those plus a sha256 of the chunk's sample indices; the
file keeps that JSON (the "description"), so a reused file is checked against its key, the way the
reference checked its cached experts for consistency.

Layout: DIRECTORY/<key[:2]>/<key>.npz, written to a temporary file in the same folder and renamed into
place, so readers never see half a file and several processes may fill the cache at once (two writers of
one key write the same bytes; the last rename wins). A damaged file (a disk error, a copy cut short) is a
miss: moved aside to <key>.npz.corrupt with one warning line, and recomputed. The temporaries of puts killed
mid-write are removed once they are old (`remove_stale_temporaries`, at the start of an expert phase).
"""
import glob
import hashlib
import json
import os
import sys
import time
import uuid
from typing import Callable, Iterable, Optional

import numpy as np

from spr_jax.errors import UserError, first_line

_DESCRIPTION = "__description__"  # reserved array name holding the description JSON inside each file
STALE_S = 3600  # a put takes well under a second: a temporary an hour old belongs to no live process


class CacheCorruptError(UserError, RuntimeError):
    """A cache file cannot be read, or does not hold what its name promises (`ExpertCache.get` turns it into
    a miss; `read` raises it)."""

    def __init__(self, path: str, what: str):
        self.reason = f"{path} {what}"
        super().__init__(f"cache file {self.reason}; delete it (it will be recomputed)")


def _cause(path: str, e: Exception) -> str:
    """Why a file cannot be loaded. numpy reads a file that is no archive as a pickle and advises
    allow_pickle=True, which no cache file needs: that case is named as what it is."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":
                return "not an npz archive: damaged or overwritten"
    except OSError:
        pass
    return first_line(e)


def _warn_on_stderr(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr, flush=True)


def _jsonable(obj):
    """json.dumps fallback: numpy scalars and arrays as plain Python values."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def canonical_json(description: dict) -> str:
    # Sorted keys and fixed separators: equal inputs give equal bytes whatever the dict order.
    return json.dumps(description, sort_keys=True, separators=(",", ":"), allow_nan=False, default=_jsonable)


def description_key(description: dict) -> str:
    """sha256 hex naming one chunk's expert outputs (of chunk_cache_description's dict). Plain Python values
    in it (e.g. config.to_dict()): 0.4 and np.float32(0.4) are different numbers and give different keys."""
    return hashlib.sha256(canonical_json(description).encode()).hexdigest()


def chunk_cache_description(*, dataset: str, noise: dict, seed: int, stream: dict, expert: dict,
                            chunk_index: int, chunk_indices: np.ndarray) -> dict:
    """Everything one chunk's expert outputs depend on, as JSON-able data (the indices as a digest)."""
    idx = np.asarray(chunk_indices)
    if idx.size and (idx.min() < np.iinfo(np.int32).min or idx.max() > np.iinfo(np.int32).max):
        raise ValueError("chunk_indices do not fit in int32")
    idx = np.ascontiguousarray(idx, dtype="<i4")  # fixed dtype and byte order: the digest is portable
    return {
        "dataset": dataset, "noise": noise, "seed": int(seed), "stream": stream, "expert": expert,
        "chunk_index": int(chunk_index), "chunk_indices_shape": list(idx.shape),
        "chunk_indices_sha256": hashlib.sha256(idx.tobytes()).hexdigest(),
    }


class ExpertCache:
    def __init__(self, directory: str, warn: Optional[Callable[[str], None]] = None):
        """`warn(line)` reports a damaged entry (default: a 'warning: ...' line on stderr)."""
        self.directory = os.fspath(directory)
        self.warn = warn or _warn_on_stderr

    def path(self, key: str) -> str:
        return os.path.join(self.directory, key[:2], f"{key}.npz")

    @staticmethod
    def _check_key(key: str) -> None:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"not a cache key (64 lowercase hex digits): {key!r}")

    def get(self, key: str) -> Optional[dict[str, np.ndarray]]:
        """The outputs stored under `key`, or None on a miss. A damaged entry (truncated, overwritten, holding
        another key's outputs) is a miss too: it is moved aside to <name>.corrupt (kept for a look, never read
        again) with one warning, so that the phase recomputes it instead of stopping on it."""
        try:
            return self.read(key)
        except CacheCorruptError as e:
            path = self.path(key)
            aside = f"{path}.corrupt"
            try:
                os.replace(path, aside)
                where = f"moved aside to {aside}"
            except FileNotFoundError:  # another process reading it moved it first
                where = "moved aside by another process"
            except OSError as moving:  # a read-only cache: the recomputed entry's put replaces it, if it can
                where = f"could not be moved aside ({moving.strerror})"
            self.warn(f"expert cache: {e.reason}; {where}, it will be recomputed")
            return None

    def read(self, key: str) -> Optional[dict[str, np.ndarray]]:
        """The outputs stored under `key`, None if there are none, CacheCorruptError if its file is damaged."""
        self._check_key(key)
        path = self.path(key)
        try:
            # allow_pickle=False: a cache file can never run code; reading every member checks its CRC.
            with np.load(path, allow_pickle=False) as f:
                arrays = {name: f[name] for name in f.files}
        except FileNotFoundError:
            return None
        except Exception as e:  # noqa: BLE001 - whatever a damaged file makes numpy or zipfile raise
            raise CacheCorruptError(path, f"cannot be read ({_cause(path, e)})") from e
        if _DESCRIPTION not in arrays:
            raise CacheCorruptError(path, "has no stored description")
        try:
            description = json.loads(str(arrays.pop(_DESCRIPTION)))
        except ValueError as e:
            raise CacheCorruptError(path, f"has an unreadable description ({first_line(e)})") from e
        if description_key(description) != key:
            raise CacheCorruptError(path, f"holds outputs for different inputs than its key says (stored "
                                          f"description: {canonical_json(description)[:300]})")
        bad = [n for n, a in arrays.items() if np.issubdtype(a.dtype, np.inexact) and not np.isfinite(a).all()]
        if bad:  # put() refuses non-finite outputs, so these can only come from damage
            raise CacheCorruptError(path, f"has non-finite values in {bad}")
        return arrays

    def remove_stale_temporaries(self, now: Optional[float] = None) -> list:
        """Removes the temporaries of puts killed mid-write (kill -9, power loss); returns their paths. The
        cache may be filled by processes on several hosts at once, so only those older than STALE_S go."""
        now = time.time() if now is None else now
        removed = []
        for path in glob.glob(os.path.join(self.directory, "??", ".*.tmp")):
            try:
                if now - os.path.getmtime(path) > STALE_S:
                    os.remove(path)
                    removed.append(path)
            except OSError:  # renamed into place or removed by another process meanwhile; a read-only cache
                pass
        return removed

    def put(self, key: str, outputs: dict[str, np.ndarray], description: dict) -> None:
        """Stores `outputs` under `key`; `description` (what the key was computed from) must hash to it."""
        self._check_key(key)
        if description_key(description) != key:
            raise ValueError("description does not hash to key; build both with chunk_cache_description / "
                             "description_key")
        arrays = {}
        for name, value in outputs.items():
            if name.startswith("__"):
                raise ValueError(f"output names starting with '__' are reserved: {name!r}")
            a = np.asarray(value)
            if a.dtype == object:
                raise ValueError(f"output {name!r} has dtype object; only plain arrays can be cached")
            if np.issubdtype(a.dtype, np.inexact) and not np.isfinite(a).all():
                raise ValueError(f"refusing to cache output {name!r}: it contains NaN/Inf")
            arrays[name] = a
        arrays[_DESCRIPTION] = np.asarray(canonical_json(description))
        folder = os.path.dirname(self.path(key))
        os.makedirs(folder, exist_ok=True)
        # Same folder as the target, so os.replace is a rename within one filesystem (atomic).
        tmp = os.path.join(folder, f".{key}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as f:  # a file object: np.savez would otherwise append ".npz" to the name
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path(key))
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def get_many(self, keys: Iterable[str]) -> tuple[dict[int, dict[str, np.ndarray]], list[int]]:
        """(hits by position in `keys`, positions of the misses)."""
        hits, misses = {}, []
        for i, key in enumerate(keys):
            outputs = self.get(key)
            if outputs is None:
                misses.append(i)
            else:
                hits[i] = outputs
        return hits, misses
