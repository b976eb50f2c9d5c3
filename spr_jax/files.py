"""Atomic file writes: a reader sees the old file or the new one, never half of one, and a failed write
(a full disk) leaves neither a half file nor its temporary behind."""
import contextlib
import os
import uuid


def write_atomic(path, text: str) -> None:
    path = str(path)
    if "://" in path:  # object stores (gs://) make single-object writes atomic themselves
        from etils import epath
        epath.Path(path).write_text(text)
        return
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
