# Datasets: stratified, seeded train/val/test split tables.


rule split:
    output:
        "results/splits/{dataset}.parquet",
    params:
        name=lambda wildcards: wildcards.dataset,
        spec=dataset_spec,
        seed=config["seed"],
    log:
        "logs/split/{dataset}.log",
    benchmark:
        "benchmarks/split/{dataset}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        "../envs/residual.yaml"
    script:
        "../workflow_scripts/split.py"
