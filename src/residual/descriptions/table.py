"""The descriptions table: per unit, the texts TextSpan and SOMP pick and the texts at both ends of
its first principal components; one row per text.

Columns: model, dataset, split (the keys), unit, kind, layer, head, method (`textspan`, `somp`,
`component`, or null on the row of a model without a text tower), component (1-based, component
rows), end (`+`: largest cosine, `-`: smallest), rank (1-based order within the method or end),
text, explained_variance (fraction of the unit's variance: removed by the pick, or explained by
the component), explained_total (by all picks of the method), cosine (component rows), note (on
the row of a model without a text tower; on a unit's rows of a method that found fewer texts than
asked for, how many and why: such a method that found none has one row, without a text).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl

from residual.io.atomic import atomic_path
from residual.io.tables import DEMO_NOTE, markdown_escape, markdown_table, with_keys, write_table

KEYS = {"model": pl.String, "dataset": pl.String, "split": pl.String}
COLUMNS = {
    "unit": pl.String,
    "kind": pl.String,
    "layer": pl.Int64,
    "head": pl.Int64,
    "method": pl.String,
    "component": pl.Int64,
    "end": pl.String,
    "rank": pl.Int64,
    "text": pl.String,
    "explained_variance": pl.Float64,
    "explained_total": pl.Float64,
    "cosine": pl.Float64,
    "note": pl.String,
}
METHODS = {"textspan": "TextSpan", "somp": "SOMP"}
NO_TEXT_TOWER = "no text tower: this model cannot encode the dictionary, so its units are not described"


def unit_rows(rows: list[dict[str, object]]) -> pl.DataFrame:
    """Rows (dicts with some of COLUMNS) as a frame with every column of COLUMNS, in order."""
    return pl.DataFrame([{name: row.get(name) for name in COLUMNS} for row in rows], schema=COLUMNS)


def no_text_tower_rows(models: Sequence[str]) -> pl.DataFrame:
    """One row per model without a text tower, saying so."""
    rows = [{"model": model, "note": NO_TEXT_TOWER} for model in models]
    schema = {**KEYS, **COLUMNS}
    return pl.DataFrame([{name: row.get(name) for name in schema} for row in rows], schema=schema)


def descriptions_table(paths: Sequence[str | Path], run_name: str, no_text_tower: Sequence[str]) -> pl.DataFrame:
    """Every describe job's rows, then one row per model without a text tower, with the run's name in front."""
    parts = [pl.read_parquet(path) for path in paths] + [no_text_tower_rows(no_text_tower)]
    schema = {**KEYS, **COLUMNS}
    table = pl.concat([part.select(*schema).cast(schema) for part in parts], how="vertical")
    return with_keys(table, run=run_name)


def method_summary(table: pl.DataFrame) -> pl.DataFrame:
    """Per unit and rank: the TextSpan text and the SOMP text, each with its explained variance."""
    keys = ["model", "dataset", "unit", "layer", "head", "rank"]

    def side(method: str) -> pl.DataFrame:
        label = METHODS[method]
        return table.filter((pl.col("method") == method) & pl.col("rank").is_not_null()).select(
            *keys, pl.col("text").alias(label), pl.col("explained_variance").alias(f"{label} explained")
        )

    joined = side("textspan").join(side("somp"), on=keys, how="full", coalesce=True)
    return joined.sort("model", "dataset", "layer", "head", "rank", nulls_last=False).drop("layer", "head")


def _unit_markdown(rows: pl.DataFrame) -> str:
    """One unit's picks side by side (TextSpan, SOMP), then its components' two ends."""
    picks = method_summary(rows).drop("model", "dataset", "unit")
    totals = [rows.filter(pl.col("method") == method)["explained_total"].first() for method in METHODS]
    body = [*(list(row) for row in picks.rows()), ["all", "", totals[0], "", totals[1]]]
    notes = rows.filter(pl.col("note").is_not_null())["note"].unique(maintain_order=True)
    parts = [*(f"> {markdown_escape(note)}" for note in notes), markdown_table(body, picks.columns)]
    components = rows.filter(pl.col("method") == "component")
    if not components.is_empty():
        lines = []
        for (component,), group in components.group_by("component", maintain_order=True):
            ends = {
                end: "; ".join(
                    f"{text} ({cosine:.2f})"
                    for text, cosine in group.filter(pl.col("end") == end).select("text", "cosine").rows()
                )
                for end in ("+", "-")
            }
            lines.append([f"PC{component}", group["explained_variance"][0], ends["+"], ends["-"]])
        parts.append(markdown_table(lines, ["component", "explained", "largest cosine", "smallest cosine"]))
    return "\n\n".join(parts)


def descriptions_markdown(table: pl.DataFrame, title: str, demo: bool) -> str:
    """Grouped per unit, as the TextSpan paper's head tables: a section per model, dataset and unit."""
    sections = [f"# {markdown_escape(title)}", *([f"> {DEMO_NOTE}"] if demo else [])]
    undescribed = table.filter(pl.col("unit").is_null())
    for model, note in undescribed.select("model", "note").unique(maintain_order=True).rows():
        sections.append(f"## {markdown_escape(model)}\n\n{markdown_escape(note)}")
    described = table.filter(pl.col("unit").is_not_null())
    for (model, dataset, split, unit), rows in described.group_by("model", "dataset", "split", "unit", maintain_order=True):
        heading = markdown_escape(f"{model} · {dataset} ({split}) · {unit}")
        sections.append(f"## {heading}\n\n{_unit_markdown(rows)}")
    return "\n\n".join(sections) + "\n"


def write_descriptions(table: pl.DataFrame, outputs: Sequence[str | Path], title: str, demo: bool) -> None:
    """Parquet and CSV: every row; Markdown: grouped per unit; LaTeX: the TextSpan and SOMP picks side by side."""
    for output in outputs:
        if Path(output).suffix == ".md":
            with atomic_path(output) as tmp:
                tmp.write_text(descriptions_markdown(table, title, demo))
        else:
            write_table(table, [output], title, demo=demo, markdown=method_summary(table))
