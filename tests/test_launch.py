"""launch.py end to end, as a user runs it (subprocesses)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(*args, cwd=ROOT):
    return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_stream_mode_on_the_embedded_digits(tmp_path):
    r = launch("--config=configs/digits.py", "--mode=stream", f"--workdir={tmp_path}")
    assert r.returncode == 0, r.stderr
    info = json.load(open(tmp_path / "stream.json"))
    assert info["dataset"] == "digits" and info["num_tasks"] == 5
    assert info["num_chunks"] == info["samples_in_chunks"] // 100
    assert abs(info["noise_rate_overall"] - 0.4) < 0.01
    assert "noisy samples in 5 tasks" in r.stdout


@pytest.mark.parametrize("override, message", [
    ("--config.dataset.name=imagenet22k", "unknown dataset"),
    ("--config.noise.rate=1.5", "outside [0, 1]"),
    ("--config.episodes=((0,1),(1,2))", "one task only"),
    ("--config.episodes=((0,11),)", "out of range"),
    ("--config.noise.kind=asymmetric", "no published asymmetric"),
    ("--config.dataset.data_dir=/nonexistent/folder", "/nonexistent/folder"),
])
def test_bad_input_is_a_clear_error_and_keeps_existing_files(tmp_path, override, message):
    (tmp_path / "keep.txt").write_text("precious")
    config = "configs/fashion_mnist.py" if "data_dir" in override else "configs/digits.py"
    r = launch(f"--config={config}", "--mode=stream", override, f"--workdir={tmp_path}")
    assert r.returncode != 0
    assert message.lower() in r.stderr.lower(), r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert (tmp_path / "keep.txt").read_text() == "precious"


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                    reason="needs apt-get install dataset-fashion-mnist")
def test_fashion_mnist_stream(tmp_path):
    r = launch("--config=configs/fashion_mnist.py", "--mode=stream", f"--workdir={tmp_path}")
    assert r.returncode == 0, r.stderr
    info = json.load(open(tmp_path / "stream.json"))
    assert info["stream_samples"] == 60000 and info["num_tasks"] == 5 and info["num_chunks"] == 199
