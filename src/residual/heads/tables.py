"""The head stage's aggregated tables: their Markdown summaries, the overlap of the heads
selected for different datasets (Jaccard), computed from the stacked selection tables, and the
best-read attribute of each unit in the probes table. Torch-free: the table jobs import it."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import polars as pl

from residual.heads.options import ALL_HEADS, ALL_UNITS, LABELS, SCORES
from residual.io.tables import with_keys

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


def overlap_with_summary(selection: pl.DataFrame, fraction: float, run: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    overlap = with_keys(overlap_table(selection), run=run)
    return overlap, overlap_summary(overlap, fraction)


# Each head table (residual.report.outputs.HEAD_TABLES) from its stacked per-job tables, the
# fraction of heads it is at and the run's name: the table and its Markdown summary.
HEAD_TABLES: dict[str, Callable[[pl.DataFrame, float | None, str], tuple[pl.DataFrame, pl.DataFrame]]] = {
    "zeroshot": lambda zeroshot, fraction, run: (zeroshot, zeroshot_summary(zeroshot)),
    "head_scores": lambda scores, fraction, run: (scores, scores_summary(scores)),
    "head_selection": lambda selection, fraction, run: (selection, selection_summary(selection, fraction)),
    "head_overlap": overlap_with_summary,
}


def normalised_margin(accuracy: pl.Expr, chance: pl.Expr) -> pl.Expr:
    """How far above chance a balanced accuracy is, as a fraction of the way to 1: 0 at chance, 1 perfect."""
    return (accuracy - chance) / (1 - chance)


def best_attributes(table: pl.DataFrame) -> pl.DataFrame:
    """The whole-unit probes of a probes table (probe_units' columns after model, dataset, attribute), one row per model x
    unit in the table's order: unit, kind, layer, head, the balanced accuracy on each task dataset
    (a column named after it), and the task read best, by normalised margin over chance (ties: the
    first task): best_dataset, best_attribute (both null where no task is read above chance, as by
    a constant unit), balanced_accuracy, chance, margin."""
    margin = normalised_margin(pl.col("balanced_accuracy"), pl.col("chance"))
    whole = table.filter(pl.col("component").is_null()).with_columns(margin=margin)
    units = ["model", "unit", "kind", "layer", "head"]
    accuracies = whole.pivot(on="dataset", index=units, values="balanced_accuracy", maintain_order=True)
    best = (
        whole.sort("margin", descending=True, maintain_order=True)
        .group_by("model", "unit", maintain_order=True)
        .first()
        .select(
            "model", "unit", pl.col("dataset").alias("best_dataset"), pl.col("attribute").alias("best_attribute"),
            "balanced_accuracy", "chance", "margin",
        )  # fmt: skip
    )
    above = pl.col("margin") > 0
    best = best.with_columns(pl.when(above).then(pl.col(name)).alias(name) for name in ("best_dataset", "best_attribute"))
    return accuracies.join(best, on=["model", "unit"], maintain_order="left")


def probes_summary(table: pl.DataFrame) -> pl.DataFrame:
    """The Markdown view of a probes table: per model and unit, each task's balanced accuracy and
    the task read best, with its chance and normalised margin."""
    return best_attributes(table).drop("kind", "best_dataset")
