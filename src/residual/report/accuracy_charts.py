"""Charts of the main results (paper section 5): accuracy of every variant, and accuracy against
the number of trainable parameters.

Input: one row per model x dataset x variant with `test_accuracy` and `trainable_parameters`
(the `training` table; the `main` table in long form).
"""

from __future__ import annotations

import math

import altair as alt
import polars as pl

from residual.report.charts import ordered


def accuracy_bars(table: pl.DataFrame) -> alt.TopLevelMixin:
    """Grouped bars: test accuracy per dataset (groups) and variant (bars), a row per model."""
    variants = ordered(table, "variant")
    bars = (
        alt.Chart()
        .mark_bar()
        .encode(
            x=alt.X("dataset:N", title="dataset", sort=ordered(table, "dataset"), axis=alt.Axis(labelAngle=0)),
            xOffset=alt.XOffset("variant:N", sort=variants),
            y=alt.Y("test_accuracy:Q", title="test accuracy", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1])),
            color=alt.Color("variant:N", title="variant", sort=variants),
            tooltip=["model:N", "dataset:N", "variant:N", alt.Tooltip("test_accuracy:Q", format=".1%"),
                     alt.Tooltip("trainable_parameters:Q", title="trainable parameters", format=",")],
        )  # fmt: skip
        .properties(width=alt.Step(16), height=220)
    )
    return bars.facet(data=table, row=alt.Row("model:N", title="model", sort=ordered(table, "model")))


def decades(values: pl.Series) -> list[int]:
    """Powers of ten spanning `values` (positive), the ticks of a log axis."""
    if values.is_empty():
        return [1]
    return [10**power for power in range(math.floor(math.log10(values.min())), math.ceil(math.log10(values.max())) + 1)]


def accuracy_vs_parameters(table: pl.DataFrame) -> alt.TopLevelMixin:
    """Test accuracy against trainable parameters (log scale), a point per variant; the zero-shot
    `base` (no parameters, so no place on a log axis) as a dashed rule; a panel per model (rows)
    and dataset (columns)."""
    variants = ordered(table, "variant")
    data = table.with_columns(kind=pl.when(pl.col("trainable_parameters") > 0).then(pl.lit("trained")).otherwise(pl.lit("zero-shot")))
    points = (
        alt.Chart()
        .transform_filter("datum.kind == 'trained'")
        .mark_point(filled=True, size=90)
        .encode(
            x=alt.X("trainable_parameters:Q", title="trainable parameters (log scale)", scale=alt.Scale(type="log"),
                    axis=alt.Axis(format="~s", values=decades(data["trainable_parameters"].filter(data["trainable_parameters"] > 0)))),
            y=alt.Y("test_accuracy:Q", title="test accuracy", axis=alt.Axis(format="%"), scale=alt.Scale(zero=False)),
            color=alt.Color("variant:N", title="variant", sort=variants),
            tooltip=["variant:N", alt.Tooltip("trainable_parameters:Q", title="trainable parameters", format=","),
                     alt.Tooltip("test_accuracy:Q", format=".1%")],
        )  # fmt: skip
    )
    zero_shot = (
        alt.Chart()
        .transform_filter("datum.kind == 'zero-shot'")
        .mark_rule(strokeDash=[6, 3], color="#444")
        .encode(y="test_accuracy:Q", tooltip=["variant:N", alt.Tooltip("test_accuracy:Q", format=".1%")])
    )
    label = (
        alt.Chart()
        .transform_filter("datum.kind == 'zero-shot'")
        .mark_text(align="left", dx=4, dy=-6, color="#444")
        .encode(y="test_accuracy:Q", text=alt.value("zero-shot"), x=alt.value(0))
    )
    return alt.layer(points, zero_shot, label).properties(width=280, height=200).facet(
        data=data,
        row=alt.Row("model:N", title="model", sort=ordered(table, "model")),
        column=alt.Column("dataset:N", title="dataset", sort=ordered(table, "dataset")),
    )
