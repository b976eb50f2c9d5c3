"""A write the system refused (a full disk, a quota, a read-only filesystem, an I/O error), reported in one
line naming the path, from launch.py and the Python API alike (errors.WriteFailed, exit status 1): the run's
files are written atomically and an unfinished checkpoint is removed, so once the cause is fixed the same
command resumes. Orbax's writer threads report such a failure too, with tracebacks of their own; those reports
are held back while a run lasts and shown only if the run ends some other way. Light: no JAX.
"""
import contextlib
import errno
import logging
import re
import threading
from typing import Optional

from spr_jax.errors import RunStopped, UserError, WriteFailed

_CAUSES = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
           errno.EROFS: "read-only filesystem", errno.EIO: "input/output error", errno.EACCES: "permission denied"}
HINT = ("free space (or pass another --workdir) and run the same command: it resumes from the last complete "
        "checkpoint, and no file was left half-written")


def failure(e: BaseException) -> Optional[tuple]:
    """(path, cause) if e, or an exception it was raised from, is an OS error writing a file, as Python or
    orbax/tensorstore report it; else None."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _CAUSES:
            return e.filename or "", _CAUSES[e.errno]
        text = str(e)
        if "No space left on device" in text or ("RESOURCE_EXHAUSTED" in text and "space" in text):
            match = re.search(r'"(/[^"]+)"', text) or re.search(r"(/[^\s'\"]+)", text)
            path = re.sub(r"\.orbax-checkpoint-tmp.*", "", match.group(1)) if match else ""  # the step's folder
            return path, "no space left on the device"
        e = e.__cause__ or e.__context__
    return None


def as_error(e: BaseException) -> Optional[WriteFailed]:
    """WriteFailed for a refused write (see failure), else None."""
    where = failure(e)
    if where is None:
        return None
    path, cause = where
    return WriteFailed(f"cannot write {path or 'to the workdir'}: {cause}", HINT)


class HeldBackgroundErrors:
    """Holds back what background threads report (orbax's absl error logs, uncaught thread exceptions) until
    `release`: a refused write then reads as one line instead of dozens of tracebacks from orbax's writer
    threads; in any other ending the held reports are shown as they would have been."""

    def __init__(self):
        self.held = []
        self._previous_hook = threading.excepthook
        self._filter = logging.Filter()
        self._filter.filter = self._hold_record
        self._logger = logging.getLogger("absl")  # where orbax logs its errors
        self._logger.addFilter(self._filter)
        threading.excepthook = self._hold_exception

    def _hold_record(self, record) -> bool:
        if record.levelno >= logging.ERROR:
            self.held.append(("log", record))
            return False
        return True

    def _hold_exception(self, args) -> None:
        self.held.append(("thread", args))

    def release(self, show: bool) -> None:
        self._logger.removeFilter(self._filter)
        threading.excepthook = self._previous_hook
        if show:
            for kind, item in self.held:
                if kind == "log":
                    self._logger.handle(item)
                else:
                    self._previous_hook(item)
        self.held = []


@contextlib.contextmanager
def one_line():
    """Within (the Python API's run and compare): a refused write raises WriteFailed, its cause kept as the
    exception's context, and the background reports of it are dropped; any other ending shows them."""
    held, show = HeldBackgroundErrors(), True
    try:
        yield
    except (UserError, RunStopped):  # (said in one line already; a UserError may come from an OSError)
        raise
    except Exception as e:  # noqa: BLE001 - only refused writes become WriteFailed
        error = as_error(e)
        if error is None:
            raise
        show = False
        raise error from None  # (the OSError stays reachable as __context__)
    finally:
        held.release(show=show)
