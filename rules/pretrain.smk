# Models the pipeline trains itself: a small open_clip CLIP trained from scratch on the image-caption
# pairs of the planted-attribute world (residual.models.pretrain). Its checkpoint is the model's
# `pretrained`, so every job that loads the model depends on it.


rule pretrain:
    output:
        "results/pretrain/{model}.safetensors",
    wildcard_constraints:
        model="|".join(PRETRAINED) or "(?!)",
    params:
        # The model entry: architecture, kwargs, seed and its `pretrain` settings.
        model=model_spec,
        version=PRETRAIN_VERSION,
    log:
        "logs/pretrain/{model}.log",
    benchmark:
        "benchmarks/pretrain/{model}.tsv"
    threads: PRETRAINING["threads"]
    resources:
        mem_mb=per_attempt(PRETRAINING["mem_mb"]),
        gpu=PRETRAINING["gpus"],
    conda:
        "../envs/residual.yaml"
    script:
        "../workflow_scripts/pretrain.py"
