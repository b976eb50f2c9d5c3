"""A finished run found in its workdir: its summary read back, and its metrics.jsonl and stream.json checked
against its last checkpoint (and rewritten from it if they do not match) before "nothing to do"."""
import json
import os


from spr_jax import files
from spr_jax import outputs
from spr_jax import parallel
from spr_jax.data import prepare as prepare_lib


def finished_summary(workdir: str, ckpt, num_chunks: int):
    """summary.json of a run that completed in this workdir (its last checkpoint is after the last chunk
    and its summary is readable), else None."""
    path = os.path.join(workdir, "summary.json")
    if ckpt.latest_step() != num_chunks or not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError:
        return None


def repair_finished_files(workdir: str, ckpt, prepared) -> list:
    """A finished run's metrics.jsonl and stream.json are what its last checkpoint and its inputs say; any
    that is missing, truncated or edited is rewritten (atomically). Returns the names rewritten."""
    if not parallel.is_primary():
        return []
    meta = ckpt.latest_meta()
    log = outputs.MetricsLog(workdir)
    log.chunks, log.evals = meta["chunks"], meta["evals"]
    info = prepare_lib.stream_summary(prepared)
    want = {"metrics.jsonl": (log.text(), lambda t: [json.loads(line) for line in t.splitlines()]),
            "stream.json": (json.dumps(info, indent=1), json.loads)}
    repaired = []
    for name, (text, parse) in want.items():
        path = os.path.join(workdir, name)
        try:  # compared as records: the checkpoint holds them with sorted keys
            with open(path) as f:
                same = parse(f.read()) == parse(text)
        except (OSError, ValueError):  # (UnicodeDecodeError and JSONDecodeError are ValueErrors)
            same = False
        if not same:
            files.write_atomic(path, text)
            repaired.append(name)
    return repaired
