"""The findings table: each of the paper's claims as measured on a model of the planted-attribute
world (`residual.data.world`), next to what it is compared with and whether it holds.

One row per claim and model (and task dataset, where the claim is per task):

- zero-shot: the test accuracy of each attribute task is above chance by more than
  `CHANCE_STANDARD_ERRORS` binomial standard errors of chance accuracy on that many samples;
- head scores: the U|T scores of the heads rank them as the probes of the task's attribute do
  (Spearman rho over heads above `MIN_SPEARMAN`);
- head selection: the top fraction of heads by U|T classifies the test split better than the
  same number of random heads (mean over seeds); S (the heads' own accuracy) beside it, no claim;
- head overlap: the heads U|T picks for one attribute task agree less with those of the other
  tasks (mean Jaccard) than with the heads it picks on the other half of the same task's val split;
- descriptions: of the heads whose probes single out one attribute (`encoding_heads`), the top
  `TOP_TEXTS` TextSpan and SOMP texts name that attribute more often than texts drawn at random
  from the dictionary would;
- ResiDual: each residual variant is at least as accurate as zero-shot (mean over the world's
  tasks) and reaches `MIN_OF_FINETUNE` of fine-tuning's accuracy; the linear adapter beside it,
  with trainable parameters, no claim;
- intrinsic dimension: the median head's TwoNN and linear ID are below d_head.

The thresholds are constants fixed before any result was seen; a claim that does not hold is a
row with `holds` false, never a changed threshold. Columns: FINDINGS.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import polars as pl

from residual.alignment.names import FINETUNE
from residual.data.world import text_attribute
from residual.descriptions.table import METHODS
from residual.heads.options import HALVES_SCORE, fraction_label
from residual.heads.tables import overlap_table
from residual.report.main_table import MEAN, main_table

VERSION = "findings/1"  # bump when a change to this module (a threshold included) changes the table

# Thresholds, fixed up front.
CHANCE_STANDARD_ERRORS = 2.0  # zero-shot must beat chance by this many binomial standard errors (one-sided ~2.3%)
MIN_SPEARMAN = 0.3  # rank correlation of U|T scores with probe accuracy: a moderate positive relation
ENCODING_MARGIN = 0.5  # a head encodes an attribute: its probe gets at least halfway from chance to perfect ...
ENCODING_LEAD = 0.2  # ... and beats its next best attribute by a fifth of that range
TOP_TEXTS = 3  # the description texts read per head (the best TextSpan and SOMP picks)
MIN_OF_FINETUNE = 0.9  # ResiDual's accuracy over fine-tuning's: the paper's headline is 0.90-0.92
MAX_ID_OVER_HEAD_DIM = 1.0  # a head's intrinsic dimension is below its width d_head

BASE, ADAPTER = "base", "linear_adapter"
RESIDUAL = ("residual_fine", "residual_full", "residual_coarse")
RANDOM, SUPERVISED = "random", "supervised"

FINDINGS = {
    "section": pl.String,  # zero-shot, head scores, head selection, head overlap, descriptions, ResiDual, intrinsic dimension
    "claim": pl.String,  # the claim, in words
    "model": pl.String,
    "dataset": pl.String,  # the task (or described / ID) dataset; null for claims over all tasks
    "measure": pl.String,  # what `value` is
    "value": pl.Float64,  # measured; null when nothing could be measured (`measure` says why)
    "comparison": pl.String,  # what the value is compared with
    "comparison_value": pl.Float64,
    "comparison_std": pl.Float64,  # spread of the comparison (random heads: std over seeds)
    "threshold": pl.Float64,  # the value the claim's test compares with (null: a comparison, no claim)
    "test": pl.String,  # the claim's test, e.g. 'value > threshold'
    "holds": pl.Boolean,  # null: a comparison without a claim, or nothing measured
    "parameters": pl.Float64,  # trainable parameters of the measured variant (ResiDual rows)
    "comparison_parameters": pl.Float64,  # ... and of the variant it is compared with
}
TESTS: dict[str, Callable[[float, float], bool]] = {
    "value > threshold": lambda value, threshold: value > threshold,
    "value >= threshold": lambda value, threshold: value >= threshold,
    "value < threshold": lambda value, threshold: value < threshold,
}


def finding(section: str, claim: str, measure: str, value: float | None, comparison: str, **fields: Any) -> dict[str, Any]:
    """One row of FINDINGS; with `test` and `threshold` in `fields`, `holds` is that test of the value
    (False for a value that is not a number: NaN passes no test)."""
    row: dict[str, Any] = {"section": section, "claim": claim, "measure": measure, "value": value, "comparison": comparison, **fields}
    unknown = set(row) - set(FINDINGS)
    if unknown:
        raise KeyError(f"finding: {sorted(unknown)} are not columns of the findings table {list(FINDINGS)}")
    test, threshold = row.get("test"), row.get("threshold")
    if test is not None and threshold is not None and value is not None:
        row["holds"] = not math.isnan(value) and TESTS[test](value, threshold)
    return row


def as_table(rows: Sequence[Mapping[str, Any]]) -> pl.DataFrame:
    """Rows (dicts with some of FINDINGS) as a frame with every column of FINDINGS, in order."""
    return pl.DataFrame([{name: row.get(name) for name in FINDINGS} for row in rows], schema=FINDINGS)


def _at(fraction: float) -> pl.Expr:
    return (pl.col("fraction") - fraction).abs() < 1e-9


def _require(what: str, wanted: set[tuple[str, str]], found: set[tuple[str, str]]) -> None:
    """ValueError naming the model x dataset pairs of `wanted` that the `what` table lacks (`found`)."""
    missing = sorted(wanted - found)
    if missing:
        raise ValueError(f"the {what} table has no rows for model x dataset {missing[:5]}: rerun the rule that makes it")


def _in_task_order(table: pl.DataFrame, tasks: Mapping[str, str], *then: str) -> pl.DataFrame:
    """`table` (of task datasets only) sorted by model, then task in the config's order, then `then`."""
    position = pl.col("dataset").replace_strict({name: index for index, name in enumerate(tasks)}, return_dtype=pl.Int64)
    return table.sort(pl.col("model"), position, *then)


