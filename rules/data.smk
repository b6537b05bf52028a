# Datasets: files under each dataset's root (fetched or checked), then stratified, seeded splits.


rule download:
    output:
        touch("results/downloads/{dataset}.done"),
    params:
        # Not `download`: whether files may be fetched changes no file that is already there.
        source=dataset_source,
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
        dataset=dataset_split,
        seed=config["seed"],
        version=SPLIT_VERSION,
    log:
        "logs/split/{dataset}.log",
    benchmark:
        "benchmarks/split/{dataset}.tsv"
    threads: 1
    resources:
        mem_mb=per_attempt(4000),
    conda:
        "../envs/residual.yaml"
    script:
        "../workflow_scripts/split.py"
