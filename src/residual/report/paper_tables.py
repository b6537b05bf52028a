"""The tables the paper prints, as standalone booktabs LaTeX (`residual.io.tables.to_latex`):
each summarises one results table to the size of a printed table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

ID_VALUES = ["linear_id", "twonn_id", "linear_over_twonn", "first_evr"]
SIMILARITY_VALUES = ["similarity", "similarity_unweighted"]


def per_kind(table: pl.DataFrame, keys: list[str], values: list[str]) -> pl.DataFrame:
    """Means of `values` per `keys` and unit kind (heads, MLPs, emb, output), with the unit count."""
    return (
        table.group_by(*keys, "kind", maintain_order=True)
        .agg(pl.len().alias("units"), *(pl.col(value).mean() for value in values))
        .sort(*keys, maintain_order=True)
    )


def intrinsic_dimension_summary(table: pl.DataFrame) -> pl.DataFrame:
    """Per model, dataset and unit kind: mean linear ID, TwoNN ID, their ratio and first EVR."""
    return per_kind(table, ["model", "dataset"], ID_VALUES)


def similarity_summary(table: pl.DataFrame) -> pl.DataFrame:
    """Per model, dataset (against the reference) and unit kind: mean weighted and unweighted similarity."""
    return per_kind(table, ["model", "reference", "dataset"], SIMILARITY_VALUES)


def main_summary(table: pl.DataFrame) -> pl.DataFrame:
    """Rows model x variant, with its trainable parameters (the most over datasets) and test
    accuracy (%) per dataset (columns) and their mean."""
    datasets = table["dataset"].unique(maintain_order=True).to_list()
    accuracy = table.with_columns((100 * pl.col("test_accuracy")).alias("accuracy")).pivot(
        on="dataset", index=["model", "variant"], values="accuracy", maintain_order=True
    )
    parameters = table.group_by("model", "variant", maintain_order=True).agg(pl.col("trainable_parameters").max().alias("parameters"))
    return parameters.join(accuracy, on=["model", "variant"], maintain_order="left").with_columns(
        pl.mean_horizontal(datasets).alias("mean")
    )


@dataclass(frozen=True)
class PaperTable:
    """A printed table: the results table it summarises, how, and its caption."""

    table: str
    summarise: Callable[[pl.DataFrame], pl.DataFrame]
    caption: str


PAPER_TABLES = {
    "main": PaperTable("training", main_summary, "Test accuracy (%) of ResiDual and its baselines, and their trainable parameters"),
    "similarity": PaperTable("similarity", similarity_summary, "Mean similarity of each kind of unit to the reference dataset, weighted and unweighted"),
    "intrinsic_dimension": PaperTable(
        "intrinsic_dimension", intrinsic_dimension_summary, "Mean intrinsic dimension (linear k(0.99), TwoNN), their ratio and first-component EVR per kind of unit"
    ),
}  # fmt: skip
