"""Charts of head selection (paper section 4): accuracy against the fraction of heads kept, and
the overlap of the heads selected for different datasets.

Inputs: `head_selection` (model, dataset, score, label, fraction, k, ablation, seed, accuracy, ...;
the reference rows, all heads and all units, have the labels `H` and `B`) and `head_overlap`
(model, score, label, fraction, dataset_a, dataset_b, jaccard). Scores are shown by their paper
labels (U|T, U, S, random).
"""

from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import polars as pl

from residual.report.charts import data_scale, ordered

REFERENCES = {"H": "all heads (H)", "B": "all units (B)"}
PAPER_FRACTION = 0.05  # the paper's main table keeps 5% of the heads


def selection_curves(table: pl.DataFrame, references: Sequence[str] = tuple(REFERENCES)) -> alt.TopLevelMixin:
    """Test accuracy against the fraction of heads kept (log scale), one line per score (seeded
    scores such as random: their mean, with a band from the lowest to the highest seed), the
    reference rows as dashed rules; a panel per model (rows) and dataset (columns)."""
    keys = ["model", "dataset", "score", "ablation"]
    table = table.with_columns(score=pl.col("label"))
    curves = (
        table.filter(~pl.col("score").is_in(list(references)))
        .group_by(*keys, "fraction", maintain_order=True)
        .agg(pl.col("accuracy").mean(), pl.col("accuracy").min().alias("lowest"), pl.col("accuracy").max().alias("highest"),
             pl.col("k").first(), pl.len().alias("seeds"))  # fmt: skip
        .with_columns(kind=pl.lit("curve"))
    )
    rules = (
        table.filter(pl.col("score").is_in(list(references)))
        .group_by(*keys, maintain_order=True)
        .agg(pl.col("accuracy").mean())
        .with_columns(pl.col("score").replace(REFERENCES), kind=pl.lit("reference"))
    )
    data = pl.concat([curves, rules], how="diagonal_relaxed")
    scores = ordered(curves, "score")
    dash = alt.StrokeDash("ablation:N", title="others") if curves["ablation"].n_unique() > 1 else alt.Undefined
    x = alt.X("fraction:Q", title="fraction of heads kept (log scale)", scale=alt.Scale(type="log"), axis=alt.Axis(format="%", labelOverlap="greedy"))
    y = alt.Y("accuracy:Q", title="test accuracy", axis=alt.Axis(format="%"), scale=alt.Scale(zero=False))
    color = alt.Color("score:N", title="score", sort=scores, legend=alt.Legend(symbolOpacity=1, symbolType="stroke"))
    band = alt.Chart().transform_filter("datum.kind == 'curve' && datum.seeds > 1").mark_area(opacity=0.2).encode(
        x=x, y="lowest:Q", y2="highest:Q", color=color, detail="ablation:N"  # one band per ablation, not one zigzag
    )
    lines = alt.Chart().transform_filter("datum.kind == 'curve'").mark_line(point=True).encode(
        x=x, y=y, color=color, strokeDash=dash,
        tooltip=["score:N", "ablation:N", alt.Tooltip("fraction:Q", format=".1%"), "k:Q",
                 alt.Tooltip("accuracy:Q", format=".1%"), "seeds:Q"],
    )  # fmt: skip
    reference = alt.Chart().transform_filter("datum.kind == 'reference'").mark_rule(strokeDash=[6, 3], color="#444").encode(
        y="accuracy:Q", tooltip=["score:N", alt.Tooltip("accuracy:Q", format=".1%")]
    )
    # H at the left end of its rule, B at the right end: the two are often close.
    label = f"datum.kind == 'reference' && datum.score == '{REFERENCES['H']}'"
    labels = alt.layer(
        alt.Chart().transform_filter(label).mark_text(align="left", dx=4, dy=-6, color="#444").encode(
            y="accuracy:Q", text="score:N", x=alt.value(0)
        ),
        alt.Chart().transform_filter(f"datum.kind == 'reference' && datum.score != '{REFERENCES['H']}'").mark_text(
            align="right", dx=-4, dy=-6, color="#444"
        ).encode(y="accuracy:Q", text="score:N", x=alt.value(260)),
    )
    return alt.layer(band, lines, reference, labels).properties(width=260, height=200).facet(
        data=data,
        row=alt.Row("model:N", title="model", sort=ordered(table, "model")),
        column=alt.Column("dataset:N", title="dataset", sort=ordered(table, "dataset")),
    )


def overlap_heatmaps(table: pl.DataFrame, fraction: float = PAPER_FRACTION) -> alt.TopLevelMixin:
    """Jaccard index between the heads selected for each pair of datasets at `fraction` of the
    heads, a heatmap per model (columns) and score (rows), the value written in each cell."""
    data = table.filter((pl.col("fraction") - fraction).abs() < 1e-9).with_columns(score=pl.col("label"))
    if data.is_empty():
        raise ValueError(f"head_overlap has no rows at fraction {fraction}: fractions present {ordered(table, 'fraction')}")
    datasets = sorted(set(ordered(data, "dataset_a")) | set(ordered(data, "dataset_b")))
    base = alt.Chart().encode(
        x=alt.X("dataset_b:N", title="dataset", sort=datasets, axis=alt.Axis(labelAngle=-40, grid=False)),
        y=alt.Y("dataset_a:N", title="dataset", sort=datasets, axis=alt.Axis(grid=False)),
    )
    cells = base.mark_rect().encode(
        color=alt.Color("jaccard:Q", title="Jaccard index", scale=data_scale()),
        tooltip=["dataset_a:N", "dataset_b:N", alt.Tooltip("jaccard:Q", format=".2f")],
    )
    text = base.mark_text(fontSize=10).encode(
        text=alt.Text("jaccard:Q", format=".2f"),
        color=alt.condition("datum.jaccard > 0.5", alt.value("black"), alt.value("white")),
    )
    return alt.layer(cells, text).properties(width=alt.Step(28), height=alt.Step(28)).facet(
        data=data,
        column=alt.Column("model:N", title="model", sort=ordered(data, "model")),
        row=alt.Row("score:N", title="score", sort=ordered(data, "score")),
    )
