"""Two completed runs of the pipeline side by side: how much each result moved.

Where the paper and the authors' published code differ (docs/conventions.md), the config chooses
(`CONVENTIONS`). `compare_runs` reads the result tables of two run folders, joins them on their
identifying columns (not on the convention columns, which are what differs) and returns one row
per result and metric: accuracy per (model, dataset, variant), intrinsic dimension and similarity
per (model, dataset, unit kind, layer), with both values and their difference. `summarise` gives
one row per table and metric: how many results changed and by how much at most.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from residual.report.tables import layer_summary


@dataclass(frozen=True)
class Convention:
    """One difference: the config key (dotted), the paper's value and the published code's."""

    key: str
    paper: Any
    published: Any


CONVENTIONS: dict[str, Convention] = {
    "ln_constants": Convention("encode.ln_constants", "per_unit", "per_layer"),
    "published_code": Convention("training.published_code", False, True),
    "linear_id_on": Convention("analysis.linear_id_on", "split", "id_sample"),
    "head_rank": Convention("training.head_rank", "nonzero", "d_head"),
}


@dataclass(frozen=True)
class Result:
    """A result table of a run folder: its keys, the metrics compared, and whether it is summarised
    per layer first (per-unit tables: one row per model, dataset, kind and layer)."""

    table: str
    keys: tuple[str, ...]
    metrics: tuple[str, ...]
    per_layer: bool


RESULTS = (
    Result("training", ("model", "dataset", "variant"), ("val_accuracy", "test_accuracy", "trainable_parameters"), False),
    Result("intrinsic_dimension", ("model", "dataset", "kind", "layer"), ("linear_id", "twonn_id", "first_evr"), True),
    Result("similarity", ("model", "dataset", "kind", "layer"), ("similarity", "similarity_unweighted"), True),
)


def _read(folder: Path, result: Result) -> pl.DataFrame | None:
    path = folder / "results" / "tables" / f"{result.table}.parquet"
    if not path.exists():
        return None
    table = pl.read_parquet(path)
    if result.per_layer:
        table = layer_summary(table, list(result.metrics)).drop("units")
    return table.select(*result.keys, *(pl.col(metric).cast(pl.Float64) for metric in result.metrics))


def compare_runs(first: str | Path, second: str | Path) -> pl.DataFrame:
    """One row per result and metric of the tables both run folders hold: table, model, dataset,
    result (variant, or kind and layer), metric, first, second, difference (second - first)."""
    parts = []
    for result in RESULTS:
        a, b = _read(Path(first), result), _read(Path(second), result)
        if a is None or b is None:
            continue
        joined = a.join(b, on=list(result.keys), how="full", coalesce=True, suffix="_second", nulls_equal=True)
        label = [key for key in result.keys if key not in ("model", "dataset")]
        for metric in result.metrics:
            parts.append(
                joined.select(
                    pl.lit(result.table).alias("table"),
                    pl.col("model"),
                    pl.col("dataset"),
                    pl.concat_str([pl.col(key).cast(pl.String) for key in label], separator=" ", ignore_nulls=True).alias("result"),
                    pl.lit(metric).alias("metric"),
                    pl.col(metric).alias("first"),
                    pl.col(f"{metric}_second").alias("second"),
                    (pl.col(f"{metric}_second") - pl.col(metric)).alias("difference"),
                )
            )
    if not parts:
        raise FileNotFoundError(f"neither {first} nor {second} holds result tables both have (results/tables/*.parquet)")
    return pl.concat(parts)


def summarise(differences: pl.DataFrame, tolerance: float = 1e-6) -> pl.DataFrame:
    """Per table and metric: results compared, results that changed, the largest |difference| and
    the mean |difference|. A result changed when |difference| > tolerance x the larger |value|:
    result tables hold float32 values, and the same quantity reached by two computation paths (a
    PCA of the split and of a sample that is the whole split) differs by ~1e-8 relative."""
    magnitude = pl.col("difference").abs()
    scale = pl.max_horizontal(pl.col("first").abs(), pl.col("second").abs())
    return (
        differences.group_by("table", "metric", maintain_order=True)
        .agg(
            pl.len().alias("results"),
            (magnitude > tolerance * scale).sum().alias("changed"),
            magnitude.max().alias("max_abs_difference"),
            magnitude.mean().alias("mean_abs_difference"),
        )
        .sort("table", "metric", maintain_order=True)
    )
