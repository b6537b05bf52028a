# Aggregated tables (Parquet, CSV, Markdown; the Markdown of per-unit tables is a per-layer summary).


rule decomposition_table:
    input:
        unit_files,
    output:
        table_files("decomposition"),
    params:
        run_name=config["run_name"],
        demo=config["demo"],
        version=TABLES_VERSION,
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


rule intrinsic_dimension_table:
    input:
        id_files,
    output:
        table_files("intrinsic_dimension"),
    params:
        run_name=config["run_name"],
        demo=config["demo"],
        version=TABLES_VERSION,
        title="Intrinsic dimension of every unit (linear k(0.99) and TwoNN)",
        summarise=["linear_id", "twonn_id", "linear_over_twonn", "first_evr"],
    log:
        "logs/tables/intrinsic_dimension.log",
    benchmark:
        "benchmarks/tables/intrinsic_dimension.tsv"
    localrule: True
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../envs/residual.yaml"
    script:
        "../workflow_scripts/spectral_table.py"


rule similarity_table:
    input:
        similarity_files,
    output:
        table_files("similarity"),
    params:
        run_name=config["run_name"],
        demo=config["demo"],
        version=TABLES_VERSION,
        title=f"Similarity of each unit's principal subspace to its subspace on {REFERENCE}",
        summarise=["similarity", "similarity_unweighted", "k_reference", "k_dataset"],
    log:
        "logs/tables/similarity.log",
    benchmark:
        "benchmarks/tables/similarity.tsv"
    localrule: True
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../envs/residual.yaml"
    script:
        "../workflow_scripts/spectral_table.py"


rule training_table:
    input:
        training_files,
    output:
        table_files("training"),
    params:
        run_name=config["run_name"],
        demo=config["demo"],
        version=TABLES_VERSION,
        title=f"Test accuracy of ResiDual and its baselines (bases fitted on {REFERENCE})",
        min_eval_samples=TRAINING["min_eval_samples"],
    log:
        "logs/tables/training.log",
    benchmark:
        "benchmarks/tables/training.tsv"
    localrule: True
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../envs/residual.yaml"
    script:
        "../workflow_scripts/training_table.py"
