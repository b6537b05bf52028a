"""Every chart of the report: which results table it draws, its title, and where the report files it.

The workflow makes `results/charts/{name}.{html,png,svg}` from `results/tables/{table}.parquet`
for each name it lists; the caption that says how to read a chart is `report/captions/{name}.rst`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import altair as alt
import polars as pl

from residual.io.tables import DEMO_NOTE
from residual.report.accuracy_charts import accuracy_bars, accuracy_vs_parameters
from residual.report.charts import styled
from residual.report.map_charts import head_maps
from residual.report.probe_charts import head_attributes
from residual.report.runtime import runtime_chart
from residual.report.selection_charts import overlap_heatmaps, selection_curves
from residual.report.spectral_charts import (
    id_by_layer,
    id_heatmaps,
    id_ratio_by_layer,
    similarity_heatmaps,
)


@dataclass(frozen=True)
class Figure:
    """A chart of one results table, and its place in the report (category, subcategory)."""

    table: str
    title: str
    category: str
    subcategory: str
    draw: Callable[[pl.DataFrame], alt.TopLevelMixin]


FIGURES = {
    "intrinsic_dimension_by_layer": Figure(
        "intrinsic_dimension", "Intrinsic dimension of the heads per layer: linear k(0.99) and TwoNN",
        "Intrinsic dimension", "per layer", id_by_layer,
    ),
    "intrinsic_dimension_ratio": Figure(
        "intrinsic_dimension", "Linear over TwoNN intrinsic dimension of the heads per layer",
        "Intrinsic dimension", "per layer", id_ratio_by_layer,
    ),
    "intrinsic_dimension_heads": Figure(
        "intrinsic_dimension", "Intrinsic dimension and first-component EVR of every head",
        "Intrinsic dimension", "per head", id_heatmaps,
    ),
    "similarity_heads": Figure(
        "similarity", "Similarity of every head's principal directions to the reference dataset's",
        "Similarity", "per head", similarity_heatmaps,
    ),
    "head_selection": Figure(
        "head_selection", "Zero-shot test accuracy keeping only the top-scored heads",
        "Head selection", "accuracy", selection_curves,
    ),
    "head_overlap": Figure(
        "head_overlap", "Overlap (Jaccard) of the heads selected for each pair of datasets, 5% of heads kept",
        "Head selection", "overlap", overlap_heatmaps,
    ),
    "accuracy_by_variant": Figure(
        "training", "Test accuracy of ResiDual and its baselines per dataset",
        "Main results", "accuracy", accuracy_bars,
    ),
    "accuracy_vs_parameters": Figure(
        "training", "Test accuracy against trainable parameters",
        "Main results", "parameters", accuracy_vs_parameters,
    ),
    "head_attributes": Figure(
        "probes", "The planted attribute each head reads best, shaded by its margin over chance",
        "Ground truth", "per head", head_attributes,
    ),
    # Its table is not a results table: the cells of one maps file (`map_cells`), one picture per
    # model x task dataset (rules/maps.smk).
    "head_maps": Figure(
        "head_maps", "Where the top heads look: each patch's part of a head's output along its map's direction",
        "Head maps", "{dataset}", head_maps,
    ),
    "runtime": Figure(
        "runtime", "Wall time and peak memory of every rule's jobs",
        "Runtime", "per rule", runtime_chart,
    ),
}  # fmt: skip


def render(name: str, table: pl.DataFrame, demo: bool) -> alt.TopLevelMixin:
    """The chart `name` of `table`, titled, with the demo note under the title in demo runs."""
    if table.is_empty():
        raise ValueError(f"chart {name!r}: its table {FIGURES[name].table!r} has no rows")
    figure = FIGURES[name]
    return styled(figure.draw(table), figure.title, [DEMO_NOTE] if demo else [])
