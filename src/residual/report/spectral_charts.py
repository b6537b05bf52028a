"""Charts of the spectral tables (paper section 3): intrinsic dimension and similarity per unit.

Inputs are the pipeline's tables: `intrinsic_dimension` (model, dataset, unit, kind, layer, head,
linear_id, twonn_id, linear_over_twonn, first_evr) and `similarity` (model, reference, dataset,
unit, kind, layer, head, similarity, similarity_unweighted).
"""

from __future__ import annotations

import math

import altair as alt
import polars as pl

from residual.report.charts import data_scale, layer_head_heatmap, ordered

ESTIMATORS = {"linear_id": "linear ID k(0.99)", "twonn_id": "TwoNN ID"}
# column title and legend title of each per-head quantity
HEAD_METRICS = {
    "linear_id": ("linear ID k(0.99)", "dimensions"),
    "twonn_id": ("TwoNN ID", "dimensions"),
    "linear_over_twonn": ("linear ID / TwoNN ID", "ratio"),
    "first_evr": ("first-component EVR", "variance ratio"),
}
ROW_HEADER = alt.Header(labelAngle=0, labelAlign="left")
SIMILARITIES = {"similarity": "weighted", "similarity_unweighted": "unweighted"}


def heads(table: pl.DataFrame) -> pl.DataFrame:
    return table.filter(pl.col("kind") == "head")


def per_layer(table: pl.DataFrame, values: list[str]) -> pl.DataFrame:
    """Means of `values` over each layer's heads, per model and dataset."""
    return (
        heads(table)
        .group_by("model", "dataset", "layer", maintain_order=True)
        .agg(pl.len().alias("heads"), *(pl.col(value).mean() for value in values))
        .sort("model", "dataset", "layer", maintain_order=True)
    )


def layer_ticks(table: pl.DataFrame) -> list[int]:
    """Whole layer numbers for the x axis, at most 12 of them."""
    layers = int(table["layer"].max()) + 1
    return list(range(0, layers, math.ceil(layers / 12)))


def layer_lines(models: list[str], layers: list[int], y: alt.Y) -> alt.Chart:
    """One line (with points) per model over the layers."""
    return (
        alt.Chart()
        .mark_line(point=True, strokeWidth=2)
        .encode(
            x=alt.X("layer:Q", title="layer (0 = first)", axis=alt.Axis(values=layers, format="d")),
            y=y,
            color=alt.Color("model:N", title="model", sort=models),
            tooltip=["model:N", "dataset:N", "layer:Q", "heads:Q", alt.Tooltip(y.shorthand, format=".3g")],
        )
        .properties(width=320, height=220)
    )


def id_by_layer(table: pl.DataFrame) -> alt.TopLevelMixin:
    """Mean linear and TwoNN intrinsic dimension of each layer's heads, one line per model: a
    panel per estimator (side by side) and per dataset (rows)."""
    long = per_layer(table, list(ESTIMATORS)).unpivot(
        index=["model", "dataset", "layer", "heads"], on=list(ESTIMATORS), variable_name="estimator", value_name="id"
    )
    long = long.with_columns(pl.col("estimator").replace_strict(ESTIMATORS))
    y = alt.Y("id:Q", title="intrinsic dimension (mean over heads)", scale=alt.Scale(zero=False))
    return (
        layer_lines(ordered(table, "model"), layer_ticks(heads(table)), y)
        .facet(
            data=long,
            column=alt.Column("estimator:N", title=None, sort=list(ESTIMATORS.values())),
            row=alt.Row("dataset:N", title="dataset", sort=ordered(table, "dataset")),
        )
        .resolve_scale(y="independent")
    )


def id_ratio_by_layer(table: pl.DataFrame) -> alt.TopLevelMixin:
    """Mean over each layer's heads of linear ID / TwoNN ID, one line per model, a panel per dataset."""
    y = alt.Y("linear_over_twonn:Q", title="linear ID / TwoNN ID (mean over heads)", scale=alt.Scale(zero=False))
    return layer_lines(ordered(table, "model"), layer_ticks(heads(table)), y).facet(
        data=per_layer(table, ["linear_over_twonn"]),
        column=alt.Column("dataset:N", title="dataset", sort=ordered(table, "dataset")),
    )


def id_heatmaps(table: pl.DataFrame) -> alt.TopLevelMixin:
    """Layer x head heatmaps of linear ID, TwoNN ID, their ratio and the first component's
    explained variance ratio: a column per quantity (each with its own colour scale), a row per
    model and dataset."""
    data = heads(table).with_columns(pl.format("{} on {}", "model", "dataset").alias("panel"))
    panels = ordered(data, "panel")
    columns = [
        layer_head_heatmap(value, title, legend, data_scale())
        .facet(data=data, row=alt.Row("panel:N", title=None, sort=panels, header=ROW_HEADER))
        .properties(title=title)
        for value, (title, legend) in HEAD_METRICS.items()
    ]
    return alt.hconcat(*columns).resolve_scale(color="independent")


def similarity_heatmaps(table: pl.DataFrame) -> alt.TopLevelMixin:
    """Layer x head heatmaps of each head's similarity to the reference dataset, weighted (left)
    and unweighted (right), a row per model and a column per dataset; one colour scale for both."""
    data = heads(table).with_columns(pl.format("{} vs {}", "dataset", "reference").alias("comparison"))
    values = data.select(pl.concat_list(list(SIMILARITIES)).explode().drop_nulls())
    scale = data_scale(domain=[values.min().item(), values.max().item()]) if values.height else data_scale()
    columns = [
        layer_head_heatmap(value, f"similarity ({kind})", "spectral cosine", scale)
        .facet(
            data=data,
            row=alt.Row("model:N", title=None, sort=ordered(data, "model"), header=ROW_HEADER),
            column=alt.Column("comparison:N", title=None, sort=ordered(data, "comparison")),
        )
        .properties(title=f"{kind} by eigenvalues" if kind == "weighted" else "unweighted (identity weights)")
        for value, kind in SIMILARITIES.items()
    ]
    return alt.hconcat(*columns).resolve_scale(color="shared")