def _pairs(table: pl.DataFrame) -> set[tuple[str, str]]:
    return set(table.select("model", "dataset").unique().iter_rows())


def zero_shot_findings(zeroshot: pl.DataFrame, tasks: Mapping[str, str]) -> list[dict[str, Any]]:
    """Per model x attribute task: test accuracy of the model's embedding against chance (1 / classes).
    zeroshot: the zero-shot table (model, dataset, split, samples, classes, accuracy_embedding)."""
    rows = []
    test = _in_task_order(zeroshot.filter((pl.col("split") == "test") & pl.col("dataset").is_in(list(tasks))), tasks)
    for record in test.iter_rows(named=True):
        chance = 1 / record["classes"]
        error = math.sqrt(chance * (1 - chance) / record["samples"])
        rows.append(
            finding(
                "zero-shot",
                f"zero-shot classifies {tasks[record['dataset']]} above chance (by {CHANCE_STANDARD_ERRORS:g} standard errors)",
                f"test accuracy ({record['samples']} samples)",
                record["accuracy_embedding"],
                f"chance, 1/{record['classes']}",
                model=record["model"],
                dataset=record["dataset"],
                comparison_value=chance,
                threshold=chance + CHANCE_STANDARD_ERRORS * error,
                test="value > threshold",
            )
        )
    return rows


def whole_unit_probes(probes: pl.DataFrame, tasks: Mapping[str, str]) -> pl.DataFrame:
    """The probes of whole heads (no PCA component) on the attribute tasks, with the normalised
    margin (balanced_accuracy - chance) / (1 - chance): 0 at chance, 1 at perfect."""
    heads = probes.filter(pl.col("component").is_null() & pl.col("head").is_not_null() & pl.col("dataset").is_in(list(tasks)))
    return heads.with_columns(margin=(pl.col("balanced_accuracy") - pl.col("chance")) / (1 - pl.col("chance")))


