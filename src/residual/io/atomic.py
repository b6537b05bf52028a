"""Write files so that a reader (or Snakemake) never sees a half-written one."""

from __future__ import annotations

import errno
import glob
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

# What a failed write means to a user, by errno, and what to do about it.
_CAUSES = {
    errno.ENOSPC: ("the disk is full", "free space on the disk that holds {folder}"),
    errno.EDQUOT: ("the disk quota is exceeded", "free space in your quota on {folder}"),
    errno.EROFS: ("the file system is read-only", "make {folder} writable, or run the workflow in a writable folder"),
    errno.EACCES: ("permission denied", "make {folder} writable"),
    errno.EPERM: ("permission denied", "make {folder} writable"),
}


class WriteError(OSError):
    """An output could not be written (full disk, read-only or forbidden folder); the message is
    one line naming the file, the cause and what to do. Nothing written before is touched."""


def write_error(path: Path, error: OSError) -> WriteError | None:
    """`error` as a WriteError when its errno (pyarrow's only says it in its message) is one of
    `_CAUSES`, else None."""
    code = error.errno
    if code is None:
        found = re.search(r"errno (\d+)", str(error), re.I)
        code = int(found.group(1)) if found else None
    if code not in _CAUSES:
        return None
    cause, advice = _CAUSES[code]
    wrapped = WriteError(f"cannot write {path}: {cause} ({os.strerror(code)}); {advice.format(folder=path.parent)}, then rerun")
    wrapped.errno = code
    return wrapped


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; on success it gets the umask's mode (`new_file_mode`)
    and is renamed onto `path`.

    On any exception (or if the process dies) only the temporary file is left, under a name
    no rule accepts as output; an existing `path` is untouched until the rename. Temporaries
    of `path` left by writers that were killed are deleted first (`remove_stale_temporaries`).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in remove_stale_temporaries(path):
            log.warning("removed %s, left by a writer that was killed", stale)
        yield tmp
        # Writers differ (safetensors creates its file 0600 whatever the umask, pyarrow follows
        # it): every result gets the mode the umask gives a new file, so a shared folder reads all.
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except OSError as error:
        wrapped = None if isinstance(error, WriteError) else write_error(path, error)
        if wrapped is None:
            raise
        raise wrapped from error
    finally:
        tmp.unlink(missing_ok=True)


def new_file_mode() -> int:
    """0666 less the process's umask: the mode `open` gives a new file."""
    umask = os.umask(0o022)  # the only way to read the umask is to set it, then restore it
    os.umask(umask)
    return 0o666 & ~umask


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete `.{name}.{pid}.tmp` siblings of `path` whose writer no longer runs; returns them.

    A writer killed by SIGKILL (or a node crash) cannot clean up, and a unit file's temporary is
    as large as the file. Snakemake's lock guarantees one writer per output, so a temporary whose
    pid is not a running process on this machine is garbage.
    """
    removed = []
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = candidate.name[len(path.name) + 2 : -len(".tmp")]
        if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
