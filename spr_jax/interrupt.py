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

The Python API (spr_jax.run, spr_jax.compare) runs within `handled()`: the same handling for as long as the
call lasts, except that nothing ends the process (a notebook's kernel survives): where launch.py would exit,
RunStopped is raised in the main thread as soon as it runs Python again (a compiled program in progress
finishes first). It takes only signals whose handler is still Python's default, only in the main thread, and
gives them back when the call returns. Outside install() and handled() signals keep Python's behaviour.

`during(text)` names what runs (a comparison's method, rate and seed) in every line. Imports nothing heavy:
launch.py imports it before JAX.
"""
import contextlib
import os
import signal
import sys
import threading
import time

from spr_jax.errors import RunStopped

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_received = []  # the signal numbers acted on since install() / since handled() began
_scopes = []  # (waits_for, kept) of the deferred scopes entered, innermost last
_cleanups = []  # called before an immediate exit (e.g. releasing the workdir lock)
_during = []  # what runs, for the lines ("spr, noise 0.4, seed 1 (run 1 of 3)"), innermost last
_pending = []  # handled(): the RunStopped the main thread is to raise now
_state = {"mode": None,  # "exit" (launch.py's install), "raise" (within handled()) or None (off)
          "taken": (),  # the signals handled now
          "handler_calls": 0}  # handled(): how often the main thread's handler ran
_lock = threading.RLock()  # (re-entrant: the main thread's handler may run while this thread holds it)
_pipe = []  # (read end, write end) of the watcher's wakeup pipe, once made


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


def _where(sep: str = "") -> str:
    """' during spr, noise 0.4, seed 1 (run 1 of 3)' (+ sep) when something named runs, else ''."""
    return f" during {_during[-1]}{sep}" if _during else ""


def _stop_now(line: str, status: int, error: bool) -> None:
    """launch.py: exit at once with `line`; the Python API: the main thread's handler raises it."""
    if _state["mode"] == "exit":
        _exit_now(("error: " if error else "") + line, status)
    _pending[:] = [RunStopped(line, exit_status=status)]


def _on_signal(signum: int) -> None:
    with _lock:
        if signum not in _state["taken"]:  # (another handler's signal, or one read after handled() ended)
            return
        _received.append(signum)
        name = _name(signum)
        if not _scopes:
            _stop_now(f"interrupted ({name}){_where(',')} with no work in progress; nothing was lost", 128 + signum,
                      error=False)
            return
        waits_for, kept = _scopes[-1]
        if len(_received) > 1:
            _stop_now(f"interrupted again ({name}){_where()}; stopped at once, {kept}; run the same command to "
                      f"resume", 128 + signum, error=True)
            return
        again = "Ctrl-C again" if signum == signal.SIGINT else "a second signal"
        when = "now" if _state["mode"] == "exit" else "as soon as the computation in progress returns"
    # (said without the lock: the main thread may hold tqdm's while its handler waits for this one)
    _say(f"{name} received: stopping {waits_for}; {again} stops {when}")


def _watch(read_fd: int) -> None:
    while True:
        try:
            data = os.read(read_fd, 64)
        except InterruptedError:
            continue
        for signum in data:
            _on_signal(signum)


def _wakeup_pipe() -> int:
    """The write end of the pipe the watcher thread reads (made, and the thread started, once)."""
    if not _pipe:
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)  # (set_wakeup_fd requires it)
        threading.Thread(target=_watch, args=(read_fd,), name="spr_jax-signals", daemon=True).start()
        _pipe[:] = [read_fd, write_fd]
    return _pipe[1]


def install() -> None:
    """From now on SIGINT, SIGTERM and SIGHUP stop this process cleanly (see the module's doc). Main thread."""
    if _state["mode"] == "exit":
        return
    # Python's C-level handler writes each signal's number to the wakeup pipe the moment it arrives; the
    # watcher thread reads it. The Python-level handler (run by the main thread, late if it is inside XLA) only
    # keeps the signal from raising KeyboardInterrupt or killing the process.
    with _lock:
        _state.update(mode="exit", taken=SIGNALS)
    for s in SIGNALS:
        signal.signal(s, lambda signum, frame: None)
    signal.set_wakeup_fd(_wakeup_pipe(), warn_on_full_buffer=False)


def _raise_pending(signum, frame) -> None:
    """handled()'s handler, run by the main thread: raises the stop the watcher decided for this signal."""
    with _lock:
        _state["handler_calls"] += 1
        calls, direct = _state["handler_calls"], _state.get("direct", False)
    if direct:  # no watcher thread (another owner of the wakeup fd): decide here
        _on_signal(signum)
    else:  # every call follows at least one more signal: wait for the watcher to have read it
        deadline = time.monotonic() + 1.0
        while len(_received) < calls and time.monotonic() < deadline:
            time.sleep(0.001)
    with _lock:
        stop = _pending.pop() if _pending else None
    if stop is not None:
        raise stop


@contextlib.contextmanager
def handled():
    """Within: the Python API's handling of SIGINT, SIGTERM and SIGHUP (the module's doc). Nothing under
    launch.py (install() handles them for the whole process), outside the main thread, or for a signal the
    caller gave a handler of their own or ignores (e.g. nohup's SIGHUP)."""
    if _state["mode"] is not None or threading.current_thread() is not threading.main_thread():
        yield
        return
    defaults = {signal.SIGINT: signal.default_int_handler}
    taken = tuple(s for s in SIGNALS if signal.getsignal(s) is defaults.get(s, signal.SIG_DFL))
    if not taken:
        yield
        return
    previous_fd = signal.set_wakeup_fd(_wakeup_pipe(), warn_on_full_buffer=False)
    direct = previous_fd != -1
    if direct:  # another owner's (an asyncio loop's): give it back, and decide in the handler instead
        signal.set_wakeup_fd(previous_fd)
    with _lock:
        _received.clear()
        _pending.clear()
        _state.update(mode="raise", taken=taken, handler_calls=0, direct=direct)
    previous = {s: signal.signal(s, _raise_pending) for s in taken}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if not direct:
            signal.set_wakeup_fd(-1)
        with _lock:
            _state.update(mode=None, taken=(), direct=False)
            _received.clear()
            _pending.clear()


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
def during(text: str):
    """Within: every line of a stop names `text` ("interrupted (SIGINT) during <text>; after chunk ...")."""
    with _lock:
        _during.append(text)
    try:
        yield
    finally:
        with _lock:
            _during.pop()


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
    with _lock:
        stop = _pending.pop() if _pending else None
    if stop is not None:  # (handled(): an immediate stop the main thread's handler has not raised yet)
        raise stop
    if _received:
        signum = _received[0]
        raise RunStopped(f"interrupted ({_name(signum)}){_where(';')} {where}; {then}", exit_status=128 + signum)
