"""Tests for spr_jax.expert_cache: keys, round trip, consistency checks, atomic layout."""
import os

import numpy as np
import pytest

from spr_jax import expert_cache as ec

BASE = dict(dataset="fashion_mnist", noise={"kind": "symmetric", "rate": 0.4}, seed=3,
            stream={"chunk_size": 1000, "episodes": [[0, 1], [2, 3]]},
            expert={"epochs": 4000, "lr": 0.5, "code": "v1"}, chunk_index=7,
            chunk_indices=np.arange(100, 200, dtype=np.int32))


def _key(**description):
    """The cache key of a chunk's description, as the expert phase makes it."""
    return ec.description_key(ec.chunk_cache_description(**description))


def _outputs(seed=0):
    r = np.random.default_rng(seed)
    return {"clean_p": r.random(100).astype(np.float32), "keep": r.random(100) > 0.5}


def _put(cache, seed=0, **overrides):
    args = {**BASE, **overrides}
    desc = ec.chunk_cache_description(**args)
    key = _key(**args)
    cache.put(key, _outputs(seed), desc)
    return key


def test_miss_then_hit(tmp_path):
    cache = ec.ExpertCache(str(tmp_path))
    key = _key(**BASE)
    assert cache.get(key) is None
    out = _outputs()
    cache.put(key, out, ec.chunk_cache_description(**BASE))
    got = cache.get(key)
    assert set(got) == {"clean_p", "keep"}
    for name in out:
        np.testing.assert_array_equal(got[name], out[name])
        assert got[name].dtype == out[name].dtype
    assert os.path.exists(tmp_path / key[:2] / f"{key}.npz")
    assert not [p for p in (tmp_path / key[:2]).iterdir() if p.name.endswith(".tmp")]  # no leftovers


def test_keys_depend_on_every_input():
    k0 = _key(**BASE)
    assert len(k0) == 64 and k0 == _key(**dict(BASE))  # deterministic
    # dict order does not matter; numpy integer indices of another dtype give the same digest
    assert _key(**{**BASE, "noise": {"rate": 0.4, "kind": "symmetric"},
                                 "chunk_indices": BASE["chunk_indices"].astype(np.int64)}) == k0
    variants = [
        {"noise": {"kind": "symmetric", "rate": 0.2}},
        {"noise": {"kind": "asymmetric", "rate": 0.4}},
        {"seed": 4},
        {"dataset": "mnist"},
        {"chunk_index": 8},
        {"expert": {"epochs": 10, "lr": 0.5, "code": "v1"}},
        {"stream": {"chunk_size": 500, "episodes": [[0, 1], [2, 3]]}},
        {"chunk_indices": np.arange(101, 201, dtype=np.int32)},
        {"chunk_indices": BASE["chunk_indices"][::-1].copy()},
        {"chunk_indices": BASE["chunk_indices"].reshape(2, 50)},
    ]
    keys = {_key(**{**BASE, **v}) for v in variants}
    assert len(keys) == len(variants) and k0 not in keys


def test_get_many(tmp_path):
    cache = ec.ExpertCache(str(tmp_path))
    k_a = _put(cache, chunk_index=0)
    k_b = _key(**{**BASE, "chunk_index": 1})
    k_c = _put(cache, seed=1, chunk_index=2)
    hits, misses = cache.get_many([k_a, k_b, k_c])
    assert sorted(hits) == [0, 2] and misses == [1]
    np.testing.assert_array_equal(hits[2]["clean_p"], _outputs(1)["clean_p"])


@pytest.mark.parametrize("damage", ["truncated", "garbage", "wrong key"])
def test_a_damaged_entry_is_a_miss_moved_aside_with_one_warning(tmp_path, damage):
    warnings = []
    cache = ec.ExpertCache(str(tmp_path), warn=warnings.append)
    key = _put(cache)
    path = cache.path(key)
    if damage == "truncated":
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    elif damage == "garbage":  # (numpy took these bytes for a pickle and advised allow_pickle=True)
        with open(path, "wb") as f:
            f.write(os.urandom(300))
    else:  # e.g. a file copied in by hand under another key
        other = _key(**{**BASE, "seed": 99})
        os.makedirs(os.path.dirname(cache.path(other)), exist_ok=True)
        os.replace(path, cache.path(other))
        key, path = other, cache.path(other)
    damaged = open(path, "rb").read()
    with pytest.raises(ec.CacheCorruptError, match="delete"):
        cache.read(key)
    assert cache.get(key) is None
    assert not os.path.exists(path) and open(path + ".corrupt", "rb").read() == damaged
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert warnings[0].startswith(f"expert cache: {path} ") and warnings[0].endswith(
        f"moved aside to {path}.corrupt, it will be recomputed")
    if damage == "wrong key":
        assert "different inputs" in warnings[0]
    if damage == "garbage":  # not numpy's advice to load it with allow_pickle=True
        assert "not an npz archive" in warnings[0] and "pickle" not in warnings[0]
    assert cache.get(key) is None and len(warnings) == 1  # a plain miss now
    cache.put(key, _outputs(), ec.chunk_cache_description(**{**BASE, "seed": 99} if damage == "wrong key" else BASE))
    assert cache.get(key) is not None


def test_put_refuses_nan_and_mismatched_description(tmp_path):
    cache = ec.ExpertCache(str(tmp_path))
    key = _key(**BASE)
    desc = ec.chunk_cache_description(**BASE)
    bad = _outputs()
    bad["clean_p"][3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cache.put(key, bad, desc)
    with pytest.raises(ValueError, match="hash"):
        cache.put(key, _outputs(), {**desc, "seed": 4})
    assert cache.get(key) is None  # nothing was written


def test_temporaries_of_killed_puts_are_removed_once_stale(tmp_path):
    cache = ec.ExpertCache(str(tmp_path))
    key = _put(cache)
    folder = os.path.dirname(cache.path(key))
    stale, fresh = (os.path.join(folder, f".{key}.{pid}.{'ab' * 16}.tmp") for pid in (11, 12))
    for path in (stale, fresh):
        with open(path, "wb") as f:
            f.write(b"half an npz")
    old = os.path.getmtime(fresh) - ec.STALE_S - 60
    os.utime(stale, (old, old))
    assert cache.remove_stale_temporaries() == [stale]
    assert os.path.exists(fresh) and os.path.exists(cache.path(key))  # another process may be writing that one
