"""Write files so that a reader (or Snakemake) never sees a half-written one."""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; on success it is renamed onto `path`.

    On any exception (or if the process dies) only the temporary file is left, under a name
    no rule accepts as output; an existing `path` is untouched until the rename. Temporaries
    of `path` left by writers that were killed are deleted first (`remove_stale_temporaries`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_temporaries(path):
        log.warning("removed %s, left by a writer that was killed", stale)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
