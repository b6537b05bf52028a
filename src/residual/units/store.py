"""The unit store: one Parquet file per model x dataset x split.

Layout: one row per sample; columns `sample_id`, `label`, `ln_mean`, `ln_std`, `embedding` and one
fixed-size binary column per unit holding its stored values (see `UnitMap`: heads as raw attention
outputs [dh], emb/MLPs in output space before the LayerNorm scale [d_out]) in float16 or float32.
Columns make "one unit across all samples" read only that unit; row groups make "all units for a
batch of samples" a sequential read. Key-value metadata (key `residual`) holds the model spec, unit
names, layout, dtype, measured errors, library versions and the digest of the model's unit map,
a safetensors file beside the model's folder that `read_units` applies to return output space.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from residual.io.tensors import TensorFileError
from residual.units.decompose import RawUnits
from residual.units.layout import UnitLayout, is_head
from residual.units.unit_map import UnitMap
from residual.units.versions import UNITS_FORMAT

# Its format, UNITS_FORMAT, is in residual.units.versions: bump it there when the file layout or the decomposition (units/decompose.py) changes.
METADATA_KEY = b"residual"
DTYPES = {"float16": np.float16, "float32": np.float32}
TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32}
TARGET_PEAK_EXPONENT = 8
# Per-sample columns stored before the unit columns (`embedding` then one per unit follow).
ROW_COLUMNS = ("sample_id", "label", "ln_mean", "ln_std")
# What a reader needs beyond the columns; the writer adds `samples` and `scale_exponents` on close.
REQUIRED_METADATA = ("layout", "dtype", "units", "samples", "scale_exponents", "unit_map")


class UnitFileError(ValueError):
    """A unit file is missing, truncated, corrupt or from another format."""


@dataclass(frozen=True)
class StoredUnits:
    """Units read back. names [U]; values [n, U, d_out] float32 output space;
    embedding [n, d_out]; labels [n] int64; sample_ids [n] int64."""

    names: list[str]
    values: Tensor
    embedding: Tensor
    labels: Tensor
    sample_ids: Tensor


@dataclass(frozen=True)
class StoredBatch:
    """Units as stored, before the unit map: values [b, G, w] float32 (G units of one stored width w,
    the storage scale undone); ln_mean, ln_std, sample_ids [b]."""

    names: list[str]
    values: Tensor
    ln_mean: Tensor
    ln_std: Tensor
    sample_ids: Tensor


class UnitWriter:
    """Streams `RawUnits` batches into a Parquet file (the caller handles atomic renaming).

    rows_per_group: rows buffered per row group; metadata: JSON-able dict stored under `residual`.
    """

    def __init__(
        self, path: str | Path, layout: UnitLayout, dtype: str, metadata: dict[str, Any], rows_per_group: int = 1024
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"storage dtype {dtype!r} is not one of {sorted(DTYPES)}")
        self.layout, self.dtype, self.rows_per_group = layout, np.dtype(DTYPES[dtype]), rows_per_group
        self.metadata = {"format": UNITS_FORMAT, "units": layout.names, "layout": layout.__dict__, "dtype": dtype, **metadata}
        fields = [
            pa.field("sample_id", pa.int64(), nullable=False),
            pa.field("label", pa.int64(), nullable=False),
            pa.field("ln_mean", pa.float32(), nullable=False),
            pa.field("ln_std", pa.float32(), nullable=False),
            pa.field("embedding", pa.binary(layout.out_dim * self.dtype.itemsize), nullable=False),
        ]
        fields += [
            pa.field(name, pa.binary(layout.stored_dim(name) * self.dtype.itemsize), nullable=False)
            for name in layout.names
        ]
        self.schema = pa.schema(fields)
        binary = [name for name in self.schema.names if name not in ROW_COLUMNS]
        self._writer = pq.ParquetWriter(
            str(path),
            self.schema,
            compression="zstd",
            compression_level=1,
            use_dictionary=["sample_id", "label"],
            column_encoding={name: "PLAIN" for name in binary},
            write_statistics=["sample_id", "label"],
            write_page_checksum=True,  # readers verify it: a flipped bit is an error, never a silently wrong value
        )
        self.exponents: Tensor | None = None
        self.embedding_exponent = 0
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self.rows = 0

    def write(self, raw: RawUnits, labels: Tensor, sample_ids: Tensor) -> RawUnits:
        """Store one batch of B samples (labels, sample_ids: [B]); returns it as a reader will see it."""
        batch = raw.heads.shape[0]
        if self.exponents is None:
            self._choose_exponents(raw)
        exponents = self.exponents.to(raw.heads.device)
        layers = self.layout.layers
        emb = self._stored(raw.emb, exponents[0])
        mlp = self._stored(raw.mlp, exponents[1 : 1 + layers, None])
        heads = self._stored(raw.heads, exponents[1 + layers :].reshape(layers, -1, 1))
        embedding = self._stored(raw.embedding, torch.tensor(self.embedding_exponent))
        # One device-to-host copy per tensor, then every unit column is a view of host memory.
        host_mlp, host_heads = mlp.cpu().numpy(), heads.reshape(batch, -1, self.layout.head_dim).cpu().numpy()
        columns = [
            pa.array(sample_ids.cpu().numpy().astype(np.int64)),
            pa.array(labels.cpu().numpy().astype(np.int64)),
            pa.array(raw.ln_mean.float().cpu().numpy()),
            pa.array(raw.ln_std.float().cpu().numpy()),
            self._binary(embedding.cpu().numpy()),
            self._binary(emb.cpu().numpy()),
        ]
        columns += [self._binary(host_mlp[:, layer]) for layer in range(layers)]
        columns += [self._binary(host_heads[:, index]) for index in range(host_heads.shape[1])]
        self._pending.append(pa.RecordBatch.from_arrays(columns, schema=self.schema))
        self._pending_rows += batch
        self.rows += batch
        if self._pending_rows >= self.rows_per_group:
            self._flush()
        return RawUnits(
            emb=self._restored(emb, exponents[0]),
            mlp=self._restored(mlp, exponents[1 : 1 + layers, None]),
            heads=self._restored(heads, exponents[1 + layers :].reshape(layers, -1, 1)),
            ln_mean=raw.ln_mean.float(),
            ln_std=raw.ln_std.float(),
            embedding=self._restored(embedding, torch.tensor(self.embedding_exponent)),
        )

    def _choose_exponents(self, raw: RawUnits) -> None:
        """Per-unit power-of-two scales from the first batch, putting each unit's largest magnitude
        near 2**8: float16 then keeps full relative precision for tiny units (DINOv2's layer scale
        starts at 1e-5) with 2**8 headroom for later batches. Powers of two scale exactly."""
        peaks = torch.cat(
            [
                raw.emb.abs().amax().reshape(1),
                raw.mlp.abs().amax(dim=(0, 2)),
                raw.heads.abs().amax(dim=(0, 3)).flatten(),
            ]
        ).float()
        self.exponents = _exponent_for(peaks).cpu()
        self.embedding_exponent = int(_exponent_for(raw.embedding.abs().amax().float().reshape(1))[0])

    def _stored(self, values: Tensor, exponent: Tensor) -> Tensor:
        """values * 2**exponent in the storage dtype; raises if float16 would overflow."""
        stored = torch.ldexp(values.float(), exponent.to(values.device).float()).to(TORCH_DTYPES[self.dtype.name])
        if not torch.isfinite(stored).all():
            raise OverflowError(
                "a unit value overflows the storage dtype (a batch is 256x larger than the first one); "
                "use `encode: {dtype: float32}`"
            )
        return stored

    @staticmethod
    def _restored(stored: Tensor, exponent: Tensor) -> Tensor:
        return torch.ldexp(stored.float(), -exponent.to(stored.device).float())

    def _binary(self, values: np.ndarray) -> pa.Array:
        """[B, k] host values in the storage dtype -> fixed-size binary array of B rows (raw little-endian bytes)."""
        array = np.ascontiguousarray(values)
        width = array.shape[1] * self.dtype.itemsize
        return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(array), [None, pa.py_buffer(array.tobytes())])

    def _flush(self) -> None:
        if self._pending:
            self._writer.write_table(pa.Table.from_batches(self._pending), row_group_size=self._pending_rows)
        self._pending, self._pending_rows = [], 0

    def close(self, **final_metadata: Any) -> None:
        """Flush and finish the file; `final_metadata` (errors measured while writing) joins the metadata."""
        self._flush()
        exponents = [] if self.exponents is None else self.exponents.tolist()
        metadata = {
            **self.metadata,
            **final_metadata,
            "samples": self.rows,
            "scale_exponents": {"embedding": self.embedding_exponent, "units": exponents},
        }
        self._writer.add_key_value_metadata({METADATA_KEY.decode(): json.dumps(metadata, sort_keys=True)})
        self._writer.close()


class UnitFile:
    """A stored unit file. Reads are column-selective: asking for one unit reads one column."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise UnitFileError(f"unit file {self.path} does not exist; run the encode rule that produces it")
        try:
            self._file = pq.ParquetFile(str(self.path), page_checksum_verification=True)
            raw = (self._file.metadata.metadata or {}).get(METADATA_KEY)
        except (pa.ArrowException, OSError) as error:
            raise UnitFileError(
                f"unit file {self.path} is unreadable ({error}); it is truncated or corrupt: delete it and rerun the encode rule"
            ) from error
        if raw is None:
            raise UnitFileError(f"{self.path} is a Parquet file without residual unit metadata (key 'residual')")
        try:
            self.metadata: dict[str, Any] = json.loads(raw)
        except ValueError as error:  # UnicodeDecodeError, JSONDecodeError
            raise self._corrupt(error) from error
        if not isinstance(self.metadata, dict) or self.metadata.get("format") != UNITS_FORMAT:
            found = self.metadata.get("format") if isinstance(self.metadata, dict) else self.metadata
            raise UnitFileError(f"{self.path} has format {found!r}, this reader expects {UNITS_FORMAT!r}")
        missing = [key for key in REQUIRED_METADATA if key not in self.metadata]
        if missing:
            raise UnitFileError(
                f"unit file {self.path} lacks metadata {missing}: it was not finished by the encode rule; delete it and rerun"
            )
        try:
            self.layout = UnitLayout(**self.metadata["layout"])
            self.dtype = np.dtype(DTYPES[self.metadata["dtype"]])
        except (TypeError, KeyError) as error:
            raise self._corrupt(error) from error
        if self.metadata["samples"] != self._file.metadata.num_rows or self._file.schema_arrow.names != self._columns(self.names):
            raise UnitFileError(
                f"unit file {self.path} holds {self._file.metadata.num_rows} rows and columns that do not match its "
                f"metadata ({self.metadata['samples']} samples of units {self.names[:3]}...): delete it and rerun the encode rule"
            )

    @property
    def names(self) -> list[str]:
        return self.layout.names

    def __len__(self) -> int:
        return self._file.metadata.num_rows

    @cached_property
    def map_path(self) -> Path:
        return (self.path.parent / self.metadata["unit_map"]["path"]).resolve()

    def unit_map(self, heads: list[int] | None = None) -> UnitMap:
        """The model's unit map this file was written with (UnitFileError if it is missing, stale or corrupt)."""
        try:
            return UnitMap.load(self.map_path, expect_digest=self.metadata["unit_map"]["digest"], heads=heads)
        except TensorFileError as error:  # missing, unreadable or stale: the message names the map and the fix
            raise UnitFileError(f"unit file {self.path}: {error}") from error

    def read(self, units: Sequence[str] | None = None) -> StoredUnits:
        """All samples of the selected units (all units if None), in output space."""
        names = self._select(units)
        table = self._read_table(self._columns(names))
        return self._convert(table, names, self.unit_map(self._heads(names)))

    def iter_batches(self, batch_size: int, units: Sequence[str] | None = None) -> Iterator[StoredUnits]:
        """Consecutive batches of at most `batch_size` samples, selected units only."""
        names = self._select(units)
        unit_map = self.unit_map(self._heads(names))
        try:
            for batch in self._file.iter_batches(batch_size=batch_size, columns=self._columns(names)):
                yield self._convert(pa.Table.from_batches([batch]), names, unit_map)
        except (pa.ArrowException, OSError) as error:
            raise self._corrupt(error) from error

    def iter_stored_batches(self, batch_size: int, units: Sequence[str]) -> Iterator[StoredBatch]:
        """Consecutive batches of the selected units as stored (heads: raw dh values; emb and MLPs:
        d_out values before the LayerNorm scale), for steps that work in those coordinates."""
        names = self._select(units)
        widths = {self.layout.stored_dim(name) for name in names}
        if len(widths) != 1:
            raise ValueError(f"units {names[:3]}... have different stored widths {sorted(widths)}; read heads and others apart")
        exponents = [self._exponent(name) for name in names]
        try:
            for batch in self._file.iter_batches(batch_size=batch_size, columns=[*ROW_COLUMNS, *names]):
                table = pa.Table.from_batches([batch])
                yield StoredBatch(
                    names=names,
                    values=torch.stack([self._decode(table[name], e) for name, e in zip(names, exponents)], dim=1),
                    ln_mean=torch.tensor(table["ln_mean"].to_numpy()),
                    ln_std=torch.tensor(table["ln_std"].to_numpy()),
                    sample_ids=torch.tensor(table["sample_id"].to_numpy()),
                )
        except (pa.ArrowException, OSError) as error:
            raise self._corrupt(error) from error

    def _select(self, units: Sequence[str] | None) -> list[str]:
        if units is None:
            return self.names
        units = [units] if isinstance(units, str) else list(units)
        for name in units:
            self.layout.parse(name)
        return units

    def _heads(self, names: list[str]) -> list[int]:
        return [self.layout.head_index(n) for n in names if is_head(n)]

    @staticmethod
    def _columns(names: list[str]) -> list[str]:
        return [*ROW_COLUMNS, "embedding", *names]

    def _read_table(self, columns: list[str]) -> pa.Table:
        try:
            return self._file.read(columns=columns)
        except (pa.ArrowException, OSError) as error:
            raise self._corrupt(error) from error

    def _corrupt(self, error: Exception) -> UnitFileError:
        return UnitFileError(f"unit file {self.path} could not be read ({error}): delete it and rerun the encode rule")

    def _convert(self, table: pa.Table, names: list[str], unit_map: UnitMap) -> StoredUnits:
        ln_mean = torch.tensor(table["ln_mean"].to_numpy())
        ln_std = torch.tensor(table["ln_std"].to_numpy())
        pre = torch.empty(table.num_rows, len(names), self.layout.out_dim)
        heads = [position for position, name in enumerate(names) if is_head(name)]
        others = [position for position, name in enumerate(names) if not is_head(name)]
        if heads:
            z = torch.stack([self._decode(table[names[p]], self._exponent(names[p])) for p in heads], dim=1)
            pre[:, heads] = unit_map.heads_to_output(z)
        for position in others:
            pre[:, position] = self._decode(table[names[position]], self._exponent(names[position]))
        return StoredUnits(
            names=names,
            values=unit_map.finish(pre, ln_mean, ln_std, [self.layout.index(name) for name in names]),
            embedding=self._decode(table["embedding"], self.metadata["scale_exponents"]["embedding"]),
            labels=torch.tensor(table["label"].to_numpy()),
            sample_ids=torch.tensor(table["sample_id"].to_numpy()),
        )

    def _exponent(self, name: str) -> int:
        return self.metadata["scale_exponents"]["units"][self.layout.index(name)]

    def _decode(self, column: pa.ChunkedArray, exponent: int) -> Tensor:
        """Fixed-size binary column -> [n, k] float32 tensor (stored values are scaled by 2**exponent)."""
        array = column.combine_chunks()
        width = array.type.byte_width
        data = np.frombuffer(array.buffers()[1], dtype=np.uint8, count=(array.offset + len(array)) * width)
        values = data[array.offset * width :].view(self.dtype).reshape(len(array), width // self.dtype.itemsize)
        return torch.from_numpy(np.ldexp(values.astype(np.float32), -exponent))


def _exponent_for(peaks: Tensor) -> Tensor:
    """Integer e per peak with peak * 2**e in [2**(TARGET-1), 2**TARGET); 0 for all-zero units."""
    _, exponent = torch.frexp(peaks)
    return torch.where(peaks > 0, TARGET_PEAK_EXPONENT - exponent, torch.zeros_like(exponent)).to(torch.int32)


def read_units(path: str | Path, units: Sequence[str] | None = None) -> StoredUnits:
    """Units of a stored file in output space, as `decompose` returns them, plus labels and sample ids.

    units: names to read (e.g. ['head_11_3']); None reads all. Only those columns are read.
    """
    return UnitFile(path).read(units)

