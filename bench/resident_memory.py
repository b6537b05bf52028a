"""The process's resident memory from Linux's /proc, with the standard library alone: `twonn_worker.py`
imports it under DADApy's virtualenv, where neither torch nor the project is installed."""

from __future__ import annotations

from pathlib import Path

STATUS = Path("/proc/self/status")


def status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS: resident now, VmHWM: peak resident), in bytes."""
    for line in STATUS.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024  # the kernel reports kB
    raise RuntimeError(f"{STATUS} has no {field} line: resident memory is measured on Linux only")


def reset_peak() -> None:
    """Make the peak resident size restart from the size now (Linux >= 4.0), so that the peak a
    measurement reaches is not hidden by an earlier one (loading the data, importing libraries)."""
    Path("/proc/self/clear_refs").write_text("5")
