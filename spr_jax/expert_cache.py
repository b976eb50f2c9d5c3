"""On-disk cache of the expert phase's per-chunk outputs (clean_p, keep, optionally features).

An expert depends only on its chunk, and a chunk only on the seeded stream (docs/algorithm.md section 5b), so its
outputs can be reused by any later run with the same dataset, noise, seed, stream and expert settings. The
key is a sha256 over a canonical JSON of all of those plus a sha256 of the chunk's sample indices; the
file keeps that JSON (the "description"), so a reused file is checked against its key, the way the
reference checked its cached experts for consistency.

Layout: DIRECTORY/<key[:2]>/<key>.npz, written to a temporary file in the same folder and renamed into
place, so readers never see half a file and several processes may fill the cache at once (two writers of
one key write the same bytes; the last rename wins).
"""
import hashlib
import json
import os
import uuid
from typing import Iterable, Optional

import numpy as np

from spr_jax.errors import UserError

_DESCRIPTION = "__description__"  # reserved array name holding the description JSON inside each file


class CacheCorruptError(UserError, RuntimeError):
    """A cache file cannot be read, or does not hold what its name promises."""


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
    def __init__(self, directory: str):
        self.directory = os.fspath(directory)

    def path(self, key: str) -> str:
        return os.path.join(self.directory, key[:2], f"{key}.npz")

    @staticmethod
    def _check_key(key: str) -> None:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"not a cache key (64 lowercase hex digits): {key!r}")

    def get(self, key: str) -> Optional[dict[str, np.ndarray]]:
        """The outputs stored under `key`, or None on a miss."""
        self._check_key(key)
        path = self.path(key)
        fix = f"delete {path} (it will be recomputed)"
        try:
            # allow_pickle=False: a cache file can never run code; reading every member checks its CRC.
            with np.load(path, allow_pickle=False) as f:
                arrays = {name: f[name] for name in f.files}
        except FileNotFoundError:
            return None
        except Exception as e:
            raise CacheCorruptError(f"cache file {path} cannot be read ({type(e).__name__}: {e}); {fix}") from e
        if _DESCRIPTION not in arrays:
            raise CacheCorruptError(f"cache file {path} has no stored description; {fix}")
        try:
            description = json.loads(str(arrays.pop(_DESCRIPTION)))
        except ValueError as e:
            raise CacheCorruptError(f"cache file {path} has an unreadable description ({e}); {fix}") from e
        if description_key(description) != key:
            raise CacheCorruptError(
                f"cache file {path} holds outputs for different inputs than its key says "
                f"(stored description: {canonical_json(description)[:300]}); {fix}")
        bad = [n for n, a in arrays.items() if np.issubdtype(a.dtype, np.inexact) and not np.isfinite(a).all()]
        if bad:  # put() refuses non-finite outputs, so these can only come from damage
            raise CacheCorruptError(f"cache file {path} has non-finite values in {bad}; {fix}")
        return arrays

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