def score_probe_findings(head_scores: pl.DataFrame, probes: pl.DataFrame, tasks: Mapping[str, str]) -> list[dict[str, Any]]:
    """Per model x attribute task: Spearman rho over heads between the U|T score (val) and the
    balanced accuracy of a linear probe of the task's attribute on the head.
    head_scores: the scores table (model, dataset, score, unit, value); probes: the probes table."""
    scores = head_scores.filter((pl.col("score") == HALVES_SCORE) & pl.col("dataset").is_in(list(tasks))).select(
        "model", "dataset", "unit", "value"
    )
    probed = whole_unit_probes(probes, tasks).select("model", "dataset", "unit", "balanced_accuracy")
    _require("probes", _pairs(scores), _pairs(probed))
    joined = scores.join(probed, on=["model", "dataset", "unit"], how="left")
    unprobed = joined.filter(pl.col("balanced_accuracy").is_null())
    if unprobed.height:
        raise ValueError(f"the probes table has no whole-unit probe of heads {unprobed.select('model', 'dataset', 'unit').rows()[:5]}")
    correlations = joined.group_by("model", "dataset").agg(
        pl.corr("value", "balanced_accuracy", method="spearman").alias("rho"), pl.len().alias("heads")
    )
    return [
        finding(
            "head scores",
            f"U|T ranks the heads as the probes of {tasks[record['dataset']]} do",
            f"Spearman rho of U|T (val) with probe balanced accuracy, over {record['heads']} heads",
            record["rho"],
            "no relation",
            model=record["model"],
            dataset=record["dataset"],
            comparison_value=0.0,
            threshold=MIN_SPEARMAN,
            test="value > threshold",
        )
        for record in _in_task_order(correlations, tasks).iter_rows(named=True)
    ]


def selection_findings(selection: pl.DataFrame, tasks: Mapping[str, str], fraction: float) -> list[dict[str, Any]]:
    """Per model x attribute task x ablation: test accuracy of the top `fraction` of heads by U|T
    against as many random heads (mean +- std over seeds; the claim) and against S (a comparison).
    selection: the head selection table (model, dataset, score, seed, fraction, k, ablation, accuracy)."""
    label = fraction_label(fraction)
    at = selection.filter(pl.col("dataset").is_in(list(tasks)) & _at(fraction))
    rows = []
    for (model, dataset, ablation), group in _in_task_order(at, tasks, "ablation").group_by(
        "model", "dataset", "ablation", maintain_order=True
    ):
        chosen = group.filter(pl.col("score") == HALVES_SCORE)
        if chosen.is_empty():
            continue  # `heads.scores` left U|T out: no claim to measure
        accuracy, k = chosen["accuracy"].item(), chosen["k"].item()
        keys = {"model": model, "dataset": dataset}
        claim = f"the top {label} of heads by U|T classify {tasks[dataset]} better than random heads ({ablation} ablation)"
        measure = f"test accuracy, top {label} = {k} heads by U|T"
        random = group.filter(pl.col("score") == RANDOM)["accuracy"]
        if random.len():
            rows.append(
                finding(
                    "head selection", claim, measure, accuracy, f"{k} random heads, mean over {random.len()} seeds",
                    **keys, comparison_value=random.mean(), comparison_std=random.std(), threshold=random.mean(),
                    test="value > threshold",
                )
            )  # fmt: skip
        supervised = group.filter(pl.col("score") == SUPERVISED)["accuracy"]
        if supervised.len():
            rows.append(
                finding(
                    "head selection", f"U|T against S on {tasks[dataset]} ({ablation} ablation; a comparison)", measure, accuracy,
                    f"top {k} heads by S (their own zero-shot val accuracy)", **keys, comparison_value=supervised.item(),
                )
            )  # fmt: skip
    return rows


