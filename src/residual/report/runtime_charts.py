"""The chart of what the run cost (`residual.report.runtime`): wall time and memory per rule and model."""

from __future__ import annotations

import altair as alt
import polars as pl

from residual.report.charts import ordered
from residual.report.runtime import runtime_summary


def runtime_chart(table: pl.DataFrame) -> alt.TopLevelMixin:
    """Total wall time (left) and peak resident memory (right) of each rule's jobs, a bar per
    model within each rule; rules sorted by total wall time."""
    summary = runtime_summary(table)
    rules = summary.group_by("rule").agg(pl.col("total_wall_s").sum()).sort("total_wall_s", descending=True)["rule"].to_list()
    models = ordered(summary, "model")
    base = alt.Chart(summary).encode(
        y=alt.Y("rule:N", title="rule", sort=rules, axis=alt.Axis(labelLimit=320)),
        yOffset=alt.YOffset("model:N", sort=models),
        color=alt.Color("model:N", title="model", sort=models),
        tooltip=["rule:N", "model:N", "jobs:Q", alt.Tooltip("total_wall_s:Q", title="total wall time (s)", format=".1f"),
                 alt.Tooltip("longest_wall_s:Q", title="longest job (s)", format=".1f"),
                 alt.Tooltip("peak_rss_mb:Q", title="peak memory (MB)", format=",.0f")],
    )  # fmt: skip
    wall = base.mark_bar().encode(x=alt.X("total_wall_s:Q", title="total wall time of its jobs (s)")).properties(
        width=320, height=alt.Step(10)
    )
    memory = base.mark_bar().encode(x=alt.X("peak_rss_mb:Q", title="peak resident memory of a job (MB)")).properties(
        width=320, height=alt.Step(10)
    )
    return alt.hconcat(wall, memory)
