"""How every chart of the report is drawn (which table it draws, its title and where the report
files it: `residual.report.outputs.CHARTS`).

The workflow makes `results/charts/{name}.{html,png,svg}` from `results/tables/{table}.parquet`
for each name it lists; the caption that says how to read a chart is `report/captions/{name}.rst`.
"""

from __future__ import annotations

from collections.abc import Callable

import altair as alt
import polars as pl

from residual.io.tables import DEMO_NOTE
from residual.report.accuracy_charts import accuracy_bars, accuracy_vs_parameters
from residual.report.charts import styled
from residual.report.map_charts import head_maps
from residual.report.outputs import CHARTS, RUNTIME
from residual.report.probe_charts import head_attributes
from residual.report.runtime_charts import runtime_chart
from residual.report.selection_charts import overlap_heatmaps, selection_curves
from residual.report.spectral_charts import (
    id_by_layer,
    id_heatmaps,
    id_ratio_by_layer,
    similarity_heatmaps,
)

# How each chart of `residual.report.outputs.CHARTS` is drawn from its table.
DRAW: dict[str, Callable[[pl.DataFrame], alt.TopLevelMixin]] = {
    "intrinsic_dimension_by_layer": id_by_layer,
    "intrinsic_dimension_ratio": id_ratio_by_layer,
    "intrinsic_dimension_heads": id_heatmaps,
    "similarity_heads": similarity_heatmaps,
    "head_selection": selection_curves,
    "head_overlap": overlap_heatmaps,
    "accuracy_by_variant": accuracy_bars,
    "accuracy_vs_parameters": accuracy_vs_parameters,
    "head_attributes": head_attributes,
    "head_maps": head_maps,
    RUNTIME: runtime_chart,
}


def render(name: str, table: pl.DataFrame, demo: bool) -> alt.TopLevelMixin:
    """The chart `name` of `table`, titled, with the demo note under the title in demo runs."""
    chart = CHARTS[name]
    if table.is_empty():
        raise ValueError(f"chart {name!r}: its table {chart.table!r} has no rows")
    return styled(DRAW[name](table), chart.title, [DEMO_NOTE] if demo else [])
