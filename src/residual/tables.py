"""Results tables: built as polars frames, written as Parquet, CSV and Markdown."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import polars as pl
from tabulate import tabulate

from residual.atomic import atomic_path
from residual.store import UnitFile

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


def write_table(table: pl.DataFrame, outputs: Sequence[str | Path], title: str, demo: bool) -> None:
    """Write `table` to each output by its suffix (.parquet, .csv, .md), atomically."""
    for output in outputs:
        suffix = Path(output).suffix
        with atomic_path(output) as tmp:
            if suffix == ".parquet":
                table.write_parquet(tmp)
            elif suffix == ".csv":
                table.write_csv(tmp)
            elif suffix == ".md":
                tmp.write_text(to_markdown(table, title, demo))
            else:
                raise ValueError(f"no writer for table format {suffix!r} ({output})")


def to_markdown(table: pl.DataFrame, title: str, demo: bool) -> str:
    note = f"> {DEMO_NOTE}\n\n" if demo else ""
    body = tabulate(table.rows(), headers=table.columns, tablefmt="github", floatfmt=".3g")
    return f"# {title}\n\n{note}{body}\n"
