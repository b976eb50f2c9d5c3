"""The expert phase of a run: every chunk's clean_p and keep, from the expert cache or trained.

For each chunk: a fresh SimCLR expert trained on it alone, its features, then the run's filter
(docs/algorithm.md section 3, steps 1 and 3). The compute is `experts.expert_phase` (vmap over chunk
groups, shard_map over devices); this module adds the on-disk cache around it (what is cached is keyed
by everything the outputs depend on, plug-in identities included) and the split over processes.
A filter that needs no features (`filters.needs_features`) trains no experts at all.

Its functions take `settings`, the run's `settings.RunSettings` (built at the edge; not imported here, so
this phase does not depend on the module that builds it), and its own settings types are defined below.
"""
import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from spr_jax import augment
from spr_jax import compilation
from spr_jax import expert_cache
from spr_jax import interrupt
from spr_jax import experts
from spr_jax import rng
from spr_jax import run_checks
from spr_jax.errors import Diverged, UserError


@dataclasses.dataclass(frozen=True)
class ExpertSettings:
    model: Any  # the SimCLR flax module
    epochs: int
    base_lr: float
    warmup_epochs: int
    views: augment.Views
    group_size: int
    temperature: float

    def phase_kwargs(self) -> dict:
        """Keyword arguments of experts.expert_phase."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@functools.lru_cache(maxsize=None)
def filter_post_fn(filter_fn, num_classes: int):
    """experts.expert_phase's post_fn running the filter on each chunk's features.

    Cached and free of run-specific closures, so the compiled expert round is reused across runs."""
    def post_fn(chunk_index, features, args):
        clean_p, keep = filter_fn(args["key"], features, args["labels"], num_classes=num_classes)
        return {"clean_p": jnp.asarray(clean_p, jnp.float32), "keep": jnp.asarray(keep, bool)}
    return post_fn


@functools.lru_cache(maxsize=None)
def _featureless(filter_fn, num_classes: int, feature_dim: int):
    def one(key, labels):
        features = jnp.zeros((labels.shape[0], feature_dim), jnp.float32)
        clean_p, keep = filter_fn(key, features, labels, num_classes=num_classes)
        return jnp.asarray(clean_p, jnp.float32), jnp.asarray(keep, bool)
    return compilation.jit(jax.vmap(one))


def cache_dir(cache_dir_setting: str, workdir: str) -> str:
    return cache_dir_setting or os.path.join(workdir, "expert_cache")


def filter_args(settings, prepared, ids):
    keys = jax.vmap(lambda c: rng.chunk_key(settings.seed, rng.FILTER, c))(jnp.asarray(ids))
    return {"labels": prepared.noisy.noisy[prepared.stream.chunks[ids]], "key": keys}


def check_filter_outputs(settings, chunk_ids, outputs) -> None:
    """A filter's outputs for some chunks are usable: clean_p finite in [0, 1], keep boolean (UserError naming
    the filter and the first bad chunk otherwise). Run on the first round, before the other experts train."""
    clean_p, keep = np.asarray(outputs["clean_p"]), np.asarray(outputs["keep"])
    name = f"config.filter.kind={settings.filter.kind!r}"
    bad = ~np.isfinite(clean_p) | (clean_p < 0) | (clean_p > 1 + 1e-6)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise UserError(f"{name} returned clean_p={clean_p[row, col]} for sample {col} of chunk "
                        f"{int(chunk_ids[row])} ({int(bad.sum())} such values in {len(chunk_ids)} chunks)",
                        "a filter returns a finite clean_p in [0, 1] for every sample (e.g. 0 for samples it "
                        "never keeps); see docs/extending.md")
    if keep.dtype != np.bool_:
        raise UserError(f"{name} returned keep of dtype {keep.dtype}; it must be boolean")


def train_missing_experts(settings, prepared, train_images_dev, misses, progress,
                          on_compiling=None, on_round=None) -> dict:
    """{chunk: outputs} for the chunks in `misses`: clean_p and keep (plus features and final_loss with one
    process; features stay on the host that trained them).

    With several processes (jax.distributed), process p trains the chunks misses[p::P] on its local
    devices, and the outputs are all-gathered so every process returns all of them.
    """
    s = prepared.stream
    nproc, me = jax.process_count(), jax.process_index()
    mine = np.asarray(misses[me::nproc], np.int32)
    out = {}
    if mine.size:
        out = experts.expert_phase(
            train_images_dev, s.chunks[mine], settings.seed, chunk_ids=mine,
            post_fn=filter_post_fn(settings.filter.fn, settings.filter.num_classes),
            post_args=filter_args(settings, prepared, mine), keep_losses=False, progress=progress,
            on_compiling=on_compiling, on_round=on_round, **settings.expert.phase_kwargs())
    if nproc == 1:
        return {int(c): {k: np.asarray(v[j]) for k, v in out.items()} for j, c in enumerate(mine)}
    from jax.experimental import multihost_utils
    rows = -(-len(misses) // nproc)  # every process contributes the same shape: pad to `rows`
    d = s.chunk_size
    pad = {"clean_p": np.zeros((rows, d), np.float32), "keep": np.zeros((rows, d), bool)}
    for k in pad:
        if mine.size:
            pad[k][:mine.size] = out[k]
    gathered = multihost_utils.process_allgather(pad)  # [P, rows, D]
    result = {}
    for p in range(nproc):
        for j, c in enumerate(misses[p::nproc]):
            result[int(c)] = {k: np.asarray(gathered[k][p, j]) for k in pad}
    return result


def run(settings, descriptions: list, prepared, train_images_dev, cache_folder: str,
        progress=True, on_compiling=None) -> dict:
    """clean_p and keep [C, D] of every chunk: read from the expert cache (keyed by `descriptions`, see
    run_identity.expert_chunk_descriptions), the missing ones trained (in parallel over chunk groups and
    devices) and written to it. Returns them with the experts' final losses [C] (None when the filter
    needs no experts) and hit/trained counts.
    on_compiling(), optional, is called once the experts' program is traced, as XLA starts compiling it (not at
    all when no expert trains)."""
    s = prepared.stream
    if not settings.filter.needs_features:  # nothing to train: the filter alone, on every chunk at once
        ids = np.arange(s.num_chunks, dtype=np.int32)
        args = filter_args(settings, prepared, ids)
        fn = _featureless(settings.filter.fn, settings.filter.num_classes, int(settings.model.proj_dim))
        clean_p, keep = jax.device_get(fn(args["key"], jnp.asarray(args["labels"])))
        check_filter_outputs(settings, ids, {"clean_p": clean_p, "keep": keep})
        return {"clean_p": np.asarray(clean_p), "keep": np.asarray(keep), "final_loss": None, "cache_hits": 0,
                "trained": 0}
    keys = [expert_cache.description_key(d) for d in descriptions]
    cache = expert_cache.ExpertCache(cache_folder)
    cache.remove_stale_temporaries()
    hits, misses = cache.get_many(keys)
    own_misses = set(misses)
    if jax.process_count() > 1:
        # Caches may differ per process (one per host): all train the union of their misses, so every
        # process makes the same collective calls with the same split.
        from jax.experimental import multihost_utils
        missing = np.zeros(s.num_chunks, bool)
        missing[misses] = True
        misses = np.flatnonzero(multihost_utils.process_allgather(missing).any(axis=0)).tolist()
    stored = set()

    def on_round(ids, outputs):
        # Each round's experts are cached as they arrive, so that an interrupted phase resumes after them;
        # the filter's outputs are checked on the first round, before the other experts train.
        for name in ("final_loss", "features"):
            if name in outputs:
                bad = ~np.isfinite(np.asarray(outputs[name]).reshape(len(ids), -1)).all(axis=1)
                if bad.any():
                    raise Diverged(f"diverged: the expert of chunk {int(ids[np.argmax(bad)])} gave a non-finite "
                                   f"{'loss' if name == 'final_loss' else 'feature'}; nothing of it was cached",
                                   run_checks.likely_fields({"ssl.lr": settings.expert.base_lr,
                                                             "ssl.temperature": settings.expert.temperature},
                                                            run_checks.SSL_FIELDS))
        check_filter_outputs(settings, ids, outputs)
        if jax.process_count() == 1:
            for j, c in enumerate(ids):
                if int(c) in own_misses:
                    cache.put(keys[int(c)], {k: np.asarray(v[j]) for k, v in outputs.items()},
                              descriptions[int(c)])
                    stored.add(int(c))
            done = len(stored) + s.num_chunks - len(misses)
            interrupt.check(f"during the expert phase, after {done} of {s.num_chunks} experts (cached)")

    if misses:
        # A signal is acknowledged at once and stops the phase after the round in training (on_round's check).
        with interrupt.deferred("after this expert round", kept="the experts of finished rounds are cached",
                                done=f"after the expert phase ({s.num_chunks} experts cached)"):
            trained = train_missing_experts(settings, prepared, train_images_dev, misses, progress, on_compiling,
                                            on_round)
            for c, outputs in trained.items():
                if c in own_misses and c not in stored:  # every process fills its own cache (puts are atomic)
                    cache.put(keys[c], outputs, descriptions[c])
                hits[c] = outputs
    return {"clean_p": np.stack([hits[c]["clean_p"] for c in range(s.num_chunks)]),
            "keep": np.stack([hits[c]["keep"] for c in range(s.num_chunks)]),
            # (NaN where unknown: a chunk another process of a multi-host run trained)
            "final_loss": np.asarray([float(hits[c].get("final_loss", np.nan)) for c in range(s.num_chunks)]),
            "cache_hits": s.num_chunks - len(misses), "trained": len(misses)}