def overlap_findings(selection: pl.DataFrame, halves: pl.DataFrame, tasks: Mapping[str, str], fraction: float) -> list[dict[str, Any]]:
    """Per model x attribute task: mean Jaccard of its top `fraction` U|T heads with those of each
    other attribute task, against the Jaccard of the top heads of two halves of its own val split.
    halves: the split-half rows (`residual.heads.halves`, with model and dataset)."""
    chosen = selection.filter(pl.col("dataset").is_in(list(tasks)) & (pl.col("score") == HALVES_SCORE))
    between = overlap_table(chosen).filter(_at(fraction) & (pl.col("dataset_a") != pl.col("dataset_b")))
    within = halves.filter(pl.col("dataset").is_in(list(tasks)) & (pl.col("score") == HALVES_SCORE) & _at(fraction))
    _require("split-half", _pairs(chosen), _pairs(within))
    rows = []
    for record in _in_task_order(within, tasks).iter_rows(named=True):
        others = between.filter((pl.col("model") == record["model"]) & (pl.col("dataset_a") == record["dataset"]))
        if others.is_empty():
            continue  # a single attribute task: nothing to compare it with
        rows.append(
            finding(
                "head overlap",
                f"the heads U|T picks for {tasks[record['dataset']]} are specific to it",
                f"mean Jaccard of its top {fraction_label(fraction)} ({record['k']} heads) with those of the {others.height} other attribute tasks",
                others["jaccard"].mean(),
                f"Jaccard of the top {record['k']} heads on two halves of its val split ({record['samples_a']} and {record['samples_b']} samples)",
                model=record["model"],
                dataset=record["dataset"],
                comparison_value=record["jaccard"],
                threshold=record["jaccard"],
                test="value < threshold",
            )
        )
    return rows


def encoding_heads(probes: pl.DataFrame, tasks: Mapping[str, str]) -> pl.DataFrame:
    """The heads whose whole-unit probes single out one attribute: per model and head, the attribute
    of the largest normalised margin, kept when that margin is at least ENCODING_MARGIN and exceeds
    the next attribute's (0 when only one is probed) by at least ENCODING_LEAD.
    Columns: model, unit, attribute, margin, runner_up."""
    ranked = whole_unit_probes(probes, tasks).sort("model", "unit", "margin", descending=[False, False, True])
    best = ranked.group_by("model", "unit", maintain_order=True).agg(
        pl.col("attribute").first(), pl.col("margin").first(), pl.col("margin").slice(1, 1).first().fill_null(0.0).alias("runner_up")
    )
    return best.filter((pl.col("margin") >= ENCODING_MARGIN) & (pl.col("margin") - pl.col("runner_up") >= ENCODING_LEAD))


def dictionary_shares(dictionary: Sequence[str]) -> dict[str, float]:
    """Attribute -> the share of the dictionary's texts that name it alone (`text_attribute`): the
    expected share of texts naming it among texts picked at random."""
    if not dictionary:
        raise ValueError("the description dictionary is empty: the descriptions baseline is undefined")
    named = [text_attribute(text) for text in dictionary]
    return {attribute: named.count(attribute) / len(named) for attribute in set(named) - {None}}


