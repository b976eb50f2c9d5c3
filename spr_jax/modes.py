"""The partial runs of launch.py's modes: --mode=stream (the noisy stream only) and --mode=experts (the
expert phase only, filling the expert cache)."""
import json
import os
import time

import jax.numpy as jnp

from spr_jax import compilation
from spr_jax import expert_phase
from spr_jax import files
from spr_jax import parallel
from spr_jax import run_checks
from spr_jax import run_setup
from spr_jax.data import prepare as prepare_lib


def write_stream(config, workdir: str, progress: bool = True) -> dict:
    """--mode=stream: only the noisy stream, summarised to WORKDIR/stream.json."""
    info = prepare_lib.stream_summary(run_setup.prepare_inputs(config))
    os.makedirs(workdir, exist_ok=True)
    if parallel.is_primary():
        files.write_atomic(os.path.join(workdir, "stream.json"), json.dumps(info, indent=1))
    if progress:
        print(prepare_lib.format_stream_summary(info))
    return info


def fill_expert_cache(config, workdir: str, progress: bool = True) -> dict:
    """--mode=experts: only the expert phase (experts + filter for every chunk), written to the cache so
    that later runs with the same data, noise, seed, expert settings and filter skip it."""
    t0 = time.time()
    options = run_setup.run_options(config)
    compilation.use_persistent_cache(options.compile_dir)
    prepared, s, identity, _ = run_setup.setup(config, options)
    os.makedirs(workdir, exist_ok=True)
    folder = expert_phase.cache_dir(options.expert_cache, workdir)
    with compilation.matmul_precision(s.precision), \
            compilation.cpu_compiler(options.cpu_opt_level, options.cpu_vector_width, options.cpu_quick_compile):
        out = expert_phase.run(s, identity.expert_chunks, prepared, jnp.asarray(prepared.dataset.train.images),
                               folder, progress)
    info = {"chunks": prepared.stream.num_chunks, "cache_hits": out["cache_hits"], "trained": out["trained"],
            "cache_dir": folder, "wall_time_s": round(time.time() - t0, 3)}
    if progress:
        print(f"expert phase: {info['trained']} chunks trained, {info['cache_hits']} already cached, in "
              f"{info['wall_time_s']:.1f} s -> {info['cache_dir']}")
    exploded = None if out["final_loss"] is None else run_checks.expert_divergence(out["final_loss"],
                                                                                   prepared.stream.chunk_size)
    if progress and exploded:  # (a run on these experts ends with exit status 3)
        print(f"warning: {exploded}; {run_checks.likely_fields(identity.quoted, run_checks.SSL_FIELDS)}")
    return info
