# Aggregated tables (Parquet, CSV, Markdown).


rule decomposition_table:
    input:
        unit_files,
    output:
        expand("results/tables/decomposition.{ext}", ext=TABLE_FORMATS),
    params:
        run_name=config["run_name"],
        demo=config["demo"],
    log:
        "logs/tables/decomposition.log",
    benchmark:
        "benchmarks/tables/decomposition.tsv"
    localrule: True
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../envs/residual.yaml"
    script:
        "../workflow_scripts/decomposition_table.py"
