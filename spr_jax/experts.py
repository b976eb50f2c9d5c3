"""The expert phase (docs/algorithm.md sections 3.1 and 5b, docs/architecture.md): one fresh SimCLR expert per chunk, in parallel.

An expert depends only on its chunk's images and its key `rng.chunk_key(seed, rng.EXPERT, c)`, so all
experts of a run are trained before (and apart from) the sequential self-replay: `jax.vmap` over a group of
`group_size` chunks on each device, the groups of one round split over the local devices with
`jax.shard_map` over a 1-D device mesh, rounds looped in Python. The training images stay on every device
(replicated); a chunk's images are gathered from its indices inside the compiled program, and so is an
optional per-chunk `post_fn` (the self-centered filter), so only small per-chunk results come back.
"""
import functools
import math
import threading
from typing import Any, Callable, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from spr_jax import augment, compilation, rng, simclr

AXIS = "chunks"


@functools.partial(compilation.jit, static_argnames=("model", "epochs", "warmup_epochs", "views", "temperature",
                                             "on_epoch"))
def train_expert(model: nn.Module, images_uint8, key, *, epochs: int, base_lr, warmup_epochs: int,
                 views: augment.Views = augment.Views(), temperature: float = 0.5, on_epoch=None):
    """Trains a fresh expert on one chunk's images [D, H, W, C] (uint8), one batch of the chunk per epoch.

    The key (the chunk's `rng.chunk_key(seed, rng.EXPERT, c)`) splits into (init key, fit key).
    Returns (TrainState, features [D, proj_dim] (L2-normalised projections, BN eval mode), losses [epochs]).
    """
    init_key, fit_key = jax.random.split(key)
    state = simclr.init_state(model, init_key, images_uint8.shape[1:])
    state, losses = simclr.contrastive_fit(model, state, images_uint8, fit_key, epochs=epochs, base_lr=base_lr,
                                          warmup_epochs=warmup_epochs, views=views,
                                          temperature=temperature, on_epoch=on_epoch)
    features = simclr.embed(model, state.params, state.batch_stats, images_uint8)
    return state, features, losses


PostFn = Callable[[jax.Array, jax.Array, Any], dict]


