"""launch.py end to end, as a user runs it (subprocesses)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import file_digests

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
    assert_one_line_error(r)
    assert message.lower() in r.stderr.lower(), r.stderr[-2000:]
    assert (tmp_path / "keep.txt").read_text() == "precious"


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                    reason="needs apt-get install dataset-fashion-mnist")
def test_fashion_mnist_stream(tmp_path):
    r = launch("--config=configs/fashion_mnist.py", "--mode=stream", f"--workdir={tmp_path}")
    assert r.returncode == 0, r.stderr
    info = json.load(open(tmp_path / "stream.json"))
    assert info["stream_samples"] == 60000 and info["num_tasks"] == 5 and info["num_chunks"] == 199


# --- a run a user can trust: one-line errors, nothing written, finished runs left alone -------------------

def assert_one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert "Traceback" not in r.stderr and 1 <= len(lines) <= 2, r.stderr[-2000:]
    assert lines[0].startswith("error: ") and (len(lines) == 1 or lines[1].startswith("hint: ")), lines
    for needle in needles:
        assert needle in r.stderr, (needle, r.stderr)


def _write(path, text):
    path.write_text(text)
    return str(path)


@pytest.fixture
def occupied(tmp_path):
    """A workdir that already holds a file of the user's."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("precious")
    return work


@pytest.mark.parametrize("case", ["missing_file", "syntax_error", "not_a_configdict", "misspelt_section",
                                  "misspelt_field", "bad_value_type", "buffer_larger_than_stream",
                                  "real_noise_on_clean_data", "no_eval_epochs", "unknown_encoder"])
def test_bad_config_is_one_line_exit_2_and_writes_nothing(tmp_path, occupied, case):
    bad_syntax = _write(tmp_path / "bad.py", "def get_config(:\n")
    a_dict = _write(tmp_path / "d.py", "def get_config():\n    return {}\n")
    args, needles = {
        "missing_file": (["--config=configs/nope.py"], ["configs/nope.py", "no such file", "configs/tiny.py"]),
        "syntax_error": ([f"--config={bad_syntax}"], ["syntax error at line 1"]),
        "not_a_configdict": ([f"--config={a_dict}"], ["returns a dict, not an ml_collections.ConfigDict"]),
        "misspelt_section": (["--config=configs/tiny.py", "--config.nosie.rate=0.2"],
                             ["--config.nosie.rate", "did you mean --config.noise.rate?"]),
        "misspelt_field": (["--config=configs/tiny.py", "--config.noise.rat=0.2"], ["did you mean --config.noise.rate?"]),
        "bad_value_type": (["--config=configs/tiny.py", "--config.noise.rate=abc"], ["--config.noise.rate=abc"]),
        "buffer_larger_than_stream": (["--config=configs/tiny.py", "--config.buffer.size=100000"],
                                      ["config.buffer.size=100000", "560 samples", "never fills"]),
        "real_noise_on_clean_data": (["--config=configs/tiny.py", "--config.noise.kind=real"],
                                     ["config.noise.kind='real'", "no real label noise"]),
        "no_eval_epochs": (["--config=configs/tiny.py", "--config.eval.epochs=0"], ["config.eval.epochs=0"]),
        "unknown_encoder": (["--config=configs/tiny.py", "--config.model.encoder=vit"], ["config.model.encoder='vit'"]),
    }[case]
    before = file_digests(occupied)
    r = launch(*args, f"--workdir={occupied}")
    assert_one_line_error(r, *needles)
    assert file_digests(occupied) == before
    fresh = tmp_path / "fresh"
    assert_one_line_error(launch(*args, f"--workdir={fresh}"), *needles)
    assert not fresh.exists()  # a refused run creates no workdir


def test_unusable_workdirs_are_one_line_errors(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for workdir, needle in [(afile, "is a file, not a folder"), (afile / "sub", "cannot be created"),
                            ("/proc/spr_jax_nope", "cannot be created")]:
        assert_one_line_error(launch("--config=configs/tiny.py", f"--workdir={workdir}"), str(workdir), needle)
    assert afile.read_text() == "x"


def test_a_read_only_filesystem_is_a_one_line_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True).returncode:
        pytest.skip("cannot mount a read-only filesystem here (needs root)")
    try:
        assert_one_line_error(launch("--config=configs/tiny.py", f"--workdir={ro}/w"), "Read-only file system")
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


