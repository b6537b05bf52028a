# Charts of the results tables, the paper's tables in LaTeX, the runtime of every job, and what
# `snakemake --report` gathers (residual.report.figures, residual.report.paper_tables).
from residual.report.charts import VERSION as CHARTS_VERSION
from residual.report.figures import FIGURES
from residual.report.paper_tables import PAPER_TABLES

# The charts and LaTeX tables of the run, by name (FIGURES, PAPER_TABLES): adding one for a new
# results table is one name here. Each is made when the run makes its table (TABLE_KINDS).
CHART_NAMES = [
    "intrinsic_dimension_by_layer",
    "intrinsic_dimension_ratio",
    "intrinsic_dimension_heads",
    "similarity_heads",
    "head_selection",
    "head_overlap",
    "accuracy_by_variant",
    "accuracy_vs_parameters",
    "head_attributes",
]
# The main and head-selection tables write their own paper-layout .tex beside their other formats.
LATEX_NAMES = ["similarity", "intrinsic_dimension"]
CHART_FORMATS = ["html", "png", "svg"]
CHARTS = [name for name in CHART_NAMES if FIGURES[name].table in TABLE_KINDS]
LATEX_TABLES = [name for name in LATEX_NAMES if PAPER_TABLES[name].table in TABLE_KINDS]
# The runtime table reads the benchmark file of every job of `all`, so it and its chart come after
# them: they are made for the report (target `report_files`), not by `all`.
RUNTIME_CHARTS = ["runtime"]
# One picture of the head maps per model x task dataset (rules/maps.smk), beside the others: a file
# name the report can show alone (names hold no '.', so the dots separate them).
MAP_CHART = "results/charts/head_maps.{model}.{dataset}"
CHART_FILES = expand("results/charts/{chart}.{ext}", chart=CHARTS, ext=CHART_FORMATS)
CHART_FILES += expand(f"{MAP_CHART}.{{ext}}", model=MODELS, dataset=TASKS, ext=CHART_FORMATS)
LATEX_FILES = expand("results/tables/latex/{table}.tex", table=LATEX_TABLES)
REPORT = "results/report.html"


for chart in CHARTS + RUNTIME_CHARTS:

    rule:
        name:
            f"chart_{chart}"
        input:
            f"results/tables/{FIGURES[chart].table}.parquet",
        output:
            **chart_outputs(chart),
        params:
            chart=chart,
            demo=config["demo"],
            version=CHARTS_VERSION,
        log:
            f"logs/charts/{chart}.log",
        benchmark:
            f"benchmarks/charts/{chart}.tsv"
        localrule: True
        threads: 1
        resources:
            mem_mb=2000,
        conda:
            "../envs/residual.yaml"
        script:
            "../workflow_scripts/chart.py"


for name in LATEX_TABLES:

    rule:
        name:
            f"latex_{name}"
        input:
            f"results/tables/{PAPER_TABLES[name].table}.parquet",
        output:
            report(
                f"results/tables/latex/{name}.tex",
                caption="../report/captions/latex.rst",
                category="Tables",
                subcategory="LaTeX",
                labels={"table": name, "format": "LaTeX (booktabs, standalone)"},
            ),
        params:
            table=name,
            demo=config["demo"],
            version=TABLES_VERSION,
        log:
            f"logs/tables/latex_{name}.log",
        benchmark:
            f"benchmarks/tables/latex_{name}.tsv"
        localrule: True
        threads: 1
        resources:
            mem_mb=2000,
        conda:
            "../envs/residual.yaml"
        script:
            "../workflow_scripts/paper_table.py"


rule runtime_table:
    input:
        TABLES,
        CHART_FILES,
        LATEX_FILES,
    output:
        table_files("runtime", caption="runtime_table"),
    params:
        patterns=benchmark_patterns,
        run={"model": MODELS, "dataset": DATASETS, "variant": VARIANTS},
        run_name=config["run_name"],
        demo=config["demo"],
        version=TABLES_VERSION,
    log:
        "logs/tables/runtime.log",
    benchmark:
        "benchmarks/tables/runtime.tsv"
    localrule: True
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../envs/residual.yaml"
    script:
        "../workflow_scripts/runtime_table.py"


rule report_files:
    """Everything `snakemake --report` shows: the run's results, charts and runtime. Build them
    with `snakemake report_files`, then `snakemake --report results/report.html report_files`."""
    input:
        TABLES,
        CHART_FILES,
        LATEX_FILES,
        expand("results/charts/{chart}.{ext}", chart=RUNTIME_CHARTS, ext=CHART_FORMATS),
    localrule: True
