"""Encode one dataset split with one model into the unit store, checking the invariant as it goes."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import polars as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from residual.data.sources import Source, prepare
from residual.io.atomic import atomic_path
from residual.io.tensors import TensorFileError
from residual.libraries import LIBRARIES
from residual.models.loaded import LoadedModel
from residual.units.decompose import checked_values, trace
from residual.units.store import UnitFileError, UnitWriter
from residual.units.unit_map import UnitMap, layout_of

READBACK_TOLERANCE = 1e-3


@dataclass(frozen=True)
class EncodeSettings:
    """How a split is encoded. dtype: the storage precision of unit values (float16 or float32);
    batch_size, workers: images per forward and DataLoader processes (speed and float rounding
    only); rows_per_group: samples per Parquet row group (file layout only)."""

    dtype: str = "float16"
    batch_size: int = 64
    workers: int = 0
    rows_per_group: int = 1024


@dataclass(frozen=True)
class EncodeResult:
    samples: int
    decomposition_error: float
    readback_error: float


class SplitImages(Dataset):
    """The rows of a split table as (input tensor [3, H, W], label, sample_id), through the model's
    eval transform, or its train-time one (`train`, for fine-tuning)."""

    def __init__(self, source: Source, rows: pl.DataFrame, model: LoadedModel, train: bool = False) -> None:
        self.source, self.size = source, model.input_size
        self.preprocess = model.preprocess_train if train else model.preprocess
        self.parts = rows["part"].to_list()
        self.indices = rows["index"].to_list()
        self.labels = rows["label"].to_list()
        self.sample_ids = rows["sample_id"].to_list()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, row: int) -> tuple[Tensor, int, int]:
        image, _ = self.source.parts[self.parts[row]][self.indices[row]]
        return prepare(image, self.preprocess, self.size), self.labels[row], self.sample_ids[row]


def encode_split(
    model: LoadedModel,
    source: Source,
    rows: pl.DataFrame,
    output: str | Path,
    unit_map_path: str | Path,
    settings: EncodeSettings = EncodeSettings(),
    metadata: dict[str, Any] | None = None,
) -> EncodeResult:
    """Decompose every image of `rows` (a split table's rows for one split) and store the units.

    Fails (leaving no output) if any unit of a batch holds NaN or Inf (`NonFiniteError` naming the
    unit, the samples and the output), if any batch breaks the decomposition invariant, or if the
    stored precision loses more than 1e-3 relative in output space on any unit.
    """
    output, unit_map_path = Path(output), Path(unit_map_path)
    # The map file is what readers will apply, so the invariant is checked through it: a map
    # written for other weights fails the check below instead of silently mis-reading later.
    try:
        unit_map = UnitMap.load(unit_map_path)
    except TensorFileError as error:
        raise UnitFileError(str(error)) from error
    digest = unit_map.digest()
    unit_map = unit_map.to(model.device)
    loader = DataLoader(
        SplitImages(source, rows, model), batch_size=settings.batch_size, num_workers=settings.workers, shuffle=False, drop_last=False
    )
    units = layout_of(model.tower).count
    readback_num = torch.zeros(units, device=model.device)
    readback_den = torch.zeros(units, device=model.device)
    decomposition_error = 0.0
    info = {
        "model": model.name,
        "model_spec": model.spec,
        "unit_map": {"path": os.path.relpath(unit_map_path.resolve(), output.parent.resolve()), "digest": digest},
        "ln_constants": unit_map.ln_constants,
        "source": source.metadata or {},
        "versions": library_versions(),
        **(metadata or {}),
    }
    with atomic_path(output) as tmp:
        writer = UnitWriter(tmp, layout_of(model.tower), settings.dtype, info, settings.rows_per_group)
        bar = tqdm(total=len(rows), desc=f"encode {output.parent.name}/{output.stem}", file=sys.stderr, mininterval=10, ascii=True)
        with bar as progress:  # closed on errors too, so no stale bar is printed at exit
            for images, labels, sample_ids in loader:
                raw = trace(model, images)
                context = f"encode {output}: model {model.name!r}, batch of samples {int(sample_ids[0])}..{int(sample_ids[-1])}"
                exact, error = checked_values(raw, unit_map, sample_ids.tolist(), context)
                decomposition_error = max(decomposition_error, error)
                stored = writer.write(raw, labels, sample_ids)
                readback_num = torch.maximum(readback_num, (stored.values(unit_map) - exact).abs().amax(dim=(0, 2)))
                readback_den = torch.maximum(readback_den, exact.abs().amax(dim=(0, 2)))
                progress.update(len(labels))
        readback_error = float((readback_num / readback_den.clamp_min(torch.finfo(torch.float32).tiny)).max()) if len(rows) else 0.0
        if not readback_error <= READBACK_TOLERANCE:
            raise ValueError(
                f"storing {settings.dtype} loses {readback_error:.3g} relative in output space (> {READBACK_TOLERANCE:g}); "
                "use `encode: {dtype: float32}` for this model"
            )
        writer.close(decomposition_error=decomposition_error, readback_error=readback_error)
    return EncodeResult(len(rows), decomposition_error, readback_error)


def library_versions() -> dict[str, str]:
    versions = {}
    for package in ("residual", "torch", *(library.package for library in LIBRARIES.values()), "pyarrow"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    return versions