def test_help_lists_configs_and_config_mode_explains_fields():
    r = launch("--help")
    assert r.returncode == 0 and "configs/digits.py" in r.stdout and "embedded demo" in r.stdout
    assert "--mode" in r.stdout and "--redo" in r.stdout
    from spr_jax import comparison as compare
    methods_help = next(line for line in r.stdout.splitlines() if line.strip().startswith("--methods:"))
    assert all(m in methods_help for m in compare.METHODS), methods_help  # the help names every method
    r = launch("--config=configs/tiny.py", "--mode=config", "--config.noise.rate=0.3")
    assert r.returncode == 0, r.stderr
    assert "noise.rate = 0.3" in r.stdout
    assert any(line.startswith("filter.kind = 'centrality'") and "#" in line for line in r.stdout.splitlines())
    # Fields that dataset defaults in configlib assign again keep base_config's explanation.
    for field in ("buffer.size = 40", "expert.group_size = 4"):
        assert any(line.startswith(field) and "#" in line for line in r.stdout.splitlines()), field


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("finished") / "run"
    r = launch("--config=configs/tiny.py", f"--workdir={work}")
    assert r.returncode == 0, r.stderr[-3000:]
    return work


def test_a_finished_run_rerun_twice_changes_no_byte(finished_run):
    before = file_digests(finished_run)
    for _ in range(2):
        r = launch("--config=configs/tiny.py", f"--workdir={finished_run}")
        assert r.returncode == 0 and "finished" in r.stdout and "--redo" in r.stdout, r.stderr[-2000:]
        assert file_digests(finished_run) == before


def test_a_run_of_another_config_is_refused_without_touching_the_workdir(finished_run):
    before = file_digests(finished_run)
    r = launch("--config=configs/tiny.py", "--config.noise.rate=0.2", f"--workdir={finished_run}")
    assert_one_line_error(r, "noise.rate", "0.4", "0.2", "--workdir")
    assert file_digests(finished_run) == before  # stream.json included


def test_a_damaged_checkpoint_is_a_one_line_error(finished_run, tmp_path):
    import shutil
    work = tmp_path / "copy"
    shutil.copytree(finished_run, work)
    os.remove(work / "summary.json")  # not finished any more: the run wants to resume from its last step
    steps = sorted(int(p) for p in os.listdir(work / "checkpoints") if p.isdigit())
    for root, _, files in os.walk(work / "checkpoints" / str(steps[-1]) / "state"):
        for name in files:
            if os.path.getsize(os.path.join(root, name)) > 1000:
                with open(os.path.join(root, name), "r+b") as f:
                    f.truncate(100)
    before = file_digests(work)
    r = launch("--config=configs/tiny.py", f"--workdir={work}")
    assert_one_line_error(r, f"checkpoint step {steps[-1]} cannot be read", "Delete")
    assert file_digests(work) == before


def test_redo_runs_a_finished_run_again(finished_run, tmp_path):
    import shutil
    work = tmp_path / "redo"
    shutil.copytree(finished_run, work)
    r = launch("--config=configs/tiny.py", "--redo", f"--workdir={work}")
    assert r.returncode == 0 and "final accuracy" in r.stdout, r.stderr[-2000:]
    old, new = (json.load(open(p / "summary.json")) for p in (finished_run, work))
    assert new["accuracy_matrix"] == old["accuracy_matrix"] and new["wall_time_s"] != old["wall_time_s"]


