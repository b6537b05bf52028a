# Datasets: files under each dataset's root (fetched or checked), then stratified, seeded splits.


rule download:
    output:
        touch("results/downloads/{dataset}.done"),
    params:
        name=lambda wildcards: wildcards.dataset,
        spec=dataset_spec,
    log:
        "logs/download/{dataset}.log",
    benchmark:
        "benchmarks/download/{dataset}.tsv"
    localrule: True
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../envs/residual.yaml"
    script:
        "../workflow_scripts/download.py"


rule split:
    input:
        dataset_ready,
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
