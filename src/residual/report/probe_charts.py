"""Charts of the probes table (rules/world.smk): which planted attribute each head reads.

Input: `probes` (run, model, dataset, attribute, unit, kind, layer, head, component, ...,
balanced_accuracy, chance, ...); only the whole-unit probes of the heads are drawn.
"""

from __future__ import annotations

import altair as alt
import polars as pl

from residual.heads.tables import best_attributes
from residual.report.charts import CELL, ordered
from residual.report.spectral_charts import ROW_HEADER

# Vega's category10 without its grey: one colour per world attribute (there are 5); grey: a head that reads none.
CATEGORY10 = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
NONE, NONE_COLOUR = "none above chance", "#7f7f7f"


def head_attributes(table: pl.DataFrame) -> alt.TopLevelMixin:
    """Layer (rows, first on top) x head (columns) per model (a row of panels): each head coloured
    by the attribute it reads best (largest normalised margin over chance, (accuracy - chance) /
    (1 - chance), of the whole-head probe; grey where it reads none above chance), shaded by that
    margin from 0 (faint) to 1; the tooltip lists its balanced accuracy on every task."""
    data = best_attributes(table).filter(pl.col("kind") == "head").with_columns(pl.col("best_attribute").fill_null(NONE))
    tasks = ordered(table, "dataset")
    attributes = ordered(table, "attribute")
    colours = alt.Scale(domain=[*attributes, NONE], range=[*CATEGORY10[: len(attributes)], NONE_COLOUR])
    tooltip = [
        "unit:N",
        alt.Tooltip("best_attribute:N", title="best attribute"),
        alt.Tooltip("margin:Q", title="margin over chance", format=".2f"),
        alt.Tooltip("chance:Q", title="its chance", format=".1%"),
        *(alt.Tooltip(f"{task}:Q", title=f"{task} accuracy", format=".1%") for task in tasks),
    ]
    cells = (
        alt.Chart()
        .mark_rect()
        .encode(
            x=alt.X("head:O", title="head", axis=alt.Axis(labelAngle=0, grid=False)),
            y=alt.Y("layer:O", title="layer", axis=alt.Axis(grid=False)),
            # Every world attribute in the legend, in the config's order, whether or not a head reads it best.
            color=alt.Color("best_attribute:N", title="best attribute", scale=colours),
            opacity=alt.Opacity(
                "margin:Q", title="margin over chance", scale=alt.Scale(domain=[0, 1], range=[0.08, 1], clamp=True)
            ),
            tooltip=tooltip,
        )
        .properties(width=alt.Step(CELL * 2), height=alt.Step(CELL * 2))
    )
    return cells.facet(data=data, row=alt.Row("model:N", title=None, sort=ordered(data, "model"), header=ROW_HEADER))