def test_compare_runs_every_method_reuses_finished_runs_and_agrees_with_them(tmp_path):
    work = tmp_path / "cmp"
    # Quick: two tasks, one checkpoint per task, no per-run figures (every method still runs its whole protocol)
    quick = ("--config.episodes=((0,1,2,3,4),(5,6,7,8,9))", "--config.checkpoint.every_chunks=100",
             "--config.logging.summary_plot=False", "--config.logging.tensorboard=False")
    r = launch("--config=configs/tiny.py", "--mode=compare", f"--workdir={work}", *quick)  # every method
    assert r.returncode == 0, r.stderr[-3000:]
    assert not list(work.glob("*/rate_*/seed_*/summary.png")) and list(work.glob("*/rate_*/seed_*/summary.json"))
    doc = json.load(open(work / "compare.json"))
    from spr_jax import comparison as compare
    assert [row["method"] for row in doc["runs"]] == list(compare.METHODS)
    for row in doc["runs"]:
        summary = json.load(open(work / row["method"] / f"rate_{row['noise_rate']}" / f"seed_{row['seed']}" /
                                 "summary.json"))
        assert row["final_accuracy"] == summary["final_accuracy"]
        # finetune and EWC keep no memory: no purity to report
        assert row["final_purity"] == (None if row["method"] in ("finetune", "ewc") else summary["final_purity"])
    md = (work / "compare.md").read_text()
    assert all(f"| {m} | 0.4 | 1 |" in md for m in compare.METHODS) and (work / "compare.png").exists()
    tex = (work / "compare.tex").read_text()  # the paper's layout: a row per method, a column per rate
    assert all(line.count(" & ") == 2 for line in tex.splitlines() if " & " in line) and r"\textbf{" in tex
    # Rerun: every run is finished, so nothing is trained again and the rows are the same.
    before = file_digests(work / "spr")
    again = launch("--config=configs/tiny.py", "--mode=compare", "--methods=spr,gdumb_sl", f"--workdir={work}", *quick)
    assert again.returncode == 0 and file_digests(work / "spr") == before
    assert [row["method"] for row in json.load(open(work / "compare.json"))["runs"]] == ["spr", "gdumb_sl"]
    bad = launch("--config=configs/tiny.py", "--mode=compare", "--methods=spr,nope", f"--workdir={work}")
    assert_one_line_error(bad, "unknown method 'nope'")


def test_a_sweep_over_any_field_runs_reuses_and_reports(tmp_path):
    work = tmp_path / "sweep"
    args = ["--config=configs/tiny.py", "--mode=compare", "--methods=spr", "--sweep=buffer.size=20,40",
            f"--workdir={work}"]
    r = launch(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.load(open(work / "compare.json"))
    assert [(row["method"], row["sweep"]) for row in doc["runs"]] == [
        ("spr [buffer.size=20]", {"buffer.size": 20}), ("spr [buffer.size=40]", {"buffer.size": 40})]
    summaries = [json.load(open(work / "spr" / f"buffer.size={n}" / "rate_0.4" / "seed_0" / "summary.json"))
                 for n in (20, 40)]
    assert [row["final_accuracy"] for row in doc["runs"]] == [s["final_accuracy"] for s in summaries]
    for n in (20, 40):  # each run's memory has the size swept
        rows = [json.loads(line) for line in open(work / "spr" / f"buffer.size={n}" / "rate_0.4" / "seed_0" /
                                                  "metrics.jsonl")]
        assert max(row["buffer_size"] for row in rows) == n
    md = open(work / "compare.md").read()
    assert "| spr [buffer.size=20] | 0.4 | 1 |" in md and "| spr [buffer.size=40] | 0.4 | 1 |" in md
    assert (work / "compare.png").stat().st_size > 10_000
    before = file_digests(work / "spr")
    assert launch(*args).returncode == 0 and file_digests(work / "spr") == before  # finished runs reused
    bad = launch("--config=configs/tiny.py", "--mode=compare", "--sweep=buffer.sise=20,40", f"--workdir={tmp_path / 'b'}")
    assert_one_line_error(bad, "buffer.sise", "did you mean --sweep=buffer.size")
    bad = launch("--config=configs/tiny.py", "--mode=compare", "--sweep=buffer.size=20,many", f"--workdir={tmp_path / 'c'}")
    assert_one_line_error(bad, "buffer.size='many' is not of type int")
