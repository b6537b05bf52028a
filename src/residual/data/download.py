"""The pipeline's first step: put a dataset's files under its root, or say exactly how to.

Datasets with a public, checksummed source are fetched by torchvision's own download machinery
(`download=True`: MD5-verified), RESISC45 by torchvision's download utilities from torchgeo's
mirror. The rest (ImageNet, Stanford Cars, PACS, ImageNet-Sketch) are supplied by the user.
Nothing touches the network when the files are already there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from http.client import HTTPException
from pathlib import Path
from typing import Any

from residual.data.catalog import DATASETS
from residual.data.sequences import DatasetError
from residual.data.sources import LOADERS

log = logging.getLogger(__name__)

# Worth another try: connection, DNS and timeout errors (all OSErrors, urllib's URLError too),
# broken HTTP responses, and torchvision's RuntimeError for a download whose MD5 is wrong (a
# truncated transfer) or that every MNIST mirror refused.
TRANSIENT = (OSError, HTTPException, RuntimeError)


def download(
    name: str, spec: Mapping[str, Any], root: Path | str | None, attempts: int = 3, backoff_s: float = 30.0
) -> None:
    """Make sure the files of dataset `name` (config entry `spec`) are under `root`.

    `spec['download']: false` never fetches: missing files are then an error naming what to place.
    A no-op when every file the loader needs is present (checked before any network access) and
    for loaders that need no files (digits, random). Otherwise fetches them, retrying up to
    `attempts` times with exponential backoff (`backoff_s`, then twice that, ...). Raises
    DatasetError naming the folder and what to place there for datasets the user must supply,
    and when the fetch keeps failing.
    """
    loader = spec.get("loader")
    if loader in LOADERS and loader not in DATASETS:
        return
    if loader not in DATASETS:
        raise DatasetError(f"dataset {name!r}: unknown loader {loader!r}; known loaders: {sorted(LOADERS)}")
    if root is None:
        raise DatasetError(f"dataset {name!r}: `root` is missing; it names the folder the files go in")
    entry, root = DATASETS[loader], Path(root)
    if not entry.missing(root):
        return
    if entry.fetch is None or not spec.get("download", True):
        entry.check(name, root)  # raises: files are missing and the config does not (or cannot) fetch them
        return
    for attempt in range(1, attempts + 1):
        try:
            entry.fetch(root)
            break
        except TRANSIENT as error:
            if attempt == attempts:
                raise DatasetError(
                    f"dataset {name!r}: fetching into {root} failed {attempts} times, last with {error!r}. "
                    f"{entry.origin}"
                ) from error
            wait = backoff_s * 2 ** (attempt - 1)
            log.warning("dataset %r: fetch %d of %d failed (%r); retrying in %.0f s", name, attempt, attempts, error, wait)
            time.sleep(wait)
    entry.check(name, root)
