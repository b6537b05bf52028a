# The paper's claims measured on the planted-attribute world (residual.report.findings): the
# split-half head selections of each world task (the within-task reference of the overlap claim),
# then the findings table, which sets every claim beside the planted truth (the probes table).
from residual.config.params import canonical
from residual.heads.options import HALVES_VERSION as HEAD_HALVES_VERSION
from residual.report.findings import VERSION as FINDINGS_VERSION


rule head_halves:
    input:
        units="results/units/{model}/{dataset}/val.parquet",
        unit_map=UNIT_MAP,
        classifier="results/classifiers/{model}/{dataset}.safetensors",
    output:
        "results/heads/{model}/{dataset}/halves.parquet",
    params:
        logits=TRAINING["logits"],
        fraction=TABLE_FRACTION,
        seed=config["seed"],
        version=[HEAD_SCORES_VERSION, HEAD_HALVES_VERSION],
    log:
        "logs/heads/{model}/{dataset}/halves.log",
    benchmark:
        "benchmarks/heads/{model}/{dataset}/halves.tsv"
    threads: HEADS["threads"]
    resources:
        mem_mb=per_attempt(HEADS["mem_mb"]),
        gpu=HEADS["gpus"],
    conda:
        "../envs/residual.yaml"
    script:
        "../workflow_scripts/head_halves.py"


table_rule(
    "findings",
    named={
        "zeroshot": "results/tables/zeroshot.parquet",
        "head_scores": "results/tables/head_scores.parquet",
        "head_selection": "results/tables/head_selection.parquet",
        "halves": expand("results/heads/{model}/{dataset}/halves.parquet", model=MODELS, dataset=WORLD_TASKS),
        "probes": "results/tables/probes.parquet",
        "descriptions": "results/tables/descriptions.parquet",
        "dictionary": "results/descriptions/dictionary.txt",
        # A run that trains no variant has no training table: its ResiDual claims are left out.
        "training": ["results/tables/training.parquet"] if "training" in TABLE_KINDS else [],
        "intrinsic_dimension": "results/tables/intrinsic_dimension.parquet",
        "unit_maps": expand(UNIT_MAP, model=MODELS),
    },
    tasks=canonical(WORLD_TASKS),
    models=MODELS,
    fraction=TABLE_FRACTION,
    title="Findings: the paper's claims measured on the world model, against the planted truth",
    version=[TABLES_VERSION, FINDINGS_VERSION],
)
