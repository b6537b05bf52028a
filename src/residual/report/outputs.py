"""The run's outputs, declared once: every results table (the script that writes it, its formats,
what the run needs for it to have rows), every chart (the table it draws, its title, its place in
the report) and every LaTeX table. The rules are generated from it (rules/report.smk, heads.smk,
charts.smk) and the tests take their expectations from it: adding a table or a chart is one entry.

Torch- and altair-free: the Snakefile reads it at parse time (the drawing lives in
`residual.report.figures`, the paper layouts in `residual.report.paper_tables`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

TABLE_FORMATS = ("parquet", "csv", "md")
LATEX = "tex"
CHART_FORMATS = ("html", "png", "svg")
# The drawing code's version (report/charts.py, report/*_charts.py): bump it with a change that changes what a chart draws.
CHARTS_VERSION = "charts/3"

# What a run needs for a table to have rows (`RunShape.has`).
ALWAYS = "always"
OTHER_DATASET = "a dataset besides the reference"
TASK = "a task dataset"
TASK_AND_VARIANT = "a task dataset and a trained variant"
WORLD_TASK = "a task dataset of the planted-attribute world"


@dataclass(frozen=True)
class RunShape:
    """What decides which outputs a run has: its datasets, task datasets, trained variants and
    planted-attribute world's task datasets (counts)."""

    datasets: int
    tasks: int
    variants: int
    world_tasks: int

    def has(self, needs: str) -> bool:
        return {
            ALWAYS: True,
            OTHER_DATASET: self.datasets > 1,
            TASK: self.tasks > 0,
            TASK_AND_VARIANT: self.tasks > 0 and self.variants > 0,
            WORLD_TASK: self.world_tasks > 0,
        }[needs]


@dataclass(frozen=True)
class Table:
    """A results table `results/tables/{kind}.{format}`, written by `workflow_scripts/{script}.py`
    when the run has what it `needs`; `latex`: it writes its own paper-layout .tex beside them;
    `caption`: its CSV goes into `snakemake --report` with `report/captions/{caption}.rst` (None: not)."""

    needs: str
    script: str
    latex: bool = False
    caption: str | None = "table"

    @property
    def formats(self) -> tuple[str, ...]:
        return (*TABLE_FORMATS, LATEX) if self.latex else TABLE_FORMATS


@dataclass(frozen=True)
class HeadTable:
    """A table of the head stage, stacked from one per-job file `source` per model x task dataset
    (x zero-shot split where it names `{split}`); `title` may name `{top}` (heads listed per
    score) and `{fraction}` (the table's fraction of heads, which the table is `at_fraction`)."""

    source: str
    title: str
    at_fraction: bool = False


@dataclass(frozen=True)
class Chart:
    """A chart `results/charts/{name}.{format}` of one table, its title and place in the report;
    `target`: the target that makes it (`all`; `report_files` for charts of the run's cost;
    `maps` for the one picture per model x task dataset of rules/maps.smk)."""

    table: str
    title: str
    category: str
    subcategory: str
    target: str = "all"


# In the order the run lists them.
TABLES = {
    "decomposition": Table(ALWAYS, "decomposition_table"),
    "intrinsic_dimension": Table(ALWAYS, "spectral_table"),
    "descriptions": Table(ALWAYS, "descriptions_table", latex=True, caption=None),  # a model without a text tower says so
    "similarity": Table(OTHER_DATASET, "spectral_table"),
    "training": Table(TASK_AND_VARIANT, "training_table"),
    "zeroshot": Table(TASK, "heads_table", latex=True, caption=None),
    "head_scores": Table(TASK, "heads_table", latex=True, caption=None),
    "head_selection": Table(TASK, "heads_table", latex=True, caption=None),
    "head_overlap": Table(TASK, "heads_table", latex=True, caption=None),
    "main": Table(TASK_AND_VARIANT, "main_table", latex=True, caption=None),
    "probes": Table(WORLD_TASK, "probes_table"),
    "findings": Table(WORLD_TASK, "findings_table", caption="findings"),
}
# The run's cost: read from the benchmark file of every job of `all`, so made after them, for the report.
RUNTIME = "runtime"
RUNTIME_TABLE = Table(ALWAYS, "runtime_table", caption="runtime_table")

