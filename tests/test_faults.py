"""Runs that never mislead, tried through launch.py as a user meets them: a second launch on a busy workdir,
Ctrl-C, SIGTERM and SIGHUP at any moment (JAX's import, the data's preparation, the experts, the replay, a
comparison's run, twice), a full disk, damaged outputs of a finished run, a damaged expert cache, the leftovers
of a killed write, divergence (experts, base, fine-tune, online learners), meaningless runs, values out of
range, broken plug-ins, an unusable workdir, a missing JAX platform; and the Python API's share of them
through spr_jax.run (Ctrl-C, a full disk, an unusable workdir). Each ends in one line (or two with a hint),
no traceback, nothing already written lost, no NaN on disk, and where the run can go on, a rerun that ends
with the metrics.jsonl and summary of an undisturbed run."""
import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from conftest import file_digests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "--config=configs/tiny.py"


def launch(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def start(*args):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "launch.py"), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def lines_of(stderr):
    """stderr's lines less progress bars (tqdm draws on stderr with carriage returns)."""
    return [line.split("\r")[-1] for line in stderr.splitlines() if line.split("\r")[-1].strip()]


def assert_short(stderr, first, status_line_prefix=None):
    """stderr ends with one line starting with `first`, optionally a hint line; no traceback anywhere."""
    assert "Traceback" not in stderr, stderr[-3000:]
    tail = lines_of(stderr)
    if tail and tail[-1].startswith("hint: "):
        tail = tail[:-1]
    assert tail and tail[-1].startswith(first), stderr[-2000:]


def summary_without_walls(work):
    s = json.load(open(os.path.join(work, "summary.json")))
    for k in ("wall_time_s", "compile_s"):
        s.pop(k)
    return s


def no_nan_on_disk(work):
    for path in glob.glob(os.path.join(work, "**", "*.json*"), recursive=True):
        text = open(path).read()
        assert "NaN" not in text and "Infinity" not in text, path


def wait_for(condition, proc, timeout=300):
    t = time.time()
    while not condition():
        assert proc.poll() is None, ("the run ended before the condition", proc.communicate()[1][-2000:])
        assert time.time() - t < timeout
        time.sleep(0.02)


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory):
    work = tmp_path_factory.mktemp("undisturbed") / "run"
    r = launch(TINY, f"--workdir={work}")
    assert r.returncode == 0, r.stderr[-3000:]
    return work


# --- one run per workdir ---------------------------------------------------------------------------------

def test_a_second_launch_on_a_busy_workdir_is_refused_and_the_first_is_unharmed(tmp_path, undisturbed):
    work = tmp_path / "w"
    first = start(TINY, f"--workdir={work}")
    wait_for(lambda: os.path.exists(work / ".spr_jax.lock") and os.path.getsize(work / ".spr_jax.lock"), first)
    second = launch(TINY, f"--workdir={work}")
    assert second.returncode == 2
    assert_short(second.stderr, "error: ")
    assert "in use by another run" in second.stderr and f"pid {first.pid}" in second.stderr
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    assert summary_without_walls(work) == summary_without_walls(undisturbed)
    assert len(open(work / "metrics.jsonl").read().splitlines()) == 14 + 5  # chunks + evaluations, once each
    assert not os.path.exists(work / ".spr_jax.lock")  # released


