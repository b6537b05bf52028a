"""The paper's main results table: test accuracy and trainable parameters of every variant, per
model and task dataset, and how much of fine-tuning's accuracy each variant reaches.

The headline (METHOD section 9) is a ratio: ResiDual reaches about 0.90-0.92 of full fine-tuning's
accuracy with ~10^4 trainable parameters instead of ~3x10^8. The table states it two ways per
model: the mean over datasets of accuracy / fine-tune accuracy (`<variant>_of_finetune` in the
`mean` row), and the ratio of the mean accuracies (the `mean / finetune` row).
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from residual.alignment.names import FINETUNE

VERSION = "main_table/1"  # bump when a change to this module changes what the main table holds
DATASET, MEAN, RATIO = "dataset", "mean", "mean / finetune"


def main_table(runs: pl.DataFrame, variants: Sequence[str]) -> pl.DataFrame:
    """One row per model x task dataset (`row` 'dataset'), then per model a `mean` row and a
    `mean / finetune` row. Columns: run (when `runs` has it), model, dataset, row; per variant v:
    `v` (test accuracy), `v_params` (trainable parameters) and, when finetune is among `variants`,
    `v_of_finetune` (accuracy / fine-tune accuracy).

    Summary rows: `mean` holds mean accuracy, mean parameters and the mean over datasets of the
    ratio; `mean / finetune` holds each variant's mean accuracy over fine-tuning's, and its
    parameters over fine-tuning's.

    runs: one row per model x dataset x variant (columns model, dataset, variant, test_accuracy,
    trainable_parameters), every variant of `variants` present for every model x dataset."""
    _check_complete(runs, variants)
    keys = [key for key in ("run", "model", "dataset") if key in runs.columns]
    wide = runs.pivot(on="variant", index=keys, values=["test_accuracy", "trainable_parameters"], maintain_order=True)
    accuracy = {variant: f"test_accuracy_{variant}" for variant in variants}
    params = {variant: f"trainable_parameters_{variant}" for variant in variants}
    table = wide.select(
        *keys,
        pl.lit(DATASET).alias("row"),
        *(pl.col(accuracy[variant]).alias(variant) for variant in variants),
        *(pl.col(params[variant]).cast(pl.Float64).alias(f"{variant}_params") for variant in variants),
    )
    ratios = FINETUNE in variants
    if ratios:
        table = table.with_columns(_over(pl.col(variant), pl.col(FINETUNE)).alias(f"{variant}_of_finetune") for variant in variants)
    group = [key for key in keys if key != "dataset"]
    means = table.group_by(group, maintain_order=True).agg(
        pl.lit(MEAN).alias("dataset"), pl.lit(MEAN).alias("row"), pl.exclude(*keys, "row").mean()
    )
    parts = [table, means]
    if ratios:
        parts.append(
            means.select(
                *group,
                pl.lit(RATIO).alias("dataset"),
                pl.lit(RATIO).alias("row"),
                *(_over(pl.col(variant), pl.col(FINETUNE)) for variant in variants),
                *(pl.col(f"{variant}_params").truediv(pl.col(f"{FINETUNE}_params")) for variant in variants),
                *(pl.lit(None, pl.Float64).alias(f"{variant}_of_finetune") for variant in variants),
            )
        )
    order = {DATASET: 0, MEAN: 1, RATIO: 2}
    stacked = pl.concat([part.select(table.columns) for part in parts])
    models = list(dict.fromkeys(stacked["model"].to_list()))
    return stacked.sort(
        pl.col("model").replace_strict({model: index for index, model in enumerate(models)}),
        pl.col("row").replace_strict(order),
        "dataset",
        maintain_order=True,
    )


def paper_layout(table: pl.DataFrame, labels: dict[str, str]) -> pl.DataFrame:
    """The main table as the paper prints it (strings, for Markdown and LaTeX): model, dataset, one
    column per variant headed by its label. Cells: test accuracy in % (and, when fine-tuning is in
    the table, accuracy / fine-tune accuracy in brackets); the `mean / finetune` row shows the ratios
    of the means; a last row per model gives the trainable parameters."""
    variants = list(labels)
    ratios = f"{FINETUNE}_of_finetune" in table.columns
    rows = []
    for (model,), block in table.group_by("model", maintain_order=True):
        for record in block.iter_rows(named=True):
            if record["row"] == RATIO:
                cells = [_number(record[variant], "{:.2f}") for variant in variants]
            elif ratios:
                cells = [f"{100 * record[variant]:.1f} ({_number(record[f'{variant}_of_finetune'], '{:.2f}')})" for variant in variants]
            else:
                cells = [f"{100 * record[variant]:.1f}" for variant in variants]
            rows.append([model, record["dataset"], *cells])
        means = block.filter(pl.col("row") == MEAN).row(0, named=True)
        rows.append([model, "trainable parameters", *(_count(means[f"{variant}_params"]) for variant in variants)])
    return pl.DataFrame(rows, schema=["model", "dataset", *(labels[variant] for variant in variants)], orient="row")


def caption(runs: pl.DataFrame, variants: Sequence[str], lr_range_test: bool, reference: str) -> str:
    """One line: what the cells are, and the conventions the runs used (logits, lambda init, lr)."""
    logits = ", ".join(sorted(set(runs["logits"].drop_nulls())))
    inits = ", ".join(sorted(set(runs["lambda_init"].drop_nulls()))) or "none"
    lrs = []
    for variant in variants:
        values = sorted(set(runs.filter(pl.col("variant") == variant)["lr"].drop_nulls()))
        if values:
            lrs.append(f"{variant} {'/'.join(f'{value:g}' for value in values)}")
    cells = "test accuracy (%)"
    if FINETUNE in variants:
        cells += " and, in brackets, its ratio to fine-tuning's; 'mean / finetune': ratio of the means"
    source = "Smith's range test for the unit variants" if lr_range_test else "the config"
    return (
        f"Main results: {cells}. Bases fitted on {reference}. Logits: {logits}; lambda init: {inits}; "
        f"lr ({source}): {', '.join(lrs) or 'none'}."
    )


def _over(numerator: pl.Expr, denominator: pl.Expr) -> pl.Expr:
    """numerator / denominator, null where the denominator is 0 (fine-tuning at 0 accuracy on a
    toy run): a ratio to nothing is undefined, and means over datasets skip it."""
    return pl.when(denominator > 0).then(numerator / denominator)


def _number(value: float | None, style: str) -> str:
    return "--" if value is None else style.format(value)


def _count(value: float) -> str:
    """A parameter count as the paper writes it: 0, 512, 10.2k, 87.8M."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.1f}{suffix}"
    return f"{value:.0f}"


def _check_complete(runs: pl.DataFrame, variants: Sequence[str]) -> None:
    """ValueError naming each model x dataset that lacks a configured variant or has it twice."""
    counts = runs.group_by("model", "dataset", "variant").len()
    duplicated = counts.filter(pl.col("len") > 1)
    if duplicated.height:
        raise ValueError(f"the training runs hold some variants more than once: {duplicated.rows()[:5]}")
    problems = []
    for (model, dataset), group in runs.group_by("model", "dataset", maintain_order=True):
        missing = [variant for variant in variants if variant not in set(group["variant"])]
        if missing:
            problems.append(f"{model}/{dataset} lacks {missing}")
    if problems or not runs.height:
        raise ValueError(f"the main table needs every configured variant {list(variants)} per model x dataset: {problems or 'no runs'}")
