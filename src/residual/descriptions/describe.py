"""What each unit encodes, in words (METHOD section 7): TextSpan and SOMP of the selected units of
one split over a model's encoded dictionary, and the texts at both ends of each unit's first
principal components (the PCA of the `pca` rule, fitted on the train split).

Units are read `group_size` at a time. A group's moments come from the `pca` rule's file when the
split is the one it fitted, else from one streaming pass (`fit_unit_file`); SOMP then needs one
more pass that keeps each unit's centred coordinates in its kept components ([n, r] float64, r
about d_head + 2 for a head), never the [n, d] outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch
from torch import Tensor

from residual.descriptions.components import component_ends
from residual.descriptions.dictionary import Dictionary
from residual.descriptions.options import DescriptionSettings
from residual.descriptions.somp import somp
from residual.descriptions.table import METHODS, unit_rows
from residual.descriptions.textspan import Decomposition, text_span
from residual.spectral.pca import UnitPCA, fit_unit_file
from residual.units.guards import check_finite_values
from residual.units.layout import UnitLayout, unit_coordinates
from residual.units.store import UnitFile

# Its version, DESCRIPTIONS_VERSION, is in residual.descriptions.options: bump it with a change to this package that changes the descriptions it writes.
PCA_SPLIT = "train"  # the split the pca rule fits


@dataclass(frozen=True)
class Streaming:
    """How units are read (float rounding only, not params): samples per batch, units per group, device."""

    batch_size: int = 4096
    group_size: int = 16
    device: torch.device | str = "cpu"


def selected_units(layout: UnitLayout, units: int | str) -> list[str]:
    """'all': every unit; N: the heads of the last N layers (all layers if the model has fewer)."""
    if units == "all":
        return layout.names
    first = max(0, layout.layers - int(units))
    return [f"head_{layer}_{head}" for layer in range(first, layout.layers) for head in range(layout.heads)]


def centred_coordinates(unit_file: UnitFile, pca: UnitPCA, batch_size: int, device: torch.device | str) -> list[Tensor]:
    """Per unit of `pca` (same split): [n, r_u] float64 coordinates of its centred outputs in its kept components."""
    means = pca.means.double().to(device)
    bases = [components.double().to(device) for components in pca.components]
    parts: list[list[Tensor]] = [[] for _ in pca.names]
    for batch in unit_file.iter_batches(batch_size, units=pca.names):
        values = batch.values.to(device)
        check_finite_values(values, pca.names, batch.sample_ids, f"unit file {unit_file.path}, step describe")
        centred = values.double() - means
        for unit, basis in enumerate(bases):
            parts[unit].append(centred[:, unit] @ basis.T)
    return [torch.cat(chunks) for chunks in parts]


def _shortfall(method: str, found: int, asked: int, setting: str, texts: int) -> str | None:
    """The note on a unit's rows of `method` when it found fewer texts than `descriptions.<setting>`
    asks for, saying why; None when it found them all."""
    if found >= asked:
        return None
    why = f"the dictionary has {texts} texts" if texts < asked else "no other text explains any of the unit's remaining variance"
    return f"{method}: {found} of the {asked} texts asked for (`descriptions.{setting}`): {why}"


def _method_rows(method: str, decomposition: Decomposition, texts: list[str], k: int) -> list[dict[str, object]]:
    """One row per pick; a method that picked nothing still gets a row, without a text, for its note."""
    note = _shortfall(METHODS[method], len(decomposition.indices), k, "k", len(texts))
    rows: list[dict[str, object]] = [
        {
            "method": method,
            "rank": rank,
            "text": texts[index],
            "explained_variance": share,
            "explained_total": decomposition.total,
            "note": note,
        }
        for rank, (index, share) in enumerate(zip(decomposition.indices, decomposition.explained), start=1)
    ]
    return rows or [{"method": method, "explained_total": decomposition.total, "note": note}]


def _component_rows(pca: UnitPCA, unit: int, dictionary: Dictionary, settings: DescriptionSettings) -> list[dict[str, object]]:
    components = pca.components[unit][: settings.components]
    if len(components) == 0:
        return []
    indices, cosines = component_ends(components, dictionary.embeddings, settings.per_end)
    ratios = pca.explained_variance_ratio(unit)
    note = _shortfall("component ends", indices.shape[2], settings.per_end, "per_end", len(dictionary.texts))
    return [
        {
            "method": "component",
            "component": component + 1,
            "end": end,
            "rank": rank + 1,
            "text": dictionary.texts[int(indices[component, side, rank])],
            "explained_variance": float(ratios[component]),
            "cosine": float(cosines[component, side, rank]),
            "note": note,
        }
        for component in range(len(components))
        for side, end in enumerate(("+", "-"))
        for rank in range(indices.shape[2])
    ]


def describe_unit_file(
    units_path: str | Path,
    pca_path: str | Path,
    dictionary: Dictionary,
    settings: DescriptionSettings,
    streaming: Streaming = Streaming(),
) -> pl.DataFrame:
    """The rows of `residual.descriptions.table` (without the model, dataset and split keys) for
    the selected units of the unit file at `units_path` (split `settings.split`); `pca_path` is
    the same dataset's PCA file (train split)."""
    unit_file = UnitFile(units_path)
    if dictionary.embeddings.shape[1] != unit_file.layout.out_dim:
        raise ValueError(
            f"the dictionary's embeddings have width {dictionary.embeddings.shape[1]}, the units of {units_path} "
            f"{unit_file.layout.out_dim}: the dictionary was encoded by another model"
        )
    names = selected_units(unit_file.layout, settings.units)
    rows: list[dict[str, object]] = []
    for start in range(0, len(names), streaming.group_size):
        group: Sequence[str] = names[start : start + streaming.group_size]
        fitted = UnitPCA.load(pca_path, group)
        if settings.split == PCA_SPLIT:
            moments = fitted
        else:
            moments = fit_unit_file(
                units_path,
                group,
                include_output=False,
                batch_size=streaming.batch_size,
                group_size=len(group),
                device=streaming.device,
            )
        coordinates = centred_coordinates(unit_file, moments, streaming.batch_size, streaming.device)
        for unit, name in enumerate(group):
            spans = text_span(moments, unit, dictionary.embeddings, settings.rank, settings.k)
            pursuit = somp(
                coordinates[unit],
                moments.components[unit],
                dictionary.embeddings,
                float(moments.total_variance[unit]),
                settings.k,
            )
            described = [
                *_method_rows("textspan", spans, dictionary.texts, settings.k),
                *_method_rows("somp", pursuit, dictionary.texts, settings.k),
                *_component_rows(fitted, unit, dictionary, settings),
            ]
            rows += [{"unit": name, **unit_coordinates(name), **row} for row in described]
    return unit_rows(rows)
