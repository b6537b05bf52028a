"""Where a run's descriptions come from: a local file, a builtin list or a URL (`descriptions.dictionary`),
read, checked and written one per line. No torch: the workflow checks the source when it parses.
"""

from __future__ import annotations

import hashlib
import logging
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from residual.config.errors import ConfigError
from residual.config.params import RuleParams
from residual.io.atomic import atomic_path

KEY = "descriptions.dictionary"
BUILTIN = "builtin:"
URL_SCHEMES = ("http://", "https://", "file://")

log = logging.getLogger(__name__)


class DictionaryError(ConfigError):
    """The dictionary source is missing, empty, unreachable or fails its checksum; the message names the key."""


@dataclass(frozen=True)
class DictionarySource(RuleParams):
    """Where the descriptions come from: `source` (path, `builtin:<name>` or URL) and the optional
    `sha256` of its bytes."""

    source: str
    sha256: str | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DictionarySource:
        """The config's source; a builtin list without a `sha256` gets its own, so that its text,
        not its path (inside the checkout, which may be moved), is what its rule depends on."""
        entry = config["descriptions"]["dictionary"]
        source = cls(entry["source"], entry["sha256"])
        if source.is_builtin and source.sha256 is None:
            return cls(source.source, hashlib.sha256(_read_bytes(source)).hexdigest())
        return source

    @property
    def is_url(self) -> bool:
        return self.source.startswith(URL_SCHEMES)

    @property
    def is_builtin(self) -> bool:
        return self.source.startswith(BUILTIN)

    def input_files(self) -> list[str]:
        """The file the `description_texts` rule reads, as the config names it: none for a URL or a
        builtin list, whose path is the checkout's (`from_config` pins a builtin's digest instead)."""
        return [] if self.is_url or self.is_builtin else [str(self.local_path())]

    def local_path(self) -> Path | None:
        """The file a local or builtin source names (None for a URL); DictionaryError for an unknown builtin."""
        if self.is_url:
            return None
        if self.is_builtin:
            name = self.source.removeprefix(BUILTIN)
            shipped = files("residual.descriptions").joinpath("texts")
            path = Path(str(shipped.joinpath(f"{name}.txt")))
            if not path.is_file():
                known = sorted(Path(str(item)).stem for item in shipped.iterdir() if item.name.endswith(".txt"))
                raise DictionaryError(f"`{KEY}.source`: no builtin list {name!r}; builtin lists: {known}")
            return path
        return Path(self.source)


def parse_texts(data: bytes, origin: str) -> list[str]:
    """One description per line (UTF-8, surrounding whitespace stripped, blank lines skipped), each
    once, where it first appears (a repeat could stand at both ends of one component, and takes no
    TextSpan pick of its own). Logs how many repeats were dropped."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DictionaryError(f"`{KEY}.source`: {origin} is not UTF-8 text ({error}): give one description per line") from error
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise DictionaryError(f"`{KEY}.source`: {origin} holds no description: give one description per line")
    texts = list(dict.fromkeys(lines))
    if len(texts) < len(lines):
        repeats = len(lines) - len(texts)
        log.warning("`%s.source`: %s: %d lines repeat an earlier one and are dropped; %d descriptions remain", KEY, origin, repeats, len(texts))
    return texts


def _read_bytes(source: DictionarySource) -> bytes:
    path = source.local_path()
    if path is not None:
        if not path.is_file():
            raise DictionaryError(f"`{KEY}.source`: the dictionary file {str(path)!r} does not exist: fix the path or use a URL")
        return path.read_bytes()
    try:
        with urllib.request.urlopen(source.source, timeout=60) as response:
            return response.read()
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise DictionaryError(
            f"`{KEY}.source`: fetching {source.source} failed ({error}); where there is no network, download the "
            "file elsewhere and point `source` at the local copy"
        ) from error


def check_source(source: DictionarySource) -> None:
    """Fail early on a local source that is missing or empty (URLs are only checked when fetched)."""
    if not source.is_url:
        parse_texts(_read_bytes(source), repr(source.source))


def fetch_texts(source: DictionarySource, output: str | Path) -> list[str]:
    """Read (or download) the source once, check its checksum, write its descriptions to `output`
    one per line (atomically) and return them."""
    data = _read_bytes(source)
    if source.sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != source.sha256.lower():
            raise DictionaryError(
                f"`{KEY}.sha256`: {source.source} has sha256 {digest}, the config expects {source.sha256}: "
                "the file changed or the transfer was truncated; check it and update the checksum"
            )
    texts = parse_texts(data, source.source)
    with atomic_path(output) as tmp:
        tmp.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return texts


def read_texts(path: str | Path) -> list[str]:
    """The descriptions written by `fetch_texts`."""
    path = Path(path)
    if not path.is_file():
        raise DictionaryError(f"dictionary file {path} does not exist: run the description_texts rule")
    return parse_texts(path.read_bytes(), str(path))
