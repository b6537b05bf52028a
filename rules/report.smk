# Aggregated tables (Parquet, CSV, Markdown, and their paper layout in LaTeX where they have one;
# the Markdown of per-unit tables is a per-layer summary): one rule per results table of
# residual.report.outputs, generated from what each rule file declares (`table_rule`).


table_rule("decomposition", unit_files, version=TABLES_VERSION)
table_rule(
    "intrinsic_dimension",
    id_files,
    version=TABLES_VERSION,
    title="Intrinsic dimension of every unit (linear k(0.99) and TwoNN)",
    summarise=["linear_id", "twonn_id", "linear_over_twonn", "first_evr"],
)
table_rule(
    "similarity",
    similarity_files,
    version=TABLES_VERSION,
    title=f"Similarity of each unit's principal subspace to its subspace on {REFERENCE}",
    summarise=["similarity", "similarity_unweighted", "k_reference", "k_dataset"],
)
table_rule(
    "training",
    training_files,
    version=TABLES_VERSION,
    title=f"Test accuracy of ResiDual and its baselines (bases fitted on {REFERENCE})",
    min_eval_samples=TRAINING["min_eval_samples"],
)


for kind, (inputs, named, table_params) in TABLE_RULES.items():

    rule:
        name:
            OUTPUTS.table_rule(kind)
        input:
            inputs,
            **named,
        output:
            table_files(kind),
        params:
            **table_params,
        log:
            f"logs/tables/{kind}.log",
        benchmark:
            f"benchmarks/tables/{kind}.tsv"
        localrule: True
        threads: 1
        resources:
            mem_mb=2000,
        conda:
            "../envs/residual.yaml"
        script:
            "../workflow_scripts/results_by_rule.py"
