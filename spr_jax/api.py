"""The public Python API (docs/api.md): load a config, run it, compare methods, read a workdir back.

    import spr_jax
    config = spr_jax.load_config("tiny", {"noise.rate": 0.2})
    summary = spr_jax.run(config, "/tmp/spr_tiny")
    run = spr_jax.read_run("/tmp/spr_tiny")          # summary, config, per-chunk metrics as arrays

`run` and `compare` behave as `launch.py` does (the workdir lock, resuming, refusing another run's
workdir, stopping on divergence, on a signal and on a full disk), but raise instead of exiting:
`spr_jax.UserError` for a mistake the caller can fix, `spr_jax.RunStopped` (and its `Diverged` and
`WriteFailed`) for a run stopped with its work kept. While they run, Ctrl-C (SIGINT), SIGTERM and SIGHUP stop
the run at its next safe point, as launch.py does, but never end the process (interrupt.handled).
"""
import json
import os
from typing import Any, NamedTuple, Optional

import numpy as np

from spr_jax import config_files
from spr_jax.errors import UserError


def load_config(name_or_path: str, overrides: Optional[dict] = None):
    """A config as an ml_collections.ConfigDict: a bundled config by name ("tiny", "digits",
    "fashion_mnist_cpu", ...) or a config file's path, with `overrides` {"dotted.field": value} applied (every
    name checked, with a did-you-mean) and the whole validated."""
    from spr_jax import configlib
    config = config_files.load_file(name_or_path, flag="config")
    config_files.apply_overrides(config, dict(overrides or {}))
    configlib.validate(config)
    return config


def run(config, workdir: str, *, progress: bool = True, redo: bool = False) -> dict:
    """Runs SPR (or the config's composition of plug-ins) in `workdir` and returns summary.json's dict. A
    finished run is read back as it is (redo=True runs it again from scratch, keeping the expert cache); an
    interrupted one resumes from its last checkpoint. A signal (Ctrl-C) stops it at its next safe point with
    RunStopped, its work so far kept (docs/api.md, "Stopping a run")."""
    from spr_jax import interrupt, parallel, run_loop, storage, workdir_lock
    with workdir_lock.hold(workdir, enabled=parallel.is_primary()), interrupt.handled(), storage.one_line():
        return run_loop.run(config, workdir, progress=progress, redo=redo)


def compare(config, workdir: str, *, methods=(), rates=(), seeds=(), sweeps=(), progress: bool = True) -> list:
    """Every method x sweep point x noise rate x seed on `config` (as `launch.py --mode=compare`), finished
    runs reused; `sweeps` as `--sweep`: ["buffer.size=100,300", ...]. Writes compare.json, compare.md and
    compare.png in `workdir` and returns compare.json's rows (a list, one per run) whose `.cells` are
    compare.json's cells: per method (sweep point) and noise rate, each metric's mean, sd, 95% t interval over
    seeds, n and per-seed values (spr_jax.metrics.seed_stats)."""
    from spr_jax import comparison, interrupt, parallel, storage, workdir_lock
    with workdir_lock.hold(workdir, enabled=parallel.is_primary()), interrupt.handled(), storage.one_line():
        return comparison.run(config, workdir, methods, rates, seeds, progress=progress, sweeps=sweeps)


class Run(NamedTuple):
    """A workdir read back (see read_run)."""
    summary: Optional[dict]  # summary.json (None while the run is unfinished)
    config: Optional[dict]  # config.json: the resolved config, plug-ins, versions, device (None if absent)
    chunks: dict  # per-chunk metrics as numpy arrays, one entry per chunk: {"kept": [C], "buffer_purity": ...}
    evals: list  # the evaluation records of metrics.jsonl, in order
    accuracy_matrix: Any  # float [T, T] in [0, 1], NaN where task j was not yet seen after task i


def read_run(workdir: str) -> Run:
    """A finished (or unfinished) run's outputs as Python objects: nothing is recomputed. Missing metrics
    (e.g. purity with real noise, the loss of an untrained base) are NaN in the arrays."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise UserError(f"{workdir} holds no run (no metrics.jsonl)", "pass the --workdir of a run")
    records = [json.loads(line) for line in open(path) if line.strip()]
    chunk_records = [r for r in records if r["type"] == "chunk"]
    evals = [r for r in records if r["type"] == "eval"]
    chunks = {}
    for key in (chunk_records[0] if chunk_records else {}):
        if key == "type":
            continue
        values = [r.get(key) for r in chunk_records]
        if key == "buffer_counts":
            chunks[key] = np.asarray(values, np.int64)
        elif all(isinstance(v, bool) for v in values):
            chunks[key] = np.asarray(values, bool)
        else:
            chunks[key] = np.asarray([np.nan if v is None else v for v in values], float)
    summary = _json_or_none(os.path.join(workdir, "summary.json"))
    matrix = [r["task_accuracy"] for r in evals]
    acc = np.full((len(matrix), len(matrix[0]) if matrix else 0), np.nan)
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            if j <= i and v is not None:
                acc[i, j] = v
    return Run(summary=summary, config=_json_or_none(os.path.join(workdir, "config.json")), chunks=chunks,
               evals=evals, accuracy_matrix=acc)


def _json_or_none(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