def expert_phase(train_images, chunks, seed: int, *, model: nn.Module, epochs: int, base_lr: float,
                 warmup_epochs: int, views: augment.Views = augment.Views(), group_size: int = 8,
                 temperature: float = 0.5, devices: Optional[Sequence[jax.Device]] = None,
                 post_fn: Optional[PostFn] = None, post_args: Any = None, keep_losses: bool = True,
                 chunk_ids=None, progress: bool = True, on_compiling: Optional[Callable[[], None]] = None,
                 on_round: Optional[Callable[[np.ndarray, dict], None]] = None) -> dict:
    """Trains the expert of every chunk and returns its results as numpy arrays with a leading axis C.

    train_images: uint8 [N, H, W, C], all training images (put once on every device).
    chunks: int [C, D], the training-set indices of each chunk's samples.
    chunk_ids: int [C], the stream's index of each row of `chunks` (default 0..C-1): pass a subset of the
    chunks with their ids to recompute some chunks alone, or to split a run's chunks over hosts.
    Chunk c's expert is `train_expert(model, train_images[chunks[c]], rng.chunk_key(seed, rng.EXPERT, c))`,
    whichever device, group or subset it runs in.
    post_fn(chunk_index, features [D, proj_dim], post_args[c]) -> dict of arrays, optional, runs per chunk
    inside the same compiled program (e.g. the self-centered filter, returning clean_p and keep); post_args
    is a pytree of arrays with leading axis C (e.g. the chunks' noisy labels [C, D]) sliced per chunk, or
    None. Its outputs are returned under their own names. The self-centered filter, for example:
        post_fn = lambda c, features, labels: centrality.purify_chunk(
            rng.chunk_key(seed, rng.FILTER, c), features, labels, num_classes=k)
        expert_phase(..., post_fn=post_fn, post_args=noisy_labels[chunks])
    (a new function object compiles anew; keep one per run to reuse the compiled round).
    group_size: experts vmapped together per device. On a 2-core CPU 1-2 is fastest (measured: 35 ms per
    expert-epoch at D = 300 for 1 and 2, 42 ms for 4); accelerators want larger groups.
    on_compiling(), optional, is called once the first round's program is traced and lowered, just before XLA
    compiles it (run_loop compiles the replay programs meanwhile, beside this compilation and the training).
    on_round(chunk_ids [n], outputs {name: [n, ...]}), optional, is called on the host as each round's results
    arrive, in order (run_loop caches them, checks a plug-in's outputs on the first real chunk, and stops there
    on a signal: an exception it raises ends the phase).
    Returns {"features": [C, D, proj_dim] float32, "final_loss": [C], "losses": [C, epochs] (if
    keep_losses), **post_fn outputs}.
    """
    chunks = np.asarray(chunks, np.int32)
    num_chunks = chunks.shape[0]
    chunk_ids = np.arange(num_chunks, dtype=np.int32) if chunk_ids is None else np.asarray(chunk_ids, np.int32)
    if chunk_ids.shape != (num_chunks,):
        raise ValueError(f"chunk_ids has shape {chunk_ids.shape}; it needs one id per row of chunks ({num_chunks},)")
    devices = tuple(devices) if devices is not None else tuple(jax.local_devices())
    per_round = len(devices) * group_size
    rounds = math.ceil(num_chunks / per_round)
    # Per-epoch progress from inside the program only where a round trains several experts (it then moves the
    # bar within a round); with one expert per round (a CPU's default) the bar moves as each round's results
    # arrive. A program with a host callback misses JAX's persistent compilation cache in every new process (its
    # key holds the callback's address), so it was compiled by every run (fashion_mnist_cpu's first round with a
    # warm cache: 6.6 s against 3.2 s without the callback), and the callback
    # costs ~3% of the expert's time (benchmarks/expert_vs_replay.py). The results are the same either way.
    run_round, mesh, round_progress = _round_fn(model, epochs, warmup_epochs, views, temperature, devices,
                                                post_fn, keep_losses, bool(progress) and per_round > 1)
    replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P(AXIS))
    if not isinstance(train_images, jax.Array):
        train_images = np.asarray(train_images)
    images = jax.device_put(train_images, replicated)  # a device array is copied device to device
    expert_key = rng.purpose_key(seed, rng.EXPERT)  # chunk c's key is fold_in(expert_key, c)
    base_lr = np.float32(base_lr)
    post_args = {} if post_args is None else post_args

    def round_args(r):
        # The last round is padded with repeats of real chunks; their results are dropped.
        rows = np.arange(r * per_round, (r + 1) * per_round) % num_chunks
        args = jax.tree_util.tree_map(lambda a: jax.device_put(np.asarray(a)[rows], split), post_args)
        return (images, expert_key, base_lr, jax.device_put(chunk_ids[rows], split),
                jax.device_put(chunks[rows], split), args)

    def dispatch(r):
        return run_round(*round_args(r)), min(per_round, num_chunks - r * per_round)

    results = []
    bar = _progress(num_chunks, progress)
    if rounds and on_compiling is not None:
        # Traced and lowered here (the call below reuses both), so that on_compiling's work (Python, holding
        # the GIL) runs while XLA compiles this program (which releases it).
        run_round.lower(*round_args(0))
        on_compiling()
    round_progress.watch(bar, epochs=epochs, total=num_chunks)
    try:
        pending = dispatch(0) if rounds else None
        for r in range(rounds):
            out, n_real = pending
            # Queue the next round before waiting on this one, so the device never idles on the host.
            pending = dispatch(r + 1) if r + 1 < rounds else None
            results.append(jax.tree_util.tree_map(lambda a: np.asarray(a)[:n_real], out))
            round_progress.experts_done(r * per_round + n_real)
            if on_round is not None:
                on_round(chunk_ids[r * per_round:r * per_round + n_real], results[-1])
    finally:
        round_progress.watch(None)
        bar.close()
    if not results:
        return {}
    return jax.tree_util.tree_map(lambda *a: np.concatenate(a, axis=0), *results)


