"""Results tables: the summaries the report shows, built as polars frames (written by
`residual.io.tables`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from residual.io.tables import with_keys

VERSION = "tables/4"  # bump when a change to the tables' layout or summaries changes what they hold


def authors_bytes_per_sample(layers: int, heads: int, head_dim: int, width: int) -> int:
    """The authors' float32 layout: d_head values per head, the model width per MLP and for emb."""
    return 4 * (layers * heads * head_dim + (layers + 1) * width)


def decomposition_table(paths: Sequence[str | Path], run_name: str) -> pl.DataFrame:
    """Per model x dataset x split: samples, units, max relative decomposition error, storage cost."""
    # Imported here: the unit store needs torch, which the other tables, built from this module, do not.
    from residual.units.store import UnitFile

    rows = []
    for path in paths:
        unit_file = UnitFile(path)
        meta, layout = unit_file.metadata, unit_file.layout
        samples = len(unit_file)
        rows.append(
            {
                "run": run_name,
                "model": meta["model"],
                "dataset": meta["dataset"],
                "split": meta["split"],
                "samples": samples,
                "units": layout.count,
                "layers": layout.layers,
                "heads": layout.heads,
                "out_dim": layout.out_dim,
                "dtype": meta["dtype"],
                "ln_constants": meta.get("ln_constants"),
                "max_rel_error": meta["decomposition_error"],
                "readback_rel_error": meta["readback_error"],
                "bytes_per_sample": os.path.getsize(path) / samples if samples else float("nan"),
            }
        )
    return pl.DataFrame(rows).sort("model", "dataset", "split")


def concat_tables(paths: Sequence[str | Path], run_name: str) -> pl.DataFrame:
    """Per-job Parquet tables of one kind, stacked (a column some jobs lack is null there), with the
    run's name in front."""
    return with_keys(pl.concat([pl.read_parquet(path) for path in paths], how="diagonal_relaxed"), run=run_name)


def layer_summary(table: pl.DataFrame, values: Sequence[str]) -> pl.DataFrame:
    """Means of `values` per model, dataset, unit kind and layer (heads averaged within a layer)."""
    keys = [key for key in ("model", "dataset", "kind", "layer") if key in table.columns]
    return (
        table.group_by(keys, maintain_order=True)
        .agg(pl.len().alias("units"), *(pl.col(value).mean() for value in values))
        .sort(keys, nulls_last=False)
    )


def flag_few_samples(table: pl.DataFrame, minimum: int) -> pl.DataFrame:
    """`table` with `few_samples`: whether its accuracies rest on fewer than `minimum` val or test
    samples (columns `val_samples`, `test_samples`), too few to read much into."""
    return table.with_columns(few_samples=pl.min_horizontal("val_samples", "test_samples") < minimum)


def accuracy_summary(table: pl.DataFrame) -> pl.DataFrame:
    """Test accuracy per model and dataset (rows) and variant (columns, in the table's order), with
    the conventions that produced it (`lambda_init` of the variants that have one) and the
    `few_samples` flag; trainable parameters are in the full table."""
    keys = ["model", "dataset", "logits"]
    conventions = table.group_by(keys, maintain_order=True).agg(
        pl.col("lambda_init").drop_nulls().first(), pl.col("few_samples").any()
    )
    accuracies = table.pivot(on="variant", index=keys, values="test_accuracy", maintain_order=True)
    return conventions.join(accuracies, on=keys, maintain_order="left").sort("model", "dataset")
