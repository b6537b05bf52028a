# Residual units: each model's unit map, then every split of every dataset encoded into Parquet.


rule unit_map:
    input:
        local_weights,
    output:
        UNIT_MAP,
    params:
        model=model_spec,
        ln_constants=ENCODE["ln_constants"],
        version=UNIT_MAP_VERSION,
    log:
        "logs/unit_map/{model}.log",
    benchmark:
        "benchmarks/unit_map/{model}.tsv"
    # Local: it is the first job to load each model, so tagged weights are fetched into the shared
    # cache where there is network (cluster compute nodes often have none).
    localrule: True
    threads: 2
    resources:
        mem_mb=ENCODE["mem_mb"],
    conda:
        "../envs/residual.yaml"
    script:
        "../workflow_scripts/unit_map.py"


rule encode:
    input:
        split="results/splits/{dataset}.parquet",
        unit_map=UNIT_MAP,
        weights=local_weights,
    output:
        "results/units/{model}/{dataset}/{split}.parquet",
    params:
        model=model_spec,
        # The split table (an input) decides which samples; the source what they are.
        source=dataset_source,
        seed=config["seed"],
        dtype=ENCODE["dtype"],
        version=UNITS_FORMAT,
    log:
        "logs/encode/{model}/{dataset}/{split}.log",
    benchmark:
        "benchmarks/encode/{model}/{dataset}/{split}.tsv"
    threads: ENCODE["threads"]
    resources:
        mem_mb=per_attempt(ENCODE["mem_mb"]),
        gpu=ENCODE["gpus"],
    conda:
        "../envs/residual.yaml"
    script:
        "../workflow_scripts/encode.py"
