"""Graceful stops on SIGINT (Ctrl-C) and SIGTERM (schedulers, pod preemption).

A signal only records itself; the run loop calls `check(where)` at its safe points (after an expert round
is cached, after a segment of chunks is checkpointed), which raises RunStopped there, after the work so
far is on disk. A second signal stops at once (the last checkpoint stays; an unfinished one is never
picked up, since orbax only publishes a checkpoint when it is complete). The exit status is 128 + the
signal's number (130 for SIGINT, 143 for SIGTERM), as a shell reports a process killed by it.
"""
import contextlib
import os
import signal
import sys
import threading

from spr_jax.errors import RunStopped

_received = []  # the signal numbers received since `handling()` began


def _handler(signum, frame):
    del frame
    _received.append(signum)
    if len(_received) > 1:  # asked twice: stop now
        print(f"error: interrupted again ({signal.Signals(signum).name}); stopped at once, the last complete "
              f"checkpoint is kept; run the same command to resume", file=sys.stderr, flush=True)
        os._exit(128 + signum)


@contextlib.contextmanager
def handling():
    """Within: SIGINT and SIGTERM are recorded for `check` instead of stopping the process at once.
    (Main thread only; elsewhere, e.g. inside a test runner's worker thread, it does nothing.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
    _received.clear()
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _received.clear()


def requested() -> bool:
    return bool(_received)


def check(where: str) -> None:
    """Raises RunStopped if a signal arrived; `where` says what is done ("after chunk 7")."""
    if _received:
        signum = _received[0]
        raise RunStopped(f"interrupted ({signal.Signals(signum).name}) {where}; run the same command to resume",
                         exit_status=128 + signum)