def description_findings(
    descriptions: pl.DataFrame, probes: pl.DataFrame, tasks: Mapping[str, str], dictionary: Sequence[str]
) -> list[dict[str, Any]]:
    """Per model x described dataset x method (TextSpan, SOMP): of the heads that encode one attribute
    (`encoding_heads`), the share of their top TOP_TEXTS texts that name it, against the share a
    random pick from the dictionary would give (the mean over those heads of the dictionary's share
    of texts naming each one's attribute). descriptions: the descriptions table (model, dataset,
    unit, method, rank, text); dictionary: the run's description texts."""
    encoding = encoding_heads(probes, tasks).select("model", "unit", "attribute")
    shares = dictionary_shares(dictionary)
    picks = descriptions.filter(pl.col("method").is_in(list(METHODS)) & (pl.col("rank") <= TOP_TEXTS))
    rows = []
    for (model, dataset, method), group in picks.sort("model", "dataset", "method").group_by(
        "model", "dataset", "method", maintain_order=True
    ):
        described = group.join(encoding, on=["model", "unit"], how="inner")
        claim = f"{METHODS[method]} names the attribute a head encodes"
        comparison = f"texts drawn at random from the dictionary ({len(dictionary)} texts)"
        if described.is_empty():
            measure = f"no head meets the encoding criterion (margin >= {ENCODING_MARGIN:g}, lead >= {ENCODING_LEAD:g})"
            rows.append(finding("descriptions", claim, measure, None, comparison, model=model, dataset=dataset))
            continue
        named = [text_attribute(text) == attribute for text, attribute in described.select("text", "attribute").iter_rows()]
        expected = [shares.get(attribute, 0.0) for attribute in described["attribute"]]
        counts = described.unique(["unit"]).group_by("attribute").len().sort("attribute")
        heads = ", ".join(f"{attribute} {count}" for attribute, count in counts.iter_rows())
        rows.append(
            finding(
                "descriptions",
                claim,
                f"share of the top {TOP_TEXTS} texts naming it, over {described['unit'].n_unique()} encoding heads ({heads})",
                sum(named) / len(named),
                comparison,
                model=model,
                dataset=dataset,
                comparison_value=sum(expected) / len(expected),
                threshold=sum(expected) / len(expected),
                test="value > threshold",
            )
        )
    return rows


def variant_findings(training: pl.DataFrame, tasks: Mapping[str, str]) -> list[dict[str, Any]]:
    """Per model x residual variant, over the attribute tasks (means over them, as the main table's
    `mean` row): test accuracy against zero-shot (claim: at least as good), against the linear adapter
    (a comparison), and as a ratio to fine-tuning's (claim: at least MIN_OF_FINETUNE); with
    trainable parameters. training: the training table (model, dataset, variant, label,
    test_accuracy, trainable_parameters)."""
    runs = training.filter(pl.col("dataset").is_in(list(tasks)))
    if not runs.height:
        return []
    variants = list(dict.fromkeys(runs["variant"]))
    labels = dict(runs.select("variant", "label").unique().iter_rows())
    means = main_table(runs.select("model", "dataset", "variant", "test_accuracy", "trainable_parameters"), variants)
    scope = f"mean test accuracy over {len(set(runs['dataset']))} attribute tasks"
    rows = []
    for record in means.filter(pl.col("row") == MEAN).iter_rows(named=True):
        for variant in (name for name in RESIDUAL if name in variants):
            common = {"model": record["model"], "parameters": record[f"{variant}_params"]}
            label = labels[variant]
            if BASE in variants:
                rows.append(
                    finding(
                        "ResiDual", f"{label} is at least as accurate as zero-shot", f"{label} ({variant}): {scope}", record[variant],
                        "zero-shot (base)", **common, comparison_value=record[BASE], comparison_parameters=record[f"{BASE}_params"],
                        threshold=record[BASE], test="value >= threshold",
                    )
                )  # fmt: skip
            if ADAPTER in variants:
                rows.append(
                    finding(
                        "ResiDual", f"{label} against the linear adapter (a comparison)", f"{label} ({variant}): {scope}", record[variant],
                        labels[ADAPTER], **common, comparison_value=record[ADAPTER], comparison_parameters=record[f"{ADAPTER}_params"],
                    )
                )  # fmt: skip
            if FINETUNE in variants:
                rows.append(
                    finding(
                        "ResiDual", f"{label} comes close to fine-tuning", f"{label} ({variant}): mean over the attribute tasks of its test accuracy / fine-tuning's",
                        record[f"{variant}_of_finetune"], "fine-tuning (ratio 1)", **common, comparison_value=1.0,
                        comparison_parameters=record[f"{FINETUNE}_params"], threshold=MIN_OF_FINETUNE, test="value >= threshold",
                    )
                )  # fmt: skip
    return rows


