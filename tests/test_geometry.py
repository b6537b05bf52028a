"""Per-unit geometry tables: intrinsic dimension and similarity rows, degenerate units, and the NaN
guard of every step that reads stored units (PCA, TwoNN, spectral features)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from residual import read_units
from residual.alignment.features import make_plan, spectral_features
from residual.report.tables import layer_summary
from residual.spectral.intrinsic_dimension import two_nn
from residual.spectral.pca import OUTPUT, fit_pca, fit_unit_file
from residual.spectral.tables import (
    intrinsic_dimension_table,
    sample_positions,
    sampled_points,
    similarity_table,
)
from residual.units.guards import NonFiniteError
from residual.units.store import UnitFile


def test_sampled_points_are_the_seeded_rows_of_the_file(digit_units: dict[str, Path]) -> None:
    path = digit_units["train"]
    stored = read_units(path, ["head_0_1", "mlp_1"])
    positions = sample_positions(len(stored.labels), 40, seed=3)
    assert torch.equal(positions, sample_positions(len(stored.labels), 40, seed=3))
    assert len(positions.unique()) == 40 and bool((positions.diff() > 0).all())
    points, ids = sampled_points(UnitFile(path), ["mlp_1", OUTPUT, "head_0_1"], positions, batch_size=7)
    assert torch.equal(ids, stored.sample_ids[positions])
    # Read in batches of 7 against one read of the whole file: units go through the unit map's
    # matmuls, whose rounding may depend on the batch shape on some CPUs (float32 rounding apart);
    # the stored embedding is only decoded, the same elementwise operations on the same values.
    scale = float(stored.values.abs().max())
    torch.testing.assert_close(points[:, 0], stored.values[positions, 1], rtol=1e-5, atol=1e-6 * scale)
    assert torch.equal(points[:, 1], stored.embedding[positions])
    torch.testing.assert_close(points[:, 2], stored.values[positions, 0], rtol=1e-5, atol=1e-6 * scale)


def test_intrinsic_dimension_rows(digit_units: dict[str, Path]) -> None:
    path = digit_units["train"]
    pca = fit_unit_file(path, units=["emb", "mlp_0", "head_1_2"])
    table = intrinsic_dimension_table(path, pca, samples=60, seed=0, group_size=2, batch_size=16)
    assert table["unit"].to_list() == ["emb", "mlp_0", "head_1_2", OUTPUT]
    assert table["kind"].to_list() == ["emb", "mlp", "head", "output"]
    assert table["layer"].to_list() == [None, 0, 1, None] and table["head"].to_list() == [None, None, 2, None]
    assert table["linear_id"].to_list() == pca.k(0.99).tolist()
    points, _ = sampled_points(UnitFile(path), ["head_1_2"], sample_positions(90, 60, 0), 16)
    assert table["twonn_id"][2] == two_nn(points[:, 0]).id
    assert table["linear_over_twonn"][2] == pytest.approx(table["linear_id"][2] / table["twonn_id"][2])
    assert (table["samples"] == 60).all()


def test_zero_variance_and_duplicated_units_are_rows_with_nulls() -> None:
    """A constant unit: linear ID 0, no TwoNN estimate (every point is a duplicate), no similarity."""
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(50, 2, 6, generator=generator)
    values[:, 1] = 2.0
    pca = fit_pca(values, ["head_0_0", "head_0_1"])
    similarity = similarity_table(pca, pca)
    assert similarity["similarity"].to_list()[0] == pytest.approx(1.0)
    assert similarity["similarity"].to_list()[1] is None and similarity["k_reference"].to_list()[1] == 0
    summary = layer_summary(similarity.with_columns(model=pl.lit("m"), dataset=pl.lit("d")), ["similarity"])
    assert summary["units"].to_list() == [2] and summary["similarity"].to_list() == [pytest.approx(1.0)]


def edited_copy(source: Path, folder: Path, edits: dict[str, Callable[[list], list]]) -> Path:
    """A copy of a unit file (beside a copy of its unit map) with column c replaced by edits[c](column)."""
    (folder / "digits").mkdir()
    (folder / "unit_map.safetensors").write_bytes((source.parent.parent / "unit_map.safetensors").read_bytes())
    table = pq.read_table(source)
    for name, edit in edits.items():
        column = pa.array(edit(table[name].to_pylist()), type=table.schema.field(name).type)
        table = table.set_column(table.schema.get_field_index(name), name, column)
    metadata = {b"residual": pq.read_metadata(source).metadata[b"residual"]}  # written as file metadata, not schema
    path = folder / "digits" / "train.parquet"
    pq.write_table(table.replace_schema_metadata(metadata), path)
    return path


def first_everywhere(column: list) -> list:
    return [column[0]] * len(column)


def test_zero_variance_unit_in_a_file(digit_units: dict[str, Path], tmp_path: Path) -> None:
    """The same through a stored file. Output space is after the final LayerNorm, whose per-sample
    statistics move every unit, so those are made constant too."""
    constant = {name: first_everywhere for name in ("mlp_0", "ln_mean", "ln_std")}
    path = edited_copy(digit_units["train"], tmp_path, constant)
    pca = fit_unit_file(path, units=["mlp_0", "mlp_1"], include_output=False)
    rows = intrinsic_dimension_table(path, pca, samples=50, seed=0)
    constant_row = rows.row(0, named=True)
    assert constant_row["linear_id"] == 0 and constant_row["twonn_id"] is None and constant_row["first_evr"] is None
    assert constant_row["duplicates"] == 50 and rows.row(1, named=True)["twonn_id"] > 0


def test_non_finite_points_name_unit_file_and_step(digit_units: dict[str, Path], tmp_path: Path) -> None:

    def nan_in_sample_4(column: list[bytes]) -> list[bytes]:
        return [*column[:4], column[4][:-4] + b"\x00\x00\xc0\x7f", *column[5:]]  # its last float32 is NaN

    path = edited_copy(digit_units["train"], tmp_path, {"mlp_1": nan_in_sample_4})
    sample = int(pq.read_table(path, columns=["sample_id"])["sample_id"][4].as_py())
    pca = fit_pca(torch.randn(5, 1, 32), ["mlp_1"])  # the file's own PCA would stop first, on the same check
    with pytest.raises(NonFiniteError, match=rf"{path}, step twonn: unit 'mlp_1' holds NaN or Inf for samples {sample};"):
        intrinsic_dimension_table(path, pca, samples=90, seed=0)
    with pytest.raises(NonFiniteError, match=rf"{path}, step pca: unit 'mlp_1' holds NaN or Inf for samples {sample};"):
        fit_unit_file(path, units=["mlp_1"])
    reference = fit_unit_file(digit_units["train"], units=["mlp_0", "mlp_1", "head_0_0"])
    plan = make_plan(reference, ["mlp_1"], [2], "sum")
    with pytest.raises(NonFiniteError, match=rf"{path}, step spectral features: unit 'mlp_1' .* samples {sample};"):
        spectral_features(UnitFile(path), plan, batch_size=16, device="cpu")


def test_similarity_needs_the_same_units() -> None:
    values = torch.randn(20, 2, 4)
    with pytest.raises(ValueError, match="different units"):
        similarity_table(fit_pca(values, ["a", "b"]), fit_pca(values, ["a", "c"]))
