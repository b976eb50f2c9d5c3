"""A finished run found in its workdir: its summary read back and checked against its last checkpoint's
records, and its metrics.jsonl, stream.json and config.json checked against its checkpoint and inputs (and
rewritten from them if they do not match) before "nothing to do". A summary.json that is unreadable or whose
results are not the checkpoint's is rewritten by the run's last step again (run_loop: a resume after the last
chunk recomputes nothing but the summary)."""
import json
import os


from spr_jax import files
from spr_jax import outputs
from spr_jax import parallel
from spr_jax.data import prepare as prepare_lib


# summary.json's fields that its run's records, method and stream determine (not its wall times, device, nor
# the divergence verdict, which needs the experts' losses too).
CHECKED_SUMMARY_FIELDS = ("final_accuracy", "accuracy_matrix", "average_accuracy", "forgetting", "final_purity",
                          "purity_history", "eval_chunks", "stream_clean_share", "final_buffer_counts", "num_chunks",
                          "method", "seed", "dataset", "noise")


def _as_json(value) -> str:
    return json.dumps(json.loads(json.dumps(value, default=str)), sort_keys=True)


def finished_summary(workdir: str, ckpt, num_chunks: int, expected=None):
    """(summary, damaged): summary.json of a run that completed in this workdir (its last checkpoint is after
    the last chunk and its summary is readable and, given `expected` (the summary its checkpoint's records
    make, outputs.summary), says what they say in CHECKED_SUMMARY_FIELDS), else None; damaged: the run
    finished but its summary.json is unreadable or says otherwise."""
    path = os.path.join(workdir, "summary.json")
    if ckpt.latest_step() != num_chunks or not os.path.isfile(path):
        return None, False
    try:
        with open(path) as f:
            done = json.load(f)
        if not isinstance(done, dict):
            raise ValueError("not an object")
    except (OSError, ValueError):  # (UnicodeDecodeError and JSONDecodeError are ValueErrors)
        return None, True
    if expected is not None:
        want = expected()
        if any(k not in done or _as_json(done[k]) != _as_json(want[k]) for k in CHECKED_SUMMARY_FIELDS):
            return None, True
    return done, False


def checkpoint_log(workdir: str, ckpt):
    """A MetricsLog (not written) holding the records of the latest checkpoint."""
    meta = ckpt.latest_meta()
    log = outputs.MetricsLog(workdir)
    log.chunks, log.evals = meta["chunks"], meta["evals"]
    return log


def repair_finished_files(workdir: str, ckpt, prepared, config_text: str) -> list:
    """A finished run's metrics.jsonl, stream.json and config.json are what its last checkpoint, its inputs
    and its config (`config_text`, config.json's content) say; any that is missing, truncated or edited is
    rewritten (atomically). Returns the names rewritten."""
    if not parallel.is_primary():
        return []
    log = checkpoint_log(workdir, ckpt)
    info = prepare_lib.stream_summary(prepared)
    want = {"metrics.jsonl": (log.text(), lambda t: [json.loads(line) for line in t.splitlines()]),
            "stream.json": (json.dumps(info, indent=1), json.loads),
            "config.json": (config_text, json.loads)}
    repaired = []
    for name, (text, parse) in want.items():
        path = os.path.join(workdir, name)
        try:  # compared as records: older checkpoints hold them with sorted keys
            with open(path) as f:
                same = parse(f.read()) == parse(text)
        except (OSError, ValueError):  # (UnicodeDecodeError and JSONDecodeError are ValueErrors)
            same = False
        if not same:
            files.write_atomic(path, text)
            repaired.append(name)
    return repaired
