"""Per-unit spectral geometry as tables (METHOD sections 5 and 6).

- `intrinsic_dimension_table`: for every unit of one split (and the model's output), the linear ID
  k(0.99) of its PCA, the TwoNN ID of a seeded sample of its points, their ratio and the first
  component's explained variance ratio. The linear ID (and first EVR) come from the PCA of the
  whole split (`linear_id_on="split"`) or, as in the authors' experiment, from the PCA of the
  same sampled points TwoNN sees (`"id_sample"`).
- `similarity_table`: for every unit, the normalised spectral cosine between its principal subspace
  on the reference dataset and on another dataset (weighted and unweighted).

Degenerate units are rows, not crashes: a unit of zero variance has linear ID 0 and a null TwoNN ID
and similarity (no direction carries variance, so neither is defined).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, get_args

import polars as pl
import torch
from torch import Tensor

from residual.spectral.intrinsic_dimension import linear_id, two_nn
from residual.spectral.pca import OUTPUT, UnitPCA, fit_pca
from residual.spectral.similarity import unit_similarity
from residual.units.guards import check_finite_values
from residual.units.layout import unit_coordinates
from residual.units.store import UnitFile

LinearIdOn = Literal["split", "id_sample"]
UNIT_SCHEMA = {"unit": pl.String, "kind": pl.String, "layer": pl.Int32, "head": pl.Int32}


def sample_positions(count: int, samples: int, seed: int) -> Tensor:
    """[min(count, samples)] sorted row positions drawn without replacement from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(count, generator=generator)[:samples].sort().values


def sampled_points(unit_file: UnitFile, units: list[str], positions: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    """Output-space values [m, G, d] of `units` at row positions [m] (sorted) and their sample ids [m];
    unit `output` is the model's embedding. Reads the file once, keeping only the sampled rows."""
    stored = [name for name in units if name != OUTPUT]
    values, ids, start = [], [], 0
    for batch in unit_file.iter_batches(batch_size, units=stored):
        rows = positions[(positions >= start) & (positions < start + len(batch.labels))] - start
        columns = [batch.embedding[rows, None] if name == OUTPUT else batch.values[rows, stored.index(name), None] for name in units]
        values.append(torch.cat(columns, dim=1))
        ids.append(batch.sample_ids[rows])
        start += len(batch.labels)
    return torch.cat(values), torch.cat(ids)


def intrinsic_dimension_table(
    unit_path: str | Path,
    pca: UnitPCA,
    samples: int,
    seed: int,
    fraction: float = 0.9,
    threshold: float = 0.99,
    group_size: int = 16,
    batch_size: int = 4096,
    device: torch.device | str = "cpu",
    linear_id_on: LinearIdOn = "split",
) -> pl.DataFrame:
    """One row per unit of `pca` (fitted on the same file): linear and TwoNN intrinsic dimension."""
    if linear_id_on not in get_args(LinearIdOn):
        raise ValueError(f"analysis.linear_id_on {linear_id_on!r} is not one of {get_args(LinearIdOn)}")
    unit_file = UnitFile(unit_path)
    positions = sample_positions(len(unit_file), samples, seed)
    rows = []
    for start in range(0, len(pca.names), group_size):
        group = pca.names[start : start + group_size]
        points, sample_ids = sampled_points(unit_file, group, positions, batch_size)
        check_finite_values(points, group, sample_ids, f"unit file {unit_file.path}, step twonn")
        spectra = pca if linear_id_on == "split" else fit_pca(points.to(device), group, f"unit file {unit_file.path}")
        for position, name in enumerate(group):
            unit = spectra.index(name)
            estimate = two_nn(points[:, position].to(device), fraction=fraction)
            linear = linear_id(spectra.eigenvalues[unit], spectra.total_variance[unit], threshold)
            evr = spectra.explained_variance_ratio(unit)
            rows.append(
                {
                    "unit": name,
                    **unit_coordinates(name),
                    "ln_constants": unit_file.metadata.get("ln_constants"),
                    "linear_id_on": linear_id_on,
                    "samples": len(positions),
                    "linear_id": linear,
                    "twonn_id": _defined(estimate.id),
                    "linear_over_twonn": linear / estimate.id if estimate.id > 0 else None,
                    "first_evr": float(evr[0]) if len(evr) else None,
                    "twonn_points": estimate.points,
                    "duplicates": estimate.duplicates,
                    "ties": estimate.ties,
                }
            )
    return pl.DataFrame(rows, schema_overrides=UNIT_SCHEMA, infer_schema_length=None)


def similarity_table(reference: UnitPCA, other: UnitPCA, threshold: float = 0.9) -> pl.DataFrame:
    """One row per unit: spectral cosine between its k(threshold) principal subspaces on the
    reference and the other dataset, weighted by eigenvalues and unweighted."""
    if reference.names != other.names:
        raise ValueError(
            f"PCAs from different models cannot be compared: {reference.metadata.get('source')} and "
            f"{other.metadata.get('source')} hold different units"
        )
    k_reference, k_other = reference.k(threshold), other.k(threshold)
    rows = []
    for unit, name in enumerate(reference.names):
        weighted, unweighted = unit_similarity(
            reference.components[unit],
            reference.eigenvalues[unit],
            reference.total_variance[unit],
            other.components[unit],
            other.eigenvalues[unit],
            other.total_variance[unit],
            threshold,
        )
        rows.append(
            {
                "unit": name,
                **unit_coordinates(name),
                "similarity": _defined(weighted),
                "similarity_unweighted": _defined(unweighted),
                "ln_constants": reference.metadata.get("ln_constants"),
                "k_reference": int(k_reference[unit]),
                "k_dataset": int(k_other[unit]),
            }
        )
    return pl.DataFrame(rows, schema_overrides=UNIT_SCHEMA, infer_schema_length=None)


def _defined(value: float) -> float | None:
    """NaN (undefined for a degenerate unit) becomes a null in the table."""
    return None if math.isnan(value) else value