class RoundProgram(NamedTuple):
    program: Any  # (images, expert_key, base_lr, ids [R], idx [R, D], args) -> outputs
    mesh: Mesh
    progress: "RoundProgress"  # what its host callback reports to (with report_epochs)


def round_program(model, epochs, warmup_epochs, views, temperature, devices, post_fn, keep_losses,
                  report_epochs=False, *, fresh: bool = False) -> RoundProgram:
    """The compiled program of one round, its mesh and progress; `fresh=True` builds a new copy instead of the
    cached one (e.g. to time its compilation, as benchmarks/compile_time.py does)."""
    build = _round_fn.__wrapped__ if fresh else _round_fn
    return build(model, epochs, warmup_epochs, views, temperature, devices, post_fn, keep_losses, report_epochs)


@functools.lru_cache(maxsize=16)
def _round_fn(model, epochs, warmup_epochs, views, temperature, devices, post_fn, keep_losses,
              report_epochs=False):
    """The compiled program of one round, cached so that repeated expert phases (other seeds, data or lr)
    with the same settings reuse it (see round_program)."""
    mesh = Mesh(np.asarray(devices), (AXIS,))
    progress = RoundProgress()

    def one(chunk_id, idx, args, images, expert_key, base_lr):
        # = rng.chunk_key(seed, rng.EXPERT, chunk_id)
        key = jax.random.fold_in(expert_key, chunk_id)
        _, features, losses = train_expert(model, jnp.take(images, idx, axis=0), key, epochs=epochs,
                                           base_lr=base_lr, warmup_epochs=warmup_epochs,
                                           views=views, temperature=temperature,
                                           on_epoch=progress.epoch_done if report_epochs else None)
        out = {"features": features, "final_loss": losses[-1]}
        if keep_losses:
            out["losses"] = losses
        if post_fn is not None:
            extra = post_fn(chunk_id, features, args if jax.tree_util.tree_leaves(args) else None)
            clash = set(extra) & set(out)
            if clash:
                raise ValueError(f"post_fn outputs {sorted(clash)} clash with the expert phase's own outputs")
            out.update(extra)
        return out

    def per_device(images, expert_key, base_lr, ids, idx, args):  # this device's group: ids [G], idx [G, D]
        return jax.vmap(one, in_axes=(0, 0, 0, None, None, None))(ids, idx, args, images, expert_key, base_lr)

    specs = (P(), P(), P(), P(AXIS), P(AXIS), P(AXIS))
    program = compilation.jit(jax.shard_map(per_device, mesh=mesh, in_specs=specs, out_specs=P(AXIS),
                                            check_vma=False))
    return RoundProgram(program, mesh, progress)


class RoundProgress:
    """The progress bar a round program's host callback moves, owned by that (cached) program.

    The compiled round calls `epoch_done` once per expert and epoch (from each device and vmapped expert, as
    each finishes), so the experts done are the calls counted over the phase divided by the epochs, whichever
    round is running: the host queues the next round before it waits on the current one."""

    def __init__(self):
        self._lock = threading.Lock()  # the callbacks run on the runtime's threads, the host on its own
        self._bar, self._epochs, self._total, self._calls = None, 1, 0, 0

    def watch(self, bar, epochs: int = 1, total: int = 0) -> None:
        """Reports a phase of `total` experts of `epochs` epochs on `bar` from now on (None: report nothing)."""
        with self._lock:
            self._bar, self._epochs, self._total, self._calls = bar, max(1, int(epochs)), int(total), 0

    def epoch_done(self, epoch) -> None:
        del epoch  # (an expert's epoch index: the count of calls is what tells the experts done)
        with self._lock:
            self._calls += 1
            self._move_to(self._calls // self._epochs)

    def experts_done(self, n: int) -> None:
        """The host's count, as each round's results arrive (the bar never moves back)."""
        with self._lock:
            self._move_to(n)

    def _move_to(self, n: int) -> None:
        if self._bar is not None and self._bar.n < min(n, self._total):
            self._bar.update(min(n, self._total) - self._bar.n)


class _NoBar:
    n = 0

    def update(self, n):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="expert", desc="experts")
