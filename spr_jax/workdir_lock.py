"""One run per workdir: an exclusive lock on WORKDIR/.spr_jax.lock, held while a run writes there.

The lock is flock(2) on an open file, so the kernel drops it when its process dies however it dies
(kill -9 included): a lock is never stale. On NFS, Linux maps flock onto the server's byte-range locks, so
it also excludes a process on another client; a client that crashes keeps the lock until the server's
lease expires (about 90 s). The file names its holder (host, pid, command, start time) for the refusal
message; the holder removes it before unlocking, and a process that locked a removed file retries, so the
workdir holds no lock file between runs. On a multi-host run only process 0 writes, so only process 0 locks.
Once locked, the temporaries of a killed holder's atomic writes are removed (spr_jax/files.py).
"""
import contextlib
import fcntl
import json
import os
import socket
import sys
import tempfile
import threading
import time

from spr_jax import files
from spr_jax import interrupt
from spr_jax.errors import UserError

LOCK_NAME = ".spr_jax.lock"


def _holder(path: str) -> str:
    try:
        with open(path) as f:
            info = json.load(f)
        return (f"pid {info['pid']} on {info['host']}, started {info['started']}: "
                f"{' '.join(info.get('argv', []))[:160]}")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (it has not written its name yet)"


def check_workdir(path: str) -> None:
    """The workdir exists as a writable folder, or can be created (nothing is created here); else UserError in
    one line. launch.py calls it first thing, and `hold` before it takes the lock, so the Python API refuses
    an unusable workdir with the same line."""
    if not path:
        raise UserError("--workdir is required, e.g. --workdir=/tmp/spr_run")
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"--workdir={path} is a file, not a folder", "pass a folder path")
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UserError(f"--workdir={path} cannot be created: {probe} is a file")
    try:  # a real write (access() says yes to root even where a write fails), removed at once
        os.rmdir(tempfile.mkdtemp(dir=probe, prefix=".spr_jax_probe_"))
    except OSError as e:
        what = "is not writable" if probe == path else "cannot be created"
        raise UserError(f"--workdir={path} {what}: {probe}: {e.strerror}", "pass a folder you can write to") from e


@contextlib.contextmanager
def hold(workdir: str, enabled: bool = True):
    """Within: this process holds WORKDIR's lock, or UserError naming the process that does (or saying why
    WORKDIR cannot be used: check_workdir).

    Creates the workdir if needed; a workdir created here that stays empty is removed again, so a run
    refused before it wrote anything leaves no trace."""
    if not enabled:
        yield
        return
    check_workdir(workdir)
    workdir = os.path.abspath(workdir)
    created = not os.path.exists(workdir)
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_NAME)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"--workdir={workdir} is in use by another run ({_holder(path)})",
                            "wait for it to finish or stop it (it resumes later), or pass another --workdir")
        except OSError as e:  # a filesystem without locks
            os.close(fd)
            raise UserError(f"--workdir={workdir}: cannot lock {path}: {e.strerror}",
                            "use a workdir on a filesystem with file locks (local disk, NFSv4)") from e
        try:  # the holder before us may have removed the file between our open and our lock: retry then
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    release = _releaser(fd, path, workdir, created)
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "argv": sys.argv,
                "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        files.remove_temporaries(workdir)  # only ours can be there now: those of a holder killed mid-write
        with interrupt.on_exit_now(release):  # a signal that stops the process at once leaves no lock file
            yield
    finally:
        release()


def _releaser(fd: int, path: str, workdir: str, created: bool):
    """A function releasing the lock once (from the run's end, or from a signal's immediate exit)."""
    done = threading.Lock()

    def release():
        if not done.acquire(blocking=False):
            return
        # Removed while still held (a process waiting on this file then sees another inode and retries).
        try:
            os.remove(path)
        except OSError:
            pass
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        if created:
            try:
                os.rmdir(workdir)  # only if the run wrote nothing there
            except OSError:
                pass
    return release
