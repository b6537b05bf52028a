# Charts of the results tables, the paper's tables in LaTeX, the runtime of every job, and what
# `snakemake --report` gathers (residual.report.outputs declares them, residual.report.figures draws
# the charts, residual.report.paper_tables lays out the LaTeX tables).
from residual.report.outputs import CHARTS_VERSION
from residual.report.paper_tables import PAPER_TABLES

# Each chart and LaTeX table is made when the run makes its table (TABLE_KINDS).
CHARTS = OUTPUTS.chart_names(TABLE_KINDS)
LATEX_TABLES = OUTPUTS.latex_names(TABLE_KINDS)
# The runtime table reads the benchmark file of every job of `all`, so it and its chart come after
# them: they are made for the report (target `report_files`), not by `all`.
RUNTIME_CHARTS = OUTPUTS.chart_names(TABLE_KINDS, target="report_files")
# One picture of the head maps per model x task dataset (rules/maps.smk), beside the others: a file
# name the report can show alone (names hold no '.', so the dots separate them).
MAP_CHART = "results/charts/head_maps.{model}.{dataset}"
CHART_FILES = expand("results/charts/{chart}.{ext}", chart=CHARTS, ext=OUTPUTS.CHART_FORMATS)
CHART_FILES += expand(f"{MAP_CHART}.{{ext}}", model=MODELS, dataset=TASKS, ext=OUTPUTS.CHART_FORMATS)
LATEX_FILES = expand("results/tables/latex/{table}.tex", table=LATEX_TABLES)
REPORT = "results/report.html"


for chart in CHARTS + RUNTIME_CHARTS:

    rule:
        name:
            f"chart_{chart}"
        input:
            f"results/tables/{OUTPUTS.CHARTS[chart].table}.parquet",
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
        table_files(OUTPUTS.RUNTIME),
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
        expand("results/charts/{chart}.{ext}", chart=RUNTIME_CHARTS, ext=OUTPUTS.CHART_FORMATS),
    localrule: True
