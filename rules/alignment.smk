# ResiDual and its baselines on every task dataset (METHOD section 9): each dataset's classifier,
# then one training run per model x dataset x variant on the reference dataset's bases.


rule classifier:
    input:
        unpack(classifier_inputs),
    output:
        "results/classifiers/{model}/{dataset}.safetensors",
    params:
        spec=lambda wildcards: ClassifierSpec.from_config(config, wildcards.model, wildcards.dataset).params(),
        version=CLASSIFIER_VERSION,
    log:
        "logs/classifier/{model}/{dataset}.log",
    benchmark:
        "benchmarks/classifier/{model}/{dataset}.tsv"
    threads: ENCODE["threads"]
    resources:
        mem_mb=per_attempt(ENCODE["mem_mb"]),
        # Text classifiers run the model's text tower (ImageNet: 1000 classes x 80 templates).
        gpu=lambda wildcards: ENCODE["gpus"] if has_text_tower(config["models"][wildcards.model]) else 0,
    conda:
        "../envs/residual.yaml"
    script:
        "../workflow_scripts/classifier.py"


rule train:
    input:
        units=expand("results/units/{{model}}/{{dataset}}/{split}.parquet", split=SPLITS),
        unit_map=UNIT_MAP,
        reference=f"results/pca/{{model}}/{REFERENCE}.safetensors",
        classifier="results/classifiers/{model}/{dataset}.safetensors",
    output:
        metrics="results/train/{model}/{dataset}/{variant}.parquet",
        parameters="results/train/{model}/{dataset}/{variant}.safetensors",
    params:
        options=lambda wildcards: TrainingOptions.for_variant(config, wildcards.variant).params(),
        version=TRAIN_VERSION,
        # Progress saved after every epoch, outside the outputs (Snakemake deletes those of a
        # failed job): an interrupted run resumes from it, and it is removed once the run is done.
        checkpoint=lambda wildcards: f"results/train/{wildcards.model}/{wildcards.dataset}/.{wildcards.variant}.resume.safetensors",
    log:
        "logs/train/{model}/{dataset}/{variant}.log",
    benchmark:
        "benchmarks/train/{model}/{dataset}/{variant}.tsv"
    threads: TRAINING["threads"]
    resources:
        mem_mb=per_attempt(TRAINING["mem_mb"]),
        gpu=TRAINING["gpus"],
    conda:
        "../envs/residual.yaml"
    script:
        "../workflow_scripts/train.py"
