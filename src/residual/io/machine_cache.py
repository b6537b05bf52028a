"""This machine's cache: facts worth keeping across runs and run folders (a pass of the model
checks, the charts' inlined Vega libraries), under $RESIDUAL_CACHE, by default the user's cache
folder ($XDG_CACHE_HOME or ~/.cache, then residual/). Every entry is named by everything it depends
on, so a stale one is never read; losing the folder only costs the time to make its entries again."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from residual.io.atomic import atomic_path


def cache_folder(part: str) -> Path:
    """The cache's folder for `part` (not created here)."""
    root = os.environ.get("RESIDUAL_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "residual"
    return Path(root) / part


def remember(path: Path, text: str) -> None:
    """Write `text` to `path` atomically; where the cache cannot be written (a read-only home), keep
    nothing: the entry is made again next time, and nothing else changes."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError:
        pass


def remembered_text(path: Path, make: Callable[[], str]) -> str:
    """The text kept at `path`, or `make()`'s, then kept there."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = make()
        remember(path, text)
        return text
