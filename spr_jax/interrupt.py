"""Clean stops on SIGINT (Ctrl-C), SIGTERM (schedulers, preemption) and SIGHUP (a closed terminal), at any moment.

launch.py calls `install()` first thing, before anything heavy is imported. From then on no signal raises
KeyboardInterrupt (which JAX's import can swallow in a garbage-collector callback, or turn into a long
traceback); instead a watcher thread acts on each signal at once, even while the main thread waits on XLA:

- with no work in progress (imports, reading the data, between the runs of a comparison) the process stops at
  once: one line, exit status 128 + the signal's number (130, 143, 129, as a shell reports a process killed
  by it). Nothing is lost: every file is written atomically and a workdir lock is released first.
- inside a `deferred(...)` scope (an expert round, a segment of chunks being replayed) it says at once what it
  waits for ("SIGINT received: stopping after this expert round; Ctrl-C again stops now"), and the run raises
  RunStopped at its next safe point (`check`, after that work is cached or checkpointed) or when the scope
  ends. A second signal stops at once; the last complete checkpoint and cached experts stay.

Without `install()` (the Python API, tests) signals keep Python's behaviour and this module changes nothing.
Imports nothing heavy: launch.py imports it before JAX.
"""
import contextlib
import os
import signal
import sys
import threading

from spr_jax.errors import RunStopped

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_received = []  # the signal numbers received since install()
_scopes = []  # (waits_for, kept) of the deferred scopes entered, innermost last
_cleanups = []  # called before an immediate exit (e.g. releasing the workdir lock)
_lock = threading.Lock()
_installed = []  # the wakeup pipe's write end, once installed


def _name(signum: int) -> str:
    return signal.Signals(signum).name


def _say(line: str) -> None:
    """One line on stderr, clear of any progress bar (tqdm's write clears and redraws them)."""
    try:
        try:  # (tqdm may be absent, or half imported when the signal comes)
            sys.modules["tqdm"].tqdm.write(line, file=sys.stderr)
        except (KeyError, AttributeError):
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed terminal (SIGHUP) has no stderr left to write to
        pass


def _exit_now(line: str, status: int) -> None:
    for fn in reversed(_cleanups):
        try:
            fn()
        except Exception:  # noqa: BLE001 - leaving anyway; a kernel-held lock is released by the exit
            pass
    _say(line)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    os._exit(status)


def _on_signal(signum: int) -> None:
    with _lock:
        _received.append(signum)
        name = _name(signum)
        if not _scopes:
            _exit_now(f"interrupted ({name}) with no work in progress; nothing was lost", 128 + signum)
        waits_for, kept = _scopes[-1]
        if len(_received) > 1:
            _exit_now(f"error: interrupted again ({name}); stopped at once, {kept}; run the same command to "
                      f"resume", 128 + signum)
        again = "Ctrl-C again" if signum == signal.SIGINT else "a second signal"
        _say(f"{name} received: stopping {waits_for}; {again} stops now")


def _watch(read_fd: int) -> None:
    while True:
        try:
            data = os.read(read_fd, 64)
        except InterruptedError:
            continue
        for signum in data:
            if signum in SIGNALS:
                _on_signal(signum)


def install() -> None:
    """From now on SIGINT, SIGTERM and SIGHUP stop this process cleanly (see the module's doc). Main thread."""
    if _installed:
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)  # (set_wakeup_fd requires it)
    # Python's C-level handler writes each signal's number to this pipe the moment it arrives; the watcher
    # thread reads it. The Python-level handler (run by the main thread, late if it is inside XLA) only
    # keeps the signal from raising KeyboardInterrupt or killing the process.
    for s in SIGNALS:
        signal.signal(s, lambda signum, frame: None)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    threading.Thread(target=_watch, args=(read_fd,), name="spr_jax-signals", daemon=True).start()
    _installed.append(write_fd)


@contextlib.contextmanager
def deferred(waits_for: str, kept: str, done: str, then: str = "run the same command to resume"):
    """Within: a signal is acknowledged at once and the run stops at its next `check`, or when the scope ends
    (`done` says what is finished then, `then` what to do). `waits_for`: "after this expert round"; `kept`:
    what an immediate stop keeps ("the experts of finished rounds are cached")."""
    with _lock:
        _scopes.append((waits_for, kept))
    try:
        yield
    finally:
        with _lock:
            _scopes.pop()
    check(done, then)


@contextlib.contextmanager
def on_exit_now(fn):
    """Within: `fn()` is called before a signal stops the process at once (e.g. to release a lock)."""
    _cleanups.append(fn)
    try:
        yield
    finally:
        _cleanups.remove(fn)


def requested() -> bool:
    return bool(_received)


def check(where: str, then: str = "run the same command to resume") -> None:
    """Raises RunStopped if a signal arrived; `where` says what is done ("after chunk 7 of 19 (checkpointed)")."""
    if _received:
        signum = _received[0]
        raise RunStopped(f"interrupted ({_name(signum)}) {where}; {then}",
                         exit_status=128 + signum)
