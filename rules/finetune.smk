# The fine-tuning baseline (METHOD section 9): the whole vision tower trained on the images of each
# task dataset, through the same classifier as the other variants; then the paper's main table,
# which compares every variant with it.


rule finetune:
    input:
        ready=dataset_ready,
        weights=local_weights,
        split="results/splits/{dataset}.parquet",
        classifier="results/classifiers/{model}/{dataset}.safetensors",
    output:
        metrics="results/train/{model}/{dataset}/finetune.parquet",
        parameters="results/train/{model}/{dataset}/finetune.safetensors",
    params:
        model=model_spec,
        source=dataset_source,
        seed=config["seed"],
        options=FinetuneOptions.from_config(config).params(),
        version=FINETUNE_VERSION,
        # Progress saved after every epoch, outside the outputs (Snakemake deletes those of a
        # failed job): an interrupted run resumes from it, and it is removed once the run is done.
        checkpoint=lambda wildcards: f"results/train/{wildcards.model}/{wildcards.dataset}/.finetune.resume.safetensors",
    log:
        "logs/finetune/{model}/{dataset}.log",
    benchmark:
        "benchmarks/finetune/{model}/{dataset}.tsv"
    threads: FINETUNING["threads"]
    resources:
        mem_mb=per_attempt(FINETUNING["mem_mb"]),
        gpu=FINETUNING["gpus"],
    conda:
        "../envs/residual.yaml"
    script:
        "../workflow_scripts/finetune.py"


table_rule(
    "main",
    training_files,
    variants=VARIANTS,
    reference=REFERENCE,
    lr_range_test=TRAINING["lr_range_test"],
    version=MAIN_TABLE_VERSION,
)
