"""--config.logging.profile_segments: a jax.profiler trace of the first replay segments, changing no result."""
import glob
import gzip
import json
import os

import spr_jax


def test_a_profiled_run_writes_a_trace_of_the_replay_and_the_same_metrics(tmp_path):
    plain, traced = str(tmp_path / "plain"), str(tmp_path / "traced")
    spr_jax.run(spr_jax.load_config("tiny", {"logging.tensorboard": False}), plain, progress=False)
    spr_jax.run(spr_jax.load_config("tiny", {"logging.tensorboard": False, "logging.profile_segments": 1}), traced,
                progress=False)
    traces = glob.glob(os.path.join(traced, "profile", "plugins", "profile", "*", "*.trace.json.gz"))
    assert len(traces) == 1 and glob.glob(os.path.join(traced, "profile", "plugins", "profile", "*", "*.xplane.pb"))
    names = {e.get("name", "") for e in json.load(gzip.open(traces[0]))["traceEvents"]}
    assert any("run_chunks" in n for n in names), sorted(names)[:50]  # the compiled replay segment ran inside it
    assert not os.path.exists(os.path.join(plain, "profile"))

    def records(work):
        rows = [json.loads(line) for line in open(os.path.join(work, "metrics.jsonl"))]
        return [{k: v for k, v in r.items() if "wall" not in k} for r in rows]
    assert records(traced) == records(plain)
