"""Tensor files of the pipeline: safetensors with one JSON header (unit maps, PCAs, classifiers,
training results and checkpoints).

The header is one JSON string with sorted keys under the metadata key `residual`: safetensors
writes several metadata keys in hash order, which would make two identical runs' files differ
byte for byte. Files are written atomically; a reader gets a `TensorFileError` that names the file
and the rule that rewrites it, never a library traceback.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from residual.io.atomic import atomic_path

HEADER_KEY = "residual"


class TensorFileError(ValueError):
    """A tensor file is missing, truncated, corrupt or of another format; the message names it."""


def save_tensors(path: str | Path, tensors: Mapping[str, Tensor], header: Mapping[str, Any]) -> None:
    """Write `tensors` (any device and dtype; stored detached, on the CPU, contiguous) and the
    JSON-able `header` to `path`, atomically."""
    stored = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(stored, str(tmp), {HEADER_KEY: json.dumps(header, sort_keys=True)})


@contextmanager
def open_tensors(
    path: str | Path, kind: str, rule: str, format: str | None = None, error: type[TensorFileError] = TensorFileError
) -> Iterator[tuple[Any, dict[str, Any]]]:
    """Yield (safetensors handle, header) of the file at `path`; the handle reads single tensors
    (`get_tensor`) or slices of them (`get_slice`) without loading the rest.

    kind names the file in messages ("PCA file", "unit map"); rule is the rule that writes it; error
    is the TensorFileError subclass raised. A missing file, an unreadable one, a missing header, a
    header `format` other than `format` (when given), and KeyError/TypeError/ValueError raised
    while reading it in the body all become `error`, naming the path and what to rerun (a
    TensorFileError raised in the body passes through unchanged)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{kind} {path} is unreadable (it does not exist): run the {rule} rule that produces it")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = json.loads((handle.metadata() or {}).get(HEADER_KEY, "null"))
            if not isinstance(header, dict):
                raise error(f"{kind} {path} is unreadable (no '{HEADER_KEY}' header): delete it and rerun the {rule} rule")
            if format is not None and header.get("format") != format:
                raise error(
                    f"{kind} {path} has format {header.get('format')!r}, this reader expects {format!r}: "
                    f"delete it and rerun the {rule} rule"
                )
            yield handle, header
    except TensorFileError:
        raise
    except (SafetensorError, OSError, KeyError, TypeError, ValueError) as cause:
        raise error(f"{kind} {path} is unreadable ({cause}): delete it and rerun the {rule} rule") from cause
