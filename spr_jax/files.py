"""Atomic file writes: a reader sees the old file or the new one, never half of one, and a failed write
(a full disk) leaves neither a half file nor its temporary behind. A killed write (kill -9, power loss)
leaves its temporary, which `remove_temporaries` clears on the next start."""
import contextlib
import os
import re
import uuid

# write_atomic's temporaries: the target's name, a uuid4 in hex, .tmp
_TEMPORARY = re.compile(r".+\.[0-9a-f]{32}\.tmp")


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


def remove_temporaries(folder) -> list:
    """Removes the temporaries of write_atomic calls killed mid-write in `folder` (not its subfolders) and
    returns their names. Only for a folder no other process writes to (a workdir this process has locked),
    since another writer's temporary would otherwise vanish before its rename."""
    folder = str(folder)
    if "://" in folder or not os.path.isdir(folder):  # (object stores write no temporaries)
        return []
    removed = []
    for name in sorted(os.listdir(folder)):
        if _TEMPORARY.fullmatch(name):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, name))
                removed.append(name)
    return removed
