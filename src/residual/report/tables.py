"""Results tables: built as polars frames, written as Parquet, CSV and Markdown."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import polars as pl
from tabulate import tabulate

from residual.io.atomic import atomic_path
from residual.units.store import UnitFile

DEMO_NOTE = "Demo run: random weights and toy data. These numbers are not the paper's."


def authors_bytes_per_sample(layers: int, heads: int, head_dim: int, width: int) -> int:
    """The authors' float32 layout: d_head values per head, the model width per MLP and for emb."""
    return 4 * (layers * heads * head_dim + (layers + 1) * width)


def decomposition_table(paths: Sequence[str | Path], run_name: str) -> pl.DataFrame:
    """Per model x dataset x split: samples, units, max relative decomposition error, storage cost."""
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
                "max_rel_error": meta["decomposition_error"],
                "readback_rel_error": meta["readback_error"],
                "bytes_per_sample": os.path.getsize(path) / samples if samples else float("nan"),
            }
        )
    return pl.DataFrame(rows).sort("model", "dataset", "split")


def with_keys(table: pl.DataFrame, **keys: str) -> pl.DataFrame:
    """`table` with constant identifying columns (model=..., dataset=...) in front."""
    return table.select(*(pl.lit(value).alias(name) for name, value in keys.items()), pl.all())


def concat_tables(paths: Sequence[str | Path], run_name: str) -> pl.DataFrame:
    """Per-job Parquet tables of one kind, stacked, with the run's name in front."""
    return with_keys(pl.concat([pl.read_parquet(path) for path in paths], how="vertical_relaxed"), run=run_name)


def layer_summary(table: pl.DataFrame, values: Sequence[str]) -> pl.DataFrame:
    """Means of `values` per model, dataset, unit kind and layer (heads averaged within a layer)."""
    keys = [key for key in ("model", "dataset", "kind", "layer") if key in table.columns]
    return (
        table.group_by(keys, maintain_order=True)
        .agg(pl.len().alias("units"), *(pl.col(value).mean() for value in values))
        .sort(keys, nulls_last=False)
    )


def accuracy_summary(table: pl.DataFrame) -> pl.DataFrame:
    """Test accuracy per model and dataset (rows) and variant (columns, in the table's order), with
    the conventions that produced it; trainable parameters are in the full table."""
    keys = ["model", "dataset", "logits", "lambda_init"]
    return table.pivot(on="variant", index=keys, values="test_accuracy", maintain_order=True).sort("model", "dataset")


def write_table(
    table: pl.DataFrame,
    outputs: Sequence[str | Path],
    title: str = "",
    demo: bool = False,
    markdown: pl.DataFrame | None = None,
) -> None:
    """Write `table` to each output by its suffix (.parquet, .csv, .md), atomically. The Markdown
    file shows `markdown` instead when given (a summary of a table too long to read)."""
    for output in outputs:
        suffix = Path(output).suffix
        with atomic_path(output) as tmp:
            if suffix == ".parquet":
                table.write_parquet(tmp)
            elif suffix == ".csv":
                table.write_csv(tmp)
            elif suffix == ".md":
                tmp.write_text(to_markdown(table if markdown is None else markdown, title, demo))
            else:
                raise ValueError(f"no writer for table format {suffix!r} ({output})")


def to_markdown(table: pl.DataFrame, title: str, demo: bool) -> str:
    note = f"> {DEMO_NOTE}\n\n" if demo else ""
    body = tabulate(table.rows(), headers=table.columns, tablefmt="github", floatfmt=".3g")
    return f"# {title}\n\n{note}{body}\n"