def dimension_findings(intrinsic_dimension: pl.DataFrame, head_dims: Mapping[str, int]) -> list[dict[str, Any]]:
    """Per model x dataset of the intrinsic-dimension table: the median over heads of the TwoNN ID and
    of the linear ID k(0.99), against d_head. intrinsic_dimension: the ID table (model, dataset, kind,
    twonn_id, linear_id); head_dims: model -> d_head."""
    heads = intrinsic_dimension.filter(pl.col("kind") == "head")
    rows = []
    for (model, dataset), group in heads.sort("model", "dataset").group_by("model", "dataset", maintain_order=True):
        if model not in head_dims:
            raise ValueError(f"no d_head given for model {model!r} of the intrinsic-dimension table; models given: {sorted(head_dims)}")
        width = head_dims[model]
        for column, name in (("twonn_id", "TwoNN ID"), ("linear_id", "linear ID k(0.99)")):
            values = group[column].drop_nulls()
            rows.append(
                finding(
                    "intrinsic dimension",
                    f"a head's {name} is below its width d_head",
                    f"median {name} over {values.len()} heads (output space)",
                    float(values.median()) if values.len() else None,
                    "d_head",
                    model=model,
                    dataset=dataset,
                    comparison_value=float(width),
                    threshold=MAX_ID_OVER_HEAD_DIM * width,
                    test="value < threshold",
                )
            )
    return rows


def findings_table(
    *,
    zeroshot: pl.DataFrame,
    head_scores: pl.DataFrame,
    head_selection: pl.DataFrame,
    halves: pl.DataFrame,
    probes: pl.DataFrame,
    descriptions: pl.DataFrame,
    dictionary: Sequence[str],
    training: pl.DataFrame | None,
    intrinsic_dimension: pl.DataFrame,
    head_dims: Mapping[str, int],
    tasks: Mapping[str, str],
    fraction: float,
) -> pl.DataFrame:
    """Every finding, section by section (as listed in the module's docstring). tasks: the attribute task datasets -> their attribute;
    fraction: the share of heads the selection and overlap claims keep; training: None when the run
    trains no variant."""
    if not tasks:
        raise ValueError("the findings table needs the world's attribute tasks (a `loader: world` dataset with `attributes`)")
    rows = [
        *zero_shot_findings(zeroshot, tasks),
        *score_probe_findings(head_scores, probes, tasks),
        *selection_findings(head_selection, tasks, fraction),
        *overlap_findings(head_selection, halves, tasks, fraction),
        *description_findings(descriptions, probes, tasks, dictionary),
        *(variant_findings(training, tasks) if training is not None else []),
        *dimension_findings(intrinsic_dimension, head_dims),
    ]
    return as_table(rows)


def _number(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3g}"


def findings_summary(table: pl.DataFrame) -> pl.DataFrame:
    """The findings for reading: section, model, dataset, claim, measured (what and value),
    compared with (what, value, spread, threshold when it differs, parameters) and holds
    (✔, ✘, or – for a comparison without a claim or nothing measured)."""
    measured, compared, verdicts = [], [], []
    for row in table.iter_rows(named=True):
        parameters = f" ({row['parameters']:,.0f} parameters)" if row["parameters"] is not None else ""
        measured.append(f"{row['measure']}: {_number(row['value'])}{parameters}")
        other = row["comparison"]
        if row["comparison_value"] is not None:
            other += f": {_number(row['comparison_value'])}"
        if row["comparison_std"] is not None:
            other += f" ± {_number(row['comparison_std'])}"
        if row["comparison_parameters"] is not None:
            other += f" ({row['comparison_parameters']:,.0f} parameters)"
        if row["threshold"] is not None and row["threshold"] != row["comparison_value"]:
            other += f"; threshold {_number(row['threshold'])}"
        compared.append(other)
        verdicts.append({True: "✔", False: "✘", None: "–"}[row["holds"]])
    return table.select("section", "model", "dataset", "claim").with_columns(
        pl.Series("measured", measured, pl.String), pl.Series("compared with", compared, pl.String), pl.Series("holds", verdicts, pl.String)
    )
