# Coarse unit alignment on every task dataset (METHOD section 8): zero-shot accuracy of the embedding
# and of the unit sum (val, test), head scores on val, top-k head selections on test, their tables.
from residual.heads.options import SCORES_VERSION as HEAD_SCORES_VERSION
from residual.heads.options import ScoreOptions, SelectionOptions, fraction_label, table_fraction, ZEROSHOT_VERSION, ZERO_SHOT_SPLITS
from residual.heads.options import SELECTION_VERSION as HEAD_SELECTION_VERSION
from residual.heads.tables import TOP_HEADS
from residual.heads.tables import VERSION as HEAD_TABLES_VERSION

HEADS = config["heads"]
# Checked while the DAG is built, so that a bad key stops dry runs too.
SCORE_OPTIONS = ScoreOptions.from_config(config).params()
SELECTION_OPTIONS = SelectionOptions.from_config(config).params()
TABLE_FRACTION = table_fraction(config)


rule zeroshot:
    input:
        units="results/units/{model}/{dataset}/{split}.parquet",
        unit_map=UNIT_MAP,
        classifier="results/classifiers/{model}/{dataset}.safetensors",
    output:
        "results/heads/{model}/{dataset}/zeroshot_{split}.parquet",
    wildcard_constraints:
        split="|".join(ZERO_SHOT_SPLITS),
    params:
        logits=TRAINING["logits"],
        version=ZEROSHOT_VERSION,
    log:
        "logs/heads/{model}/{dataset}/zeroshot_{split}.log",
    benchmark:
        "benchmarks/heads/{model}/{dataset}/zeroshot_{split}.tsv"
    threads: HEADS["threads"]
    resources:
        mem_mb=per_attempt(HEADS["mem_mb"]),
        gpu=HEADS["gpus"],
    conda:
        "../envs/residual.yaml"
    script:
        "../workflow_scripts/zeroshot.py"


rule head_scores:
    input:
        units="results/units/{model}/{dataset}/val.parquet",
        unit_map=UNIT_MAP,
        classifier="results/classifiers/{model}/{dataset}.safetensors",
    output:
        scores="results/heads/{model}/{dataset}/scores.parquet",
        means="results/heads/{model}/{dataset}/val_means.safetensors",
    params:
        options=SCORE_OPTIONS,
        version=HEAD_SCORES_VERSION,
    log:
        "logs/heads/{model}/{dataset}/scores.log",
    benchmark:
        "benchmarks/heads/{model}/{dataset}/scores.tsv"
    threads: HEADS["threads"]
    resources:
        mem_mb=per_attempt(HEADS["mem_mb"]),
        gpu=HEADS["gpus"],
    conda:
        "../envs/residual.yaml"
    script:
        "../workflow_scripts/head_scores.py"


rule head_selection:
    input:
        units="results/units/{model}/{dataset}/test.parquet",
        unit_map=UNIT_MAP,
        classifier="results/classifiers/{model}/{dataset}.safetensors",
        scores="results/heads/{model}/{dataset}/scores.parquet",
        means="results/heads/{model}/{dataset}/val_means.safetensors",
    output:
        "results/heads/{model}/{dataset}/selection.parquet",
    params:
        options=SELECTION_OPTIONS,
        version=HEAD_SELECTION_VERSION,
    log:
        "logs/heads/{model}/{dataset}/selection.log",
    benchmark:
        "benchmarks/heads/{model}/{dataset}/selection.tsv"
    threads: HEADS["threads"]
    resources:
        mem_mb=per_attempt(HEADS["mem_mb"]),
        gpu=HEADS["gpus"],
    conda:
        "../envs/residual.yaml"
    script:
        "../workflow_scripts/head_selection.py"


for kind, head_table in OUTPUTS.HEAD_TABLES.items():
    table_rule(
        kind,
        # A source without {split} repeats for each split: kept once, in order.
        list(
            dict.fromkeys(
                expand(
                    f"results/heads/{{model}}/{{dataset}}/{head_table.source}.parquet",
                    model=MODELS,
                    dataset=TASKS,
                    split=ZERO_SHOT_SPLITS,
                )
            )
        ),
        kind=kind,
        title=head_table.title.format(top=TOP_HEADS, fraction=fraction_label(TABLE_FRACTION)),
        fraction=TABLE_FRACTION if head_table.at_fraction else None,
        version=[TABLES_VERSION, HEAD_TABLES_VERSION],
    )
