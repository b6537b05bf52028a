"""The head stage's aggregated tables: their Markdown summaries and the overlap of the heads
selected for different datasets (Jaccard), computed from the stacked selection tables."""

from __future__ import annotations

import itertools

import polars as pl

from residual.heads.options import SCORES
from residual.heads.selection import ALL_HEADS, ALL_UNITS, LABELS

VERSION = "head-tables/1"  # bump when a change to this module changes the tables it writes
TOP_HEADS = 5  # heads listed per score in the Markdown of the scores table


def jaccard(first: set[str], second: set[str]) -> float:
    """|A & B| / |A | B|; two empty sets are identical (1)."""
    union = first | second
    return len(first & second) / len(union) if union else 1.0


def overlap_table(selection: pl.DataFrame) -> pl.DataFrame:
    """Per model, score, fraction and ordered pair of datasets (the diagonal included, for heatmaps):
    the Jaccard index of the heads selected on each. Random selections are left out: their heads do
    not depend on the dataset (the same seeded order everywhere), so their overlap is 1 by design."""
    chosen = (
        selection.filter(~pl.col("score").is_in(["random", ALL_HEADS, ALL_UNITS]))
        .unique(["model", "dataset", "score", "fraction"], keep="first", maintain_order=True)
        .select("model", "dataset", "score", "label", "fraction", "selection", "k", "heads")
    )
    rows = []
    for (model, score, fraction), group in chosen.group_by(["model", "score", "fraction"], maintain_order=True):
        sets = {dataset: set(heads.split()) for dataset, heads in group.select("dataset", "heads").iter_rows()}
        first = group.row(0, named=True)
        for a, b in itertools.product(sets, repeat=2):
            rows.append(
                {
                    "model": model,
                    "score": score,
                    "label": first["label"],
                    "fraction": fraction,
                    "selection": first["selection"],
                    "k": first["k"],
                    "dataset_a": a,
                    "dataset_b": b,
                    "jaccard": jaccard(sets[a], sets[b]),
                }
            )
    schema = {"model": pl.String, "score": pl.String, "label": pl.String, "fraction": pl.Float64, "selection": pl.String,
              "k": pl.Int64, "dataset_a": pl.String, "dataset_b": pl.String, "jaccard": pl.Float64}  # fmt: skip
    return pl.DataFrame(rows, schema=schema)


def selection_summary(selection: pl.DataFrame, fraction: float) -> pl.DataFrame:
    """The paper's table at one fraction: rows model x dataset x ablation, columns U|T, U, S (test
    accuracy), random (mean +- std over seeds), H (every head kept) and B (every unit)."""
    keys = ["model", "dataset", "ablation"]
    at = selection.filter((pl.col("fraction") - fraction).abs() < 1e-9)
    scored = at.filter(~pl.col("score").is_in(["random", ALL_HEADS, ALL_UNITS]))
    table = selection.filter(pl.col("score") == ALL_HEADS).select(*keys).unique(maintain_order=True)
    labels = [SCORES[name] for name in SCORES if name != "random" and name in set(scored["score"])]
    if labels:
        table = table.join(scored.pivot(on="label", index=keys, values="accuracy"), on=keys, how="left")
    random = at.filter(pl.col("score") == "random")
    if random.height:
        spread = random.group_by(keys).agg(pl.col("accuracy").mean().alias("mean"), pl.col("accuracy").std().alias("std"))
        spread = spread.select(*keys, pl.format("{} +- {}", pl.col("mean").round(3), pl.col("std").round(3)).alias("random"))
        table = table.join(spread, on=keys, how="left")
    heads = selection.filter(pl.col("score") == ALL_HEADS).select(*keys, pl.col("accuracy").alias(LABELS[ALL_HEADS]))
    units = selection.filter(pl.col("score") == ALL_UNITS).select("model", "dataset", pl.col("accuracy").alias(LABELS[ALL_UNITS]))
    table = table.join(heads, on=keys, how="left").join(units, on=["model", "dataset"], how="left")
    return table.select(*keys, *labels, *(["random"] if random.height else []), "H", "B").sort(keys)


def overlap_summary(overlap: pl.DataFrame, fraction: float) -> pl.DataFrame:
    """The overlap at one fraction as matrices: rows model x score x dataset, one column per dataset."""
    at = overlap.filter((pl.col("fraction") - fraction).abs() < 1e-9)
    return at.pivot(on="dataset_b", index=["model", "label", "dataset_a"], values="jaccard", maintain_order=True)


def scores_summary(scores: pl.DataFrame) -> pl.DataFrame:
    """The TOP_HEADS best heads of every non-random score per model and dataset, with their values."""
    best = scores.filter((pl.col("score") != "random") & (pl.col("rank") <= TOP_HEADS)).sort("model", "dataset", "score", "rank")
    return best.select("model", "dataset", "label", "rank", "unit", "value")


def zeroshot_summary(zeroshot: pl.DataFrame) -> pl.DataFrame:
    """The zero-shot table without the run name."""
    return zeroshot.drop("run", strict=False)