# --- preemption ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sig, phase", [(signal.SIGTERM, "experts"), (signal.SIGINT, "replay")])
def test_a_signal_stops_at_a_safe_point_and_the_run_resumes_to_the_same_summary(tmp_path, undisturbed, sig,
                                                                                   phase):
    work = tmp_path / "w"
    proc = start(TINY, f"--workdir={work}")
    if phase == "experts":  # once the first round of experts is cached
        wait_for(lambda: glob.glob(str(work / "expert_cache" / "*" / "*.npz")), proc)
    else:  # once the first replay checkpoint is written
        wait_for(lambda: glob.glob(str(work / "checkpoints" / "[0-9]*")), proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, (proc.returncode, err[-3000:])
    assert_short(err, f"interrupted ({signal.Signals(sig).name})")
    assert "run the same command to resume" in err
    assert not glob.glob(str(work / "**" / "*orbax-checkpoint-tmp*"), recursive=True)
    assert not os.path.exists(work / "summary.json")
    r = launch(TINY, f"--workdir={work}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert summary_without_walls(work) == summary_without_walls(undisturbed)


def chunk_steps_in_events(work):
    """{tag: [steps]} of the chunk scalars in WORKDIR/tensorboard, every event as stored (nothing purged)."""
    from tensorboard.backend.event_processing import event_accumulator
    acc = event_accumulator.EventAccumulator(str(work / "tensorboard"), purge_orphaned_data=False,
                                             size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"] if tag.startswith("chunk/")}


def test_a_run_killed_in_the_replay_resumes_to_byte_identical_metrics_and_each_event_step_once(tmp_path,
                                                                                               undisturbed):
    """kill -9 once some chunks past a checkpoint may be logged: the rerun's metrics.jsonl is the undisturbed
    run's byte for byte (the records restored from the checkpoint keep their key order), and TensorBoard holds
    each chunk step once (a resume rewrites the events from the checkpoint's records)."""
    pytest.importorskip("tensorboard")
    work = tmp_path / "w"
    proc = start(TINY, f"--workdir={work}")
    wait_for(lambda: glob.glob(str(work / "checkpoints" / "[0-9]*")) and os.path.exists(work / "metrics.jsonl")
             and len(open(work / "metrics.jsonl").read().splitlines()) >= 7, proc)
    proc.kill()
    proc.communicate(timeout=60)
    assert not os.path.exists(work / "summary.json")
    r = launch(TINY, f"--workdir={work}")
    assert r.returncode == 0 and "resuming from the checkpoint" in r.stdout, r.stderr[-3000:]
    assert subprocess.run(["cmp", str(work / "metrics.jsonl"), str(undisturbed / "metrics.jsonl")]).returncode == 0
    steps = chunk_steps_in_events(work)
    assert steps["chunk/kept"] == list(range(14)), steps["chunk/kept"]  # tiny: 14 chunks, each once
    assert steps == chunk_steps_in_events(undisturbed)


class Watched:
    """launch.py in a subprocess whose stderr is read as it comes, each piece timestamped (to see when a
    signal's acknowledgement arrives, not only that it does)."""

    def __init__(self, *args):
        import threading
        self.proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "launch.py"), *args], cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.pieces = []  # (time, text)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for piece in iter(lambda: os.read(self.proc.stderr.fileno(), 4096), b""):
            self.pieces.append((time.time(), piece.decode(errors="replace")))

    @property
    def stderr(self):
        return "".join(p for _, p in self.pieces)

    def first_time(self, text):
        """When `text` had arrived on stderr, or None."""
        seen = ""
        for t, piece in self.pieces:
            seen += piece
            if text in seen:
                return t
        return None

    def wait(self, timeout=600):
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        self.proc.stderr.close()
        return self.proc.returncode


def messages(stderr):
    """stderr's lines other than progress bars (tqdm redraws them with carriage returns)."""
    import re
    out = []
    for line in re.split(r"[\r\n]", stderr):
        if line.strip() and not re.match(r"\s*\w+:\s+\d+%\|", line):
            out.append(line.strip())
    return out


def caught_signals(pid):
    """The signal numbers process `pid` has a handler for (Linux's /proc/PID/status SigCgt), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            mask = int(next(line for line in f if line.startswith("SigCgt:")).split()[1], 16)
    except (OSError, StopIteration):
        return None
    return {n for n in range(1, 64) if mask >> (n - 1) & 1}


def jax_loading(pid):
    try:
        with open(f"/proc/{pid}/maps") as f:
            return "jaxlib" in f.read()
    except OSError:
        return False


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc (Linux)")
@pytest.mark.parametrize("sig, moment", [(signal.SIGINT, "start"), (signal.SIGTERM, "start"),
                                         (signal.SIGINT, "jax import"), (signal.SIGHUP, "jax import")])
def test_a_signal_while_the_run_starts_stops_it_at_once_with_one_line(tmp_path, sig, moment):
    """Before launch.py's handling (its first statement) Python itself would be interrupted; from then on,
    JAX's import included (where a KeyboardInterrupt used to be swallowed and the run went on to exit 0),
    a signal stops the run at once."""
    work = tmp_path / "w"
    proc = start(TINY, f"--workdir={work}")
    if moment == "start":  # as soon as launch.py handles the signals (SIGHUP is caught by nothing else)
        wait_for(lambda: signal.SIGHUP in (caught_signals(proc.pid) or set()), proc, timeout=60)
    else:  # while jaxlib's libraries are being loaded
        wait_for(lambda: jax_loading(proc.pid), proc, timeout=60)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, (proc.returncode, err[-3000:])
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    assert messages(err) == [f"interrupted ({signal.Signals(sig).name}) with no work in progress; nothing was lost"]
    assert not work.exists()  # nothing written, not even the workdir's lock


def test_a_signal_after_jax_loaded_before_the_experts_stops_at_once_with_one_line(tmp_path):
    """Ctrl-C once JAX is loaded and the workdir locked, while the data and the run's settings are prepared (the
    ~3 s moment that used to print a 36-line KeyboardInterrupt traceback): one line, 130, the lock released and
    nothing half-written (the workdir gone, or holding only complete files a rerun checks)."""
    work = tmp_path / "w"
    proc = start(TINY, f"--workdir={work}")
    wait_for(lambda: os.path.exists(work / ".spr_jax.lock") and os.path.getsize(work / ".spr_jax.lock"), proc,
             timeout=120)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, err[-3000:])
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert messages(err) == ["interrupted (SIGINT) with no work in progress; nothing was lost"]
    left = sorted(os.listdir(work)) if work.exists() else []  # (created by the run: removed when left empty)
    assert set(left) <= {"stream.json", "config.json"}, left
    for name in left:
        json.load(open(work / name))


def test_signals_during_experts_and_replay_are_acknowledged_at_once_and_the_run_resumes(tmp_path, undisturbed):
    """Ctrl-C while the first expert round trains: acknowledged at once (the round takes seconds), the run stops
    after the round with its experts cached; SIGHUP (a closed terminal) in the replay of the rerun: handled as
    SIGTERM, stopped at a checkpoint (129); a third run resumes to the undisturbed run's summary."""
    work = tmp_path / "w"
    run = Watched(TINY, f"--workdir={work}")
    wait_for(lambda: "experts:" in run.stderr, run.proc)  # the expert program is compiling or training
    sent = time.time()
    run.proc.send_signal(signal.SIGINT)
    ack = "SIGINT received: stopping after this expert round; Ctrl-C again stops now"
    wait_for(lambda: ack in run.stderr, run.proc, timeout=60)
    first_expert_cached = glob.glob(str(work / "expert_cache" / "*" / "*.npz"))
    assert run.wait() == 130, run.stderr[-3000:]
    assert run.first_time(ack) - sent < 5 and not first_expert_cached, "acknowledged only after the round"
    assert "Traceback" not in run.stderr
    assert messages(run.stderr) == [ack, "interrupted (SIGINT) during the expert phase, after 4 of 14 experts "
                                         "(cached); run the same command to resume"]
    assert len(glob.glob(str(work / "expert_cache" / "*" / "*.npz"))) == 4

    run = Watched(TINY, f"--workdir={work}")
    wait_for(lambda: glob.glob(str(work / "checkpoints" / "[0-9]*")), run.proc)
    run.proc.send_signal(signal.SIGHUP)
    assert run.wait() == 129, run.stderr[-3000:]
    lines = messages(run.stderr)
    assert len(lines) == 2 and "Traceback" not in run.stderr, lines
    assert lines[0] == ("SIGHUP received: stopping at the next checkpoint (after this segment of chunks); a second "
                        "signal stops now")
    assert lines[1].startswith("interrupted (SIGHUP) after chunk ") and lines[1].endswith("(checkpointed); run the "
                                                                                         "same command to resume")
    assert not os.path.exists(work / "summary.json") and not os.path.exists(work / ".spr_jax.lock")

    r = launch(TINY, f"--workdir={work}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "expert cache: 14 chunks reused" in r.stdout and "resuming from the checkpoint after chunk" in r.stdout
    assert summary_without_walls(work) == summary_without_walls(undisturbed)


def test_a_second_ctrl_c_stops_at_once_and_releases_the_workdir(tmp_path):
    work = tmp_path / "w"
    run = Watched(TINY, f"--workdir={work}")
    wait_for(lambda: "experts:" in run.stderr, run.proc)
    run.proc.send_signal(signal.SIGINT)
    wait_for(lambda: "SIGINT received" in run.stderr, run.proc, timeout=60)
    run.proc.send_signal(signal.SIGINT)
    assert run.wait(timeout=60) == 130, run.stderr[-3000:]
    assert messages(run.stderr)[1:] == ["error: interrupted again (SIGINT); stopped at once, the experts of finished "
                                        "rounds are cached; run the same command to resume"]
    assert not os.path.exists(work / ".spr_jax.lock")


API_SCRIPT = textwrap.dedent("""
    import sys
    import spr_jax
    try:
        spr_jax.run(spr_jax.load_config("tiny"), sys.argv[1], progress=False)
    except spr_jax.RunStopped as e:  # a notebook would show it; a script says it in one line
        print(e, file=sys.stderr)
        sys.exit(e.exit_status)
""")


@pytest.mark.slow  # (two tiny runs; test_the_api_s_signal_handling_... checks the handling itself in a second)
def test_ctrl_c_through_spr_jax_run_stops_at_a_checkpoint_and_a_second_call_resumes(tmp_path, undisturbed):
    """spr_jax.run handles Ctrl-C as launch.py does, without ending the process: acknowledged at once, RunStopped
    (one line, exit_status 130) at the next checkpoint; calling it again resumes to byte-identical metrics."""
    script = tmp_path / "api_run.py"
    script.write_text(API_SCRIPT)
    work = tmp_path / "w"
    run = subprocess.Popen([sys.executable, str(script), str(work)], cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    wait_for(lambda: glob.glob(str(work / "checkpoints" / "[0-9]*")), run)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=300)
    assert run.returncode == 130, (run.returncode, err[-3000:])
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    lines = messages(err)
    assert lines[0] == ("SIGINT received: stopping at the next checkpoint (after this segment of chunks); Ctrl-C "
                        "again stops as soon as the computation in progress returns"), lines
    assert len(lines) == 2 and lines[1].startswith("interrupted (SIGINT) after chunk "), lines
    assert lines[1].endswith("(checkpointed); run the same command to resume")
    assert not os.path.exists(work / "summary.json") and not os.path.exists(work / ".spr_jax.lock")
    r = subprocess.run([sys.executable, str(script), str(work)], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert open(work / "metrics.jsonl").read() == open(undisturbed / "metrics.jsonl").read()
    assert summary_without_walls(work) == summary_without_walls(undisturbed)


def _signal_main_thread(sig):
    signal.pthread_kill(threading.main_thread().ident, sig)


def test_the_api_s_signal_handling_never_ends_the_process_and_gives_the_handlers_back():
    """interrupt.handled() (spr_jax.run, spr_jax.compare): with no work in progress a signal raises RunStopped at
    once; in a deferred scope it is acknowledged and raised at the safe point, a second one at once; afterwards
    Python's own handling is back. A handler of the caller's is left alone."""
    from spr_jax import interrupt
    from spr_jax.errors import RunStopped
    # handled() takes only signals at Python's own handling; a test run in the background of a shell starts with
    # SIGINT ignored (and under nohup SIGHUP), so Python's own is set for the test and the original put back.
    original = {s: signal.getsignal(s) for s in interrupt.SIGNALS}
    for s in interrupt.SIGNALS:
        signal.signal(s, signal.default_int_handler if s == signal.SIGINT else signal.SIG_DFL)
    try:
        _signal_handling_checks(interrupt, RunStopped)
    finally:
        for s, handler in original.items():
            signal.signal(s, handler)


def _signal_handling_checks(interrupt, RunStopped):
    # (each signal goes to the main thread, where its handler runs: os.kill may hand it to another thread)
    before = {s: signal.getsignal(s) for s in interrupt.SIGNALS}
    with pytest.raises(RunStopped, match=r"^interrupted \(SIGTERM\) with no work in progress; nothing was lost$") as e:
        with interrupt.handled():
            _signal_main_thread(signal.SIGTERM)
            time.sleep(5)  # (the handler raises within)
    assert e.value.exit_status == 143
    with interrupt.handled(), interrupt.during("spr, noise 0.4, seed 1 (run 1 of 2)"):
        with pytest.raises(RunStopped, match=r"^interrupted \(SIGINT\) during spr, noise 0.4, seed 1 \(run 1 of 2\); "
                                             r"after the round; run the same command to resume$"):
            with interrupt.deferred("after this round", kept="the rounds done are kept", done="after the round"):
                _signal_main_thread(signal.SIGINT)
                time.sleep(0.5)  # acknowledged, not raised: the scope's end is the safe point
        with pytest.raises(RunStopped, match=r"^interrupted again \(SIGINT\) during spr, noise 0.4, seed 1 "
                                             r"\(run 1 of 2\); stopped at once, the rounds done are kept"):
            with interrupt.deferred("after this round", kept="the rounds done are kept", done="after the round"):
                _signal_main_thread(signal.SIGINT)  # (the first signal is still on record: this is the second)
                time.sleep(5)
    assert {s: signal.getsignal(s) for s in interrupt.SIGNALS} == before
    with pytest.raises(KeyboardInterrupt):  # Python's Ctrl-C again
        _signal_main_thread(signal.SIGINT)
        time.sleep(5)
    mine = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: mine.append(signum))
    try:
        with interrupt.handled():
            _signal_main_thread(signal.SIGTERM)
            time.sleep(0.2)
        assert mine == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- storage ---------------------------------------------------------------------------------------------

def test_a_full_disk_is_one_line_and_the_run_resumes_once_there_is_space(tmp_path, undisturbed):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small filesystem here (needs root)")
    try:
        work = disk / "w"
        r = launch(TINY, f"--workdir={work}")
        assert r.returncode == 1, r.stderr[-3000:]
        assert_short(r.stderr, "error: cannot write ")
        assert "no space left on the device" in r.stderr and str(work) in r.stderr
        assert not glob.glob(str(work / "**" / "*orbax-checkpoint-tmp*"), recursive=True)
        subprocess.run(["mount", "-o", "remount,size=200m", str(disk)], check=True)
        r = launch(TINY, f"--workdir={work}")
        assert r.returncode == 0, r.stderr[-3000:]
        assert summary_without_walls(work) == summary_without_walls(undisturbed)
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_full_disk_through_spr_jax_run_is_a_one_line_spr_jax_error(tmp_path, undisturbed, capfd):
    """The Python API raises spr_jax.WriteFailed (the line launch.py prints, not a raw OSError, no orbax
    tracebacks on stderr); with space again, the same call resumes to the undisturbed run's files."""
    import spr_jax
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small filesystem here (needs root)")
    try:
        work = disk / "w"
        with pytest.raises(spr_jax.WriteFailed) as e:
            spr_jax.run(spr_jax.load_config("tiny"), str(work), progress=False)
        assert str(e.value).startswith(f"cannot write {work}") and str(e.value).endswith("no space left on the device")
        assert e.value.exit_status == 1 and "resumes" in e.value.hint and "\n" not in str(e.value)
        assert isinstance(e.value.__context__, Exception)  # the cause, kept for debugging
        assert "Traceback" not in capfd.readouterr().err
        assert not glob.glob(str(work / "**" / "*orbax-checkpoint-tmp*"), recursive=True)
        subprocess.run(["mount", "-o", "remount,size=200m", str(disk)], check=True)
        spr_jax.run(spr_jax.load_config("tiny"), str(work), progress=False)
        assert open(work / "metrics.jsonl").read() == open(undisturbed / "metrics.jsonl").read()
        assert summary_without_walls(work) == summary_without_walls(undisturbed)
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


@pytest.mark.parametrize("kind", ["file", "read-only"])
def test_an_unusable_workdir_is_one_line_from_launch_and_from_spr_jax_run(tmp_path, kind):
    """A workdir that is a file or read-only (it used to be a raw FileExistsError / OSError traceback from
    spr_jax.run): the same one line and hint from launch.py (exit 2) and spr_jax.run (UserError), nothing
    written (tests/test_api.py tries spr_jax.compare and a workdir that cannot be created too)."""
    import spr_jax
    work = tmp_path / "w"
    if kind == "file":
        work.write_text("x")
    else:
        work.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(work)],
                          capture_output=True).returncode:
            if os.geteuid() == 0:
                pytest.skip("cannot mount a read-only filesystem here")
            work.chmod(0o555)  # (root writes anyway, hence the mount)
    try:
        r = launch(TINY, f"--workdir={work}")
        assert r.returncode == 2
        assert_short(r.stderr, f"error: --workdir={work} {'is a file' if kind == 'file' else 'is not writable'}")
        with pytest.raises(spr_jax.UserError) as e:
            spr_jax.run(spr_jax.load_config("tiny"), str(work), progress=False)
        assert lines_of(r.stderr) == [f"error: {e.value}", f"hint: {e.value.hint}"]
        assert (work.read_text() == "x") if kind == "file" else (os.listdir(work) == [])
    finally:
        if kind == "read-only":
            subprocess.run(["umount", str(work)], capture_output=True)
            work.chmod(0o755)


