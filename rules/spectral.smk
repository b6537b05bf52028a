# Spectral geometry of every unit: PCA of each train split, intrinsic dimension, similarity of each
# dataset's principal subspaces to the reference dataset's (METHOD sections 4-6).


rule pca:
    input:
        units="results/units/{model}/{dataset}/train.parquet",
        unit_map=UNIT_MAP,
    output:
        "results/pca/{model}/{dataset}.safetensors",
    log:
        "logs/pca/{model}/{dataset}.log",
    benchmark:
        "benchmarks/pca/{model}/{dataset}.tsv"
    params:
        version=PCA_FORMAT,
    threads: ANALYSIS["threads"]
    resources:
        mem_mb=per_attempt(ANALYSIS["mem_mb"]),
        gpu=ANALYSIS["gpus"],
    conda:
        "../envs/residual.yaml"
    script:
        "../workflow_scripts/pca.py"


rule intrinsic_dimension:
    input:
        units="results/units/{model}/{dataset}/train.parquet",
        unit_map=UNIT_MAP,
        pca="results/pca/{model}/{dataset}.safetensors",
    output:
        "results/intrinsic_dimension/{model}/{dataset}.parquet",
    params:
        samples=ANALYSIS["id_samples"],
        fraction=ANALYSIS["twonn_fraction"],
        threshold=ANALYSIS["linear_id_threshold"],
        linear_id_on=ANALYSIS["linear_id_on"],
        seed=config["seed"],
        version=ID_VERSION,
    log:
        "logs/intrinsic_dimension/{model}/{dataset}.log",
    benchmark:
        "benchmarks/intrinsic_dimension/{model}/{dataset}.tsv"
    threads: ANALYSIS["threads"]
    resources:
        mem_mb=per_attempt(ANALYSIS["mem_mb"]),
        gpu=ANALYSIS["gpus"],
    conda:
        "../envs/residual.yaml"
    script:
        "../workflow_scripts/intrinsic_dimension.py"


rule similarity:
    input:
        reference=f"results/pca/{{model}}/{REFERENCE}.safetensors",
        other="results/pca/{model}/{dataset}.safetensors",
    output:
        "results/similarity/{model}/{dataset}.parquet",
    params:
        reference=REFERENCE,
        threshold=ANALYSIS["similarity_threshold"],
        version=SIMILARITY_VERSION,
    log:
        "logs/similarity/{model}/{dataset}.log",
    benchmark:
        "benchmarks/similarity/{model}/{dataset}.tsv"
    threads: 1
    resources:
        mem_mb=per_attempt(4000),
    conda:
        "../envs/residual.yaml"
    script:
        "../workflow_scripts/similarity.py"