HEAD_TABLES = {
    "zeroshot": HeadTable("zeroshot_{split}", "Zero-shot accuracy of the model's embedding and of the sum of its stored units"),
    "head_scores": HeadTable("scores", "Head scores on the val split (the {top} best heads of each score)"),
    "head_selection": HeadTable(
        "selection",
        "Test accuracy keeping the top {fraction} of heads by each score (H: every head; B: every unit)",
        at_fraction=True,
    ),
    "head_overlap": HeadTable(
        "selection", "Jaccard overlap of the top {fraction} of heads selected on each pair of datasets", at_fraction=True
    ),
}

CHARTS = {
    "intrinsic_dimension_by_layer": Chart(
        "intrinsic_dimension", "Intrinsic dimension of the heads per layer: linear k(0.99) and TwoNN",
        "Intrinsic dimension", "per layer",
    ),
    "intrinsic_dimension_ratio": Chart(
        "intrinsic_dimension", "Linear over TwoNN intrinsic dimension of the heads per layer",
        "Intrinsic dimension", "per layer",
    ),
    "intrinsic_dimension_heads": Chart(
        "intrinsic_dimension", "Intrinsic dimension and first-component EVR of every head",
        "Intrinsic dimension", "per head",
    ),
    "similarity_heads": Chart(
        "similarity", "Similarity of every head's principal directions to the reference dataset's",
        "Similarity", "per head",
    ),
    "head_selection": Chart(
        "head_selection", "Zero-shot test accuracy keeping only the top-scored heads",
        "Head selection", "accuracy",
    ),
    "head_overlap": Chart(
        "head_overlap", "Overlap (Jaccard) of the heads selected for each pair of datasets, 5% of heads kept",
        "Head selection", "overlap",
    ),
    "accuracy_by_variant": Chart(
        "training", "Test accuracy of ResiDual and its baselines per dataset",
        "Main results", "accuracy",
    ),
    "accuracy_vs_parameters": Chart(
        "training", "Test accuracy against trainable parameters",
        "Main results", "parameters",
    ),
    "head_attributes": Chart(
        "probes", "The planted attribute each head reads best, shaded by its margin over chance",
        "Ground truth", "per head",
    ),
    # Its table is not a results table: the cells of one maps file (`map_cells`), one picture per
    # model x task dataset (rules/maps.smk).
    "head_maps": Chart(
        "head_maps", "Where the top heads look: each patch's part of a head's output along its map's direction",
        "Head maps", "{dataset}", target="maps",
    ),
    RUNTIME: Chart(RUNTIME, "Wall time and peak memory of every rule's jobs", "Runtime", "per rule", target="report_files"),
}  # fmt: skip

# The results tables whose paper layout (`residual.report.paper_tables`, of the same name) a
# `latex_{table}` rule writes; the tables with `latex` write their own beside their other formats.
LATEX_TABLES = ("similarity", "intrinsic_dimension")


def table_kinds(shape: RunShape) -> list[str]:
    """The results tables the run makes, in order."""
    return [kind for kind, table in TABLES.items() if shape.has(table.needs)]


def table(kind: str) -> Table:
    """The results table `kind`, the run's cost included."""
    return RUNTIME_TABLE if kind == RUNTIME else TABLES[kind]


def table_paths(kinds: Sequence[str]) -> list[str]:
    """Every file of the tables `kinds`."""
    return [f"results/tables/{kind}.{ext}" for kind in kinds for ext in table(kind).formats]


def chart_names(kinds: Sequence[str], target: str = "all") -> list[str]:
    """The charts `target` makes in a run with the tables `kinds`."""
    return [name for name, chart in CHARTS.items() if chart.target == target and (chart.table in kinds or target != "all")]


def latex_names(kinds: Sequence[str]) -> list[str]:
    return [table for table in LATEX_TABLES if table in kinds]


def table_rule(kind: str) -> str:
    return f"{kind}_table"


def table_script(rule: str) -> str:
    """The script (in workflow_scripts/) of the results table whose rule is `rule`."""
    return table(rule.removesuffix("_table")).script


def output_jobs(kinds: Sequence[str], drawn: Sequence[str] | None = None) -> Counter[str]:
    """rule -> jobs of the tables `kinds` and the charts and LaTeX tables drawn from them (`drawn`:
    the tables whose charts are redrawn, default `kinds`): what `all` runs after the per-job stages,
    besides the head maps' pictures."""
    drawn = kinds if drawn is None else drawn
    jobs = Counter(table_rule(kind) for kind in kinds)
    jobs.update(f"chart_{name}" for name in chart_names(drawn))
    jobs.update(f"latex_{name}" for name in latex_names(drawn))
    return jobs