def test_damaged_outputs_of_a_finished_run_are_rewritten_from_its_checkpoint(tmp_path, undisturbed):
    import shutil
    work = tmp_path / "copy"
    shutil.copytree(undisturbed, work)
    records = [json.loads(line) for line in open(work / "metrics.jsonl")]
    stream = json.load(open(work / "stream.json"))
    summary = open(work / "summary.json").read()
    with open(work / "metrics.jsonl", "r+") as f:
        f.truncate(500)
    (work / "stream.json").write_text("{not json")
    r = launch(TINY, f"--workdir={work}")
    assert r.returncode == 0 and "rewritten" in r.stdout and "finished" in r.stdout, r.stderr[-2000:]
    assert [json.loads(line) for line in open(work / "metrics.jsonl")] == records
    assert json.load(open(work / "stream.json")) == stream
    assert open(work / "summary.json").read() == summary
    before = file_digests(work)
    r = launch(TINY, f"--workdir={work}")
    assert r.returncode == 0 and "rewritten" not in r.stdout
    assert file_digests(work) == before


def test_a_finished_run_s_config_and_summary_are_checked_and_rewritten_with_one_warning_each(tmp_path, undisturbed):
    """config.json unreadable, summary.json readable but edited (its final accuracy): both found on the rerun
    of the finished run's command, rewritten with one warning line each; read_run sees the config again."""
    import shutil
    import spr_jax
    work = tmp_path / "copy"
    shutil.copytree(undisturbed, work)
    config = json.load(open(work / "config.json"))
    (work / "config.json").write_text('{"config": ')
    edited = json.load(open(work / "summary.json"))
    edited["final_accuracy"] = 0.99
    (work / "summary.json").write_text(json.dumps(edited, indent=1))
    assert spr_jax.read_run(str(work)).config is None
    r = launch(TINY, f"--workdir={work}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    warnings = [line for line in r.stdout.splitlines() if line.startswith("warning: ")]
    assert warnings == [f"warning: {name} did not match the finished run's checkpoint; rewritten from it"
                        for name in ("summary.json", "config.json")], r.stdout[-3000:]
    assert json.load(open(work / "config.json")) == config
    assert summary_without_walls(work) == summary_without_walls(undisturbed)
    assert open(work / "metrics.jsonl").read() == open(undisturbed / "metrics.jsonl").read()
    assert spr_jax.read_run(str(work)).config == config

    (work / "config.json").write_text(json.dumps({**config, "config": {}}))  # readable, not this run's
    r = launch(TINY, f"--workdir={work}")
    assert r.returncode == 0 and "nothing to do" in r.stdout, r.stderr[-3000:]
    assert [line for line in r.stdout.splitlines() if line.startswith("warning: ")] == [
        "warning: config.json did not match the finished run's checkpoint; rewritten from it"]
    assert json.load(open(work / "config.json")) == config
    before = file_digests(work)
    r = launch(TINY, f"--workdir={work}")
    assert r.returncode == 0 and "rewritten" not in r.stdout and "warning" not in r.stdout
    assert file_digests(work) == before


def test_a_damaged_expert_cache_entry_is_recomputed_with_one_warning(tmp_path, undisturbed):
    """A truncated entry and one overwritten with garbage (numpy used to stop the run, advising allow_pickle)
    are misses: moved aside, recomputed, one warning line each, and the run ends as the undamaged one."""
    import shutil
    import numpy as np
    cache = tmp_path / "cache"
    shutil.copytree(undisturbed / "expert_cache", cache)
    entries = sorted(glob.glob(str(cache / "*" / "*.npz")))
    damaged = {entries[0]: "truncated", entries[5]: "garbage"}
    originals = {}
    for path, damage in damaged.items():
        with np.load(path) as f:
            originals[path] = {k: f[k] for k in f.files}
        with open(path, "r+b") as f:
            if damage == "truncated":
                f.truncate(200)
            else:
                f.write(os.urandom(300))
    r = launch(TINY, f"--config.cache.dir={cache}", f"--workdir={tmp_path / 'w'}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "allow_pickle" not in r.stderr
    warnings = [line for line in messages(r.stderr) if line.startswith("warning: ")]
    assert len(warnings) == 2 and len(messages(r.stderr)) == 2, r.stderr[-3000:]
    for path in damaged:
        assert any(w.startswith(f"warning: expert cache: {path} cannot be read") and
                   w.endswith(f"moved aside to {path}.corrupt, it will be recomputed") for w in warnings), warnings
        assert os.path.exists(path + ".corrupt")
        with np.load(path) as f:  # recomputed: the same outputs as before the damage
            assert set(f.files) == set(originals[path])
            for k in f.files:
                np.testing.assert_array_equal(f[k], originals[path][k])
    assert "expert cache: 12 chunks reused, 2 trained" in r.stdout
    assert open(tmp_path / "w" / "metrics.jsonl").read() == open(undisturbed / "metrics.jsonl").read()
    assert summary_without_walls(tmp_path / "w") == summary_without_walls(undisturbed)


def test_temporaries_of_writes_killed_midway_are_removed_on_the_next_start(tmp_path, undisturbed):
    """What a kill -9 during an atomic write leaves (fingerprint.json's temporary in checkpoints/, stream.json's
    in the workdir, an unfinished orbax step) is removed when the next run takes the workdir."""
    import shutil
    work = tmp_path / "copy"
    shutil.copytree(undisturbed, work)
    before = file_digests(work)
    leftovers = [work / "checkpoints" / f"fingerprint.json.{'0f' * 16}.tmp", work / f"stream.json.{'a1' * 16}.tmp",
                 work / "checkpoints" / "14.orbax-checkpoint-tmp-1712345678" / "meta"]
    for path in leftovers:
        path.parent.mkdir(exist_ok=True)
        path.write_text("{half")
    r = launch(TINY, f"--workdir={work}")  # a finished run: nothing to do, but it takes the workdir
    assert r.returncode == 0 and "nothing to do" in r.stdout, r.stderr[-3000:]
    assert file_digests(work) == before  # the leftovers gone, nothing else touched
    assert not (work / "checkpoints" / "14.orbax-checkpoint-tmp-1712345678").exists()


def test_remove_temporaries_takes_only_atomic_writes_temporaries(tmp_path):
    from spr_jax import files
    names = [f"summary.json.{'c3' * 16}.tmp", "notes.tmp", f"data.{'c3' * 15}.tmp", "summary.json"]
    for name in names:
        (tmp_path / name).write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / names[0]).write_text("x")
    assert files.remove_temporaries(tmp_path) == [names[0]]
    assert sorted(os.listdir(tmp_path)) == sorted(names[1:] + ["sub"]) and (tmp_path / "sub" / names[0]).exists()


# --- divergence and meaningless runs -----------------------------------------------------------------------

def test_a_diverging_expert_stops_the_run_before_anything_non_finite_is_written(tmp_path):
    work = tmp_path / "w"
    r = launch(TINY, "--config.ssl.lr=1e8", f"--workdir={work}")
    assert r.returncode == 3, r.stderr[-3000:]
    assert_short(r.stderr, "diverged: the expert of chunk 0")
    assert "config.ssl.lr" in r.stderr
    no_nan_on_disk(work)
    assert not glob.glob(str(work / "expert_cache" / "*" / "*.npz"))
    assert not glob.glob(str(work / "checkpoints" / "[0-9]*"))


def assert_diverged(r, work, first, fields):
    """Exit status 3 with one line starting with `first` and a hint naming `fields` (the likely one first), no
    traceback; the run's files written, summary.json's "diverged" and last warning carrying the same text."""
    assert r.returncode == 3, r.stderr[-3000:]
    assert_short(r.stderr, first)
    line, hint = lines_of(r.stderr)[-2:]
    assert hint.startswith("hint: check config.") and [hint.find(f"config.{f}=") for f in fields] == sorted(
        hint.find(f"config.{f}=") for f in fields) and all(f"config.{f}=" in hint for f in fields), hint
    summary = json.load(open(work / "summary.json"))
    assert summary["diverged"]["message"] == line and f"hint: {summary['diverged']['hint']}" == hint
    assert summary["diverged"]["fields"] == list(fields) and summary["warnings"][-1] == line
    assert (work / "summary.png").exists() and (work / "metrics.jsonl").exists()
    no_nan_on_disk(work)
    return summary


def test_a_collapsed_base_ends_with_exit_status_3_naming_ssl_lr_and_so_does_its_rerun(tmp_path):
    """ssl.lr=1e4 collapses the experts (every feature alike): the filter keeps nothing, the classifier is never
    fine-tuned, the accuracy is at chance. It used to exit 0 with a warning pointing at "noise 0.0"."""
    work = tmp_path / "w"
    r = launch(TINY, "--config.ssl.lr=1e4", f"--workdir={work}")
    summary = assert_diverged(r, work, "collapsed: the final accuracy 10.0% is at chance",
                              ["ssl.lr", "ssl.temperature"])
    assert "the filter kept 0 samples over 14 chunks" in summary["diverged"]["message"]
    warnings = summary["warnings"]
    assert any("kept no sample" in w for w in warnings) and any("not fine-tuned" in w for w in warnings)
    assert not any("noise 0.0" in w for w in warnings)  # (the stream is 40% noisy)
    assert "warning: " in r.stdout + r.stderr
    evals = [json.loads(line) for line in open(work / "metrics.jsonl") if '"eval"' in line]
    assert all(e.get("warnings") for e in evals)
    before = file_digests(work)
    again = launch(TINY, "--config.ssl.lr=1e4", f"--workdir={work}")  # a finished run that diverged: the same end
    assert again.returncode == 3 and lines_of(again.stderr)[-2:] == lines_of(r.stderr)[-2:], again.stderr[-2000:]
    assert "nothing to do" in again.stdout and file_digests(work) == before


def test_an_exploding_fine_tune_ends_with_exit_status_3_naming_eval_lr(tmp_path):
    """eval.lr=1e4: fine-tune losses of about 1e17 at every evaluation (it used to exit 0, warning only at the
    evaluations whose classifier predicted one class)."""
    work = tmp_path / "w"
    r = launch(TINY, "--config.eval.lr=1e4", f"--workdir={work}")
    summary = assert_diverged(r, work, "diverged: the fine-tune's loss reached", ["eval.lr", "eval.clip"])
    assert "is at chance" in summary["diverged"]["message"]
    assert any("predicts class" in w and "config.eval.lr" in w for w in summary["warnings"])


def test_an_exploding_online_learner_ends_with_exit_status_3_naming_online_lr(tmp_path):
    """online.lr=0.1 (ER): finite losses of 12-33 x ln K from the first chunk and chance accuracy, which used to
    exit 0 (only a non-finite loss stopped an online learner). (Tiny's ER and fine-tuning at the default rate
    run to their end, not diverged, in tests/test_plugins.py.)"""
    work = tmp_path / "w"
    r = launch(TINY, "--config.protocol=online", "--config.filter.kind=none", "--config.buffer.policy=reservoir",
               "--config.online.lr=0.1", f"--workdir={work}")
    summary = assert_diverged(r, work, "diverged: the online learner's loss reached", ["online.lr"])
    assert "(5 x ln 10, where a fresh classifier starts)" in summary["diverged"]["message"]


@pytest.mark.parametrize("temperature, first", [
    ("1e-3", "diverged: the experts' self-supervised loss ended above 6.55"),  # finite, 1.4-1.9x no learning
    ("1e-30", "diverged: the base's self-supervised training gave a non-finite optimizer state at chunk 1"),
])
def test_a_tiny_temperature_names_ssl_temperature_first(tmp_path, temperature, first):
    """The hint named config.ssl.lr (1e-30: a ValueError traceback from the checkpoint after the experts)."""
    work = tmp_path / "w"
    r = launch(TINY, f"--config.ssl.temperature={temperature}", f"--workdir={work}")
    if temperature == "1e-3":
        assert_diverged(r, work, first, ["ssl.temperature", "ssl.lr"])
        assert "warning: the experts' self-supervised loss ended above" in r.stdout  # said once the experts end
    else:  # non-finite: stopped at once, nothing of it written
        assert r.returncode == 3, r.stderr[-3000:]
        assert_short(r.stderr, first)
        assert lines_of(r.stderr)[-1].startswith("hint: check config.ssl.temperature=1e-30 (the default is 0.5) "
                                                 "first, then config.ssl.lr=0.0003 (its default)")
        assert not os.path.exists(work / "summary.json") and not glob.glob(str(work / "checkpoints" / "[0-9]*"))
        no_nan_on_disk(work)


def test_a_clean_stream_that_spr_s_filter_starves_ends_with_exit_status_3_and_says_why(tmp_path):
    """At noise 0.0 the centrality filter keeps (almost) nothing (docs/algorithm.md): the accuracy is at chance
    and the hint points to filter.kind=none rather than to fields at their defaults."""
    work = tmp_path / "w"
    r = launch(TINY, "--config.noise.rate=0.0", f"--workdir={work}")
    assert r.returncode == 3, r.stderr[-3000:]
    assert_short(r.stderr, "collapsed: the final accuracy")
    assert lines_of(r.stderr)[-1].endswith("for a clean-stream baseline use --config.filter.kind=none")
    assert json.load(open(work / "summary.json"))["diverged"]["message"] == lines_of(r.stderr)[-2]


def test_a_compare_marks_a_diverged_cell_and_ends_with_exit_status_3(tmp_path):
    work = tmp_path / "cmp"
    r = launch(TINY, "--mode=compare", "--methods=spr", "--sweep=eval.lr=0.002,10000.0",
               f"--config.cache.dir={tmp_path / 'cache'}", f"--workdir={work}")
    assert r.returncode == 3, r.stderr[-3000:]
    assert_short(r.stderr, "diverged: 1 of 2 runs of the comparison diverged or collapsed (spr [eval.lr=10000.0] "
                           "at noise 0.4 seed 0)")
    doc = json.load(open(work / "compare.json"))
    healthy, bad = doc["cells"]
    assert healthy["diverged"] == [] and [d["seed"] for d in bad["diverged"]] == [0]
    assert bad["diverged"][0]["message"].startswith("diverged: the fine-tune's loss reached")
    assert "eval.lr" in bad["diverged"][0]["hint"] and [r["diverged"] is None for r in doc["runs"]] == [True, False]
    md = open(work / "compare.md").read()
    assert "| spr [eval.lr=0.002] | 0.4 |" in md and "| spr [eval.lr=10000.0] (diverged: note 1) | 0.4 |" in md
    assert "- note 1: spr [eval.lr=10000.0], noise rate 0.4, seed 0: diverged: the fine-tune's loss" in md
    assert (work / "compare.png").exists()


def test_an_interrupted_compare_says_which_method_rate_and_seed_was_running(tmp_path):
    work = tmp_path / "cmp"
    proc = start(TINY, "--mode=compare", "--methods=spr", "--seeds=1", "--rates=0.4",
                 f"--config.cache.dir={tmp_path / 'cache'}", f"--workdir={work}")
    wait_for(lambda: glob.glob(str(work / "spr" / "rate_0.4" / "seed_1" / "checkpoints" / "[0-9]*")), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert_short(err, "interrupted (SIGTERM) during spr, noise 0.4, seed 1 (run 1 of 1); after chunk ")
    assert lines_of(err)[-1].endswith("(checkpointed); run the same command to resume"), err[-2000:]


def test_a_second_signal_in_a_compare_names_the_run_it_stopped(tmp_path):
    """The immediate stop of a second Ctrl-C names the method, rate and seed too (it used to say only
    'interrupted again (SIGINT)')."""
    work = tmp_path / "cmp"
    run = Watched(TINY, "--mode=compare", "--methods=spr", "--seeds=1", "--rates=0.4", "--config.expert.epochs=3000",
                  f"--config.cache.dir={tmp_path / 'cache'}", f"--workdir={work}")
    wait_for(lambda: os.path.exists(work / "spr" / "rate_0.4" / "seed_1" / "config.json"), run.proc)  # experts next
    time.sleep(0.5)
    run.proc.send_signal(signal.SIGINT)
    wait_for(lambda: "SIGINT received" in run.stderr, run.proc, timeout=60)
    run.proc.send_signal(signal.SIGINT)
    assert run.wait(timeout=60) == 130, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    lines = messages(run.stderr)
    assert lines[-2:] == ["SIGINT received: stopping after this expert round; Ctrl-C again stops now",
                          "error: interrupted again (SIGINT) during spr, noise 0.4, seed 1 (run 1 of 1); stopped at "
                          "once, the experts of finished rounds are cached; run the same command to resume"], lines


def test_the_divergence_rule_on_records():
    """The rule's thresholds (spr_jax/run_checks.py, where the measurements they come from are listed)."""
    from spr_jax import run_checks as rc
    no_learning = rc.nt_xent_of_no_learning(40)  # ln 79
    assert rc.expert_divergence([no_learning, 1.49 * no_learning, float("nan")], 40) is None
    assert "in 1 of 2 chunks" in rc.expert_divergence([no_learning, 1.51 * no_learning], 40)
    chunks = [{"chunk": c, "base_loss": v} for c, v in enumerate([4.0, 4.2, None, 5.9])]
    assert rc.base_divergence(chunks, 40, 40) is None
    assert "grew from 3 (chunk 0) to 4.6 (chunk 1)" in rc.base_divergence([{"chunk": 0, "base_loss": 3.0},
                                                                          {"chunk": 1, "base_loss": 4.6}], 40, 40)
    assert "reached 6.6 at chunk 1" in rc.base_divergence([{"chunk": 0, "base_loss": 4.4},
                                                           {"chunk": 1, "base_loss": 6.6}], 40, 40)
    evals = [{"after_task": 0, "finetune_loss": [2.3, 1.0]}, {"after_task": 1, "finetune_loss": None}]
    assert rc.finetune_divergence(evals, 10) is None
    assert "above 11.5" in rc.finetune_divergence([{"after_task": 0, "finetune_loss": [11.6, 1.0]}], 10)
    assert "grew from 0.5 to 1.6" in rc.finetune_divergence([{"after_task": 2, "finetune_loss": [0.5, 1.6]}], 10)
    online = [{"chunk": c, "task": c // 2, "base_loss": v} for c, v in enumerate([1.5, 2.0, 13.0, 3.0])]
    assert rc.online_divergence(online, 10) is None  # 13 > 5 ln 10, but on a new task's first chunk
    online[3]["base_loss"] = 11.6
    assert "reached 11.6 at chunk 3, above 11.5" in rc.online_divergence(online, 10)
    chance, limit = rc.chance_level(np.repeat(np.arange(10), 20), [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)])
    assert chance == 0.1 and limit == pytest.approx(0.1 + 3 * np.sqrt(0.09 / 200))  # tiny: 16.4%
    assert rc.chance_level(np.repeat(np.arange(10), 20), [(0, 1)])[0] == 0.5  # only the episodes' classes count
    assert rc.likely_fields({"ssl.lr": 3e-4, "ssl.temperature": 1e-6}, rc.SSL_FIELDS) == (
        "check config.ssl.temperature=1e-06 (the default is 0.5) first, then config.ssl.lr=0.0003 (its default)")


def test_the_chance_rule_needs_a_learnable_stream():
    """At 90% symmetric noise on 10 classes a right label is no longer the most frequent: no chance verdict."""
    import spr_jax
    from spr_jax import run_checks, run_setup
    assert run_checks.learnable(run_setup.prepare_inputs(spr_jax.load_config("tiny")))
    assert not run_checks.learnable(run_setup.prepare_inputs(spr_jax.load_config("tiny", {"noise.rate": 0.9})))


def test_a_healthy_run_has_no_warnings(undisturbed):
    summary = json.load(open(undisturbed / "summary.json"))
    assert summary["warnings"] == [] and summary["diverged"] is None


@pytest.mark.parametrize("override, needles", [
    ("--config.seed=-1", ["config.seed=-1", "outside"]),
    (f"--config.seed={2 ** 40}", [f"config.seed={2 ** 40}", "outside"]),
    ("--config.ssl.lr=nan", ["config.ssl.lr=nan", "not a finite number"]),
    ("--config.eval.lr=inf", ["config.eval.lr=inf", "not a finite number"]),
    ("--config.ssl.lr=-1", ["config.ssl.lr=-1", "must be > 0"]),
    # Once only after the whole expert phase (a ValueError traceback), or a divergence blaming ssl.lr:
    ("--config.checkpoint.keep=0", ["config.checkpoint.keep=0 is outside [1, inf)", "the default is 3"]),
    ("--config.ssl.temperature=0", ["config.ssl.temperature=0.0 is outside (0, inf)", "the default is 0.5"]),
    # Accepted silently (warmup -1 changed the accuracy from 70% to 79.5%):
    ("--config.checkpoint.every_chunks=-2", ["config.checkpoint.every_chunks=-2 is outside [1, inf)"]),
    ("--config.ssl.warmup_epochs=-1", ["config.ssl.warmup_epochs=-1 is outside [0, inf)", "the default is 11"]),
    ("--config.eval.clip=-1", ["config.eval.clip=-1.0 is outside (0, inf)", "the default is 0.5"]),
])
def test_values_out_of_range_are_refused_before_any_work(tmp_path, override, needles):
    work = tmp_path / "w"
    r = launch(TINY, override, f"--workdir={work}")
    assert r.returncode == 2
    assert_short(r.stderr, "error: ")
    for needle in needles:
        assert needle in r.stderr, r.stderr
    assert not work.exists()


# --- plug-ins ----------------------------------------------------------------------------------------------

PLUGINS = textwrap.dedent("""
    import jax.numpy as jnp
    import fifo_buffer
    from spr_jax import buffers

    def nan_for_odd_labels(key, features, labels, *, num_classes):
        return jnp.where(labels % 2 == 1, jnp.nan, 0.9), labels % 2 == 0

    def _admit_all(state, key, c):
        return fifo_buffer.offer(state, key, c.replace(keep=jnp.ones_like(c.keep)))

    ADMITS_UNKEPT = buffers.BufferPolicy(init=fifo_buffer.init, offer=_admit_all, sample=buffers.sample_indices)

    def keep_none(key, features, labels, *, num_classes):
        return jnp.zeros(labels.shape), jnp.zeros(labels.shape, bool)
""")


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugins")
    (folder / "faulty.py").write_text(PLUGINS)
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(folder), os.path.join(ROOT, "examples"), ROOT]))


