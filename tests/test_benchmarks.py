"""The benchmark scripts run (slow: on demand, `python -m pytest -m slow`), so they cannot rot."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT


def _run_json(script, *args):
    """Runs benchmarks/SCRIPT with ARGS and returns the JSON object it prints last."""
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_device_suite_runs_reduced_on_a_cpu(tmp_path):
    out = tmp_path / "suite.json"
    r = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "device_suite.sh"), str(out), "--reduced"],
                       capture_output=True, text=True, timeout=1200, env=dict(os.environ, PYTHON=sys.executable))
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.load(open(out))
    assert res["reduced"] and res["mlp_step_ms"] > 0
    assert set(res["experts"]) == {"1", "2"} and all(v["expert_epochs_per_s"] > 0 for v in res["experts"].values())
    assert set(res["resnet18_step_ms"]) == {"separate", "joint"}
    assert len(res["filter_ms"]) == 2 and res["projected_wall_s"]["mnist"]["total"] > 0


@pytest.mark.slow
def test_end_to_end_benchmark_runs_on_the_tiny_config():
    res = _run_json("end_to_end.py", "--config=configs/tiny.py", "--seed=0", "--steps=3")
    assert res["steps"] == res["expert_steps"] + res["base_steps"] > 0
    assert 0 < res["fraction_of_step_limit"] < 1 and res["compile_s"] > 0
    assert 0 < res["fraction_at_replay_step"] < 1 and res["replay_step_ms"] > 0


@pytest.mark.slow
def test_compile_time_benchmark_runs_on_the_tiny_config():
    res = _run_json("compile_time.py", "--config=configs/tiny.py", "--repeats=1")
    assert set(res["xla_compile_s_median"]) == {"1", "-1"}
    for programs in res["xla_compile_s_median"].values():
        assert set(programs) >= {"contrastive_step", "train_expert", "expert_round", "expert_round_without_filter",
                                 "run_chunks", "finetune", "predict", "total"}
        assert all(v > 0 for v in programs.values())
        assert programs["expert_round"] > programs["expert_round_without_filter"]  # the filter compiles too
    assert res["trace_and_lower_s_median"]["run_chunks"] > 0


@pytest.mark.slow
def test_expert_vs_replay_benchmark_runs_on_the_tiny_config():
    res = _run_json("expert_vs_replay.py", "--config=tiny", "--repeats=1", "--chunks=2")
    assert res["chunk_size"] == 40 and res["epochs"] == 4 and res["cpu"]
    assert all(res[k] > 0 for k in ("expert_step_ms", "replay_step_ms", "filter_ms"))
    assert set(res["round_s_per_expert"]) == {"none", "epoch_callback"}
    assert all(v > 0 for v in res["round_s_per_expert"].values())