def test_a_filter_returning_nan_is_refused_on_the_first_round(tmp_path, plugin_env):
    work = tmp_path / "w"
    r = launch(TINY, "--config.filter.kind=faulty:nan_for_odd_labels", f"--workdir={work}", env=plugin_env)
    assert r.returncode == 2, r.stderr[-3000:]
    assert_short(r.stderr, "error: config.filter.kind='faulty:nan_for_odd_labels' returned clean_p=nan")
    assert not glob.glob(str(work / "expert_cache" / "*" / "*.npz"))  # stopped before any expert was kept
    no_nan_on_disk(work)


def test_a_buffer_policy_admitting_unkept_samples_is_refused(tmp_path, plugin_env):
    work = tmp_path / "w"
    r = launch(TINY, "--config.buffer.policy=faulty:ADMITS_UNKEPT", "--config.filter.kind=faulty:keep_none",
               f"--workdir={work}", env=plugin_env)
    assert r.returncode == 2, r.stderr[-3000:]
    assert_short(r.stderr, "error: config.buffer.policy='faulty:ADMITS_UNKEPT' admitted")
    assert not os.path.exists(work / "summary.json")


# --- the command line --------------------------------------------------------------------------------------

def test_a_missing_jax_platform_is_one_line(tmp_path):
    r = launch(TINY, f"--workdir={tmp_path / 'w'}", env=dict(os.environ, JAX_PLATFORMS="cuda"))
    if r.returncode == 0:
        pytest.skip("this machine has a CUDA GPU")
    assert r.returncode == 2
    assert_short(r.stderr, "error: JAX_PLATFORMS=cuda: JAX cannot start this platform here")
    assert not (tmp_path / "w").exists()


def test_a_config_folder_is_one_line_naming_its_files(tmp_path):
    r = launch("--config=configs", f"--workdir={tmp_path / 'w'}")
    assert r.returncode == 2
    assert_short(r.stderr, "error: --config=configs is a folder")
    assert "configs/" in r.stderr and not (tmp_path / "w").exists()


def test_two_expert_fillers_of_one_shared_cache_both_finish_and_a_run_reuses_everything(tmp_path):
    cache = tmp_path / "shared_cache"
    procs = [start(TINY, "--mode=experts", f"--config.cache.dir={cache}", f"--workdir={tmp_path / f'w{i}'}")
             for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    r = launch(TINY, f"--config.cache.dir={cache}", f"--workdir={tmp_path / 'run'}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "14 chunks reused, 0 trained" in r.stdout
