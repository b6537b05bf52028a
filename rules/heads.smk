# Coarse unit alignment on every task dataset (METHOD section 8): zero-shot accuracy of the embedding
# and of the unit sum (val, test), head scores on val, top-k head selections on test, their tables.
from residual.heads.options import SCORES_VERSION as HEAD_SCORES_VERSION
from residual.heads.options import ScoreOptions
from residual.heads.options import SELECTION_VERSION as HEAD_SELECTION_VERSION
from residual.heads.options import SelectionOptions, fraction_label, table_fraction
from residual.heads.tables import TOP_HEADS
from residual.heads.tables import VERSION as HEAD_TABLES_VERSION
from residual.heads.options import ZEROSHOT_VERSION
from residual.heads.options import ZERO_SHOT_SPLITS

HEADS = config["heads"]
HEAD_TABLE_FORMATS = list(dict.fromkeys([*TABLE_FORMATS, "tex"]))
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


rule zeroshot_table:
    input:
        expand("results/heads/{model}/{dataset}/zeroshot_{split}.parquet", model=MODELS, dataset=TASKS, split=ZERO_SHOT_SPLITS),
    output:
        expand("results/tables/zeroshot.{ext}", ext=HEAD_TABLE_FORMATS),
    params:
        run_name=config["run_name"],
        demo=config["demo"],
        kind="zeroshot",
        title="Zero-shot accuracy of the model's embedding and of the sum of its stored units",
        fraction=None,
        version=[TABLES_VERSION, HEAD_TABLES_VERSION],
    log:
        "logs/tables/zeroshot.log",
    benchmark:
        "benchmarks/tables/zeroshot.tsv"
    localrule: True
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../envs/residual.yaml"
    script:
        "../workflow_scripts/heads_table.py"


rule head_scores_table:
    input:
        expand("results/heads/{model}/{dataset}/scores.parquet", model=MODELS, dataset=TASKS),
    output:
        expand("results/tables/head_scores.{ext}", ext=HEAD_TABLE_FORMATS),
    params:
        run_name=config["run_name"],
        demo=config["demo"],
        kind="head_scores",
        title=f"Head scores on the val split (the {TOP_HEADS} best heads of each score)",
        fraction=None,
        version=[TABLES_VERSION, HEAD_TABLES_VERSION],
    log:
        "logs/tables/head_scores.log",
    benchmark:
        "benchmarks/tables/head_scores.tsv"
    localrule: True
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../envs/residual.yaml"
    script:
        "../workflow_scripts/heads_table.py"


rule head_selection_table:
    input:
        expand("results/heads/{model}/{dataset}/selection.parquet", model=MODELS, dataset=TASKS),
    output:
        expand("results/tables/head_selection.{ext}", ext=HEAD_TABLE_FORMATS),
    params:
        run_name=config["run_name"],
        demo=config["demo"],
        kind="head_selection",
        title=f"Test accuracy keeping the top {fraction_label(TABLE_FRACTION)} of heads by each score (H: every head; B: every unit)",
        fraction=TABLE_FRACTION,
        version=[TABLES_VERSION, HEAD_TABLES_VERSION],
    log:
        "logs/tables/head_selection.log",
    benchmark:
        "benchmarks/tables/head_selection.tsv"
    localrule: True
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../envs/residual.yaml"
    script:
        "../workflow_scripts/heads_table.py"


rule head_overlap_table:
    input:
        expand("results/heads/{model}/{dataset}/selection.parquet", model=MODELS, dataset=TASKS),
    output:
        expand("results/tables/head_overlap.{ext}", ext=HEAD_TABLE_FORMATS),
    params:
        run_name=config["run_name"],
        demo=config["demo"],
        kind="head_overlap",
        title=f"Jaccard overlap of the top {fraction_label(TABLE_FRACTION)} of heads selected on each pair of datasets",
        fraction=TABLE_FRACTION,
        version=[TABLES_VERSION, HEAD_TABLES_VERSION],
    log:
        "logs/tables/head_overlap.log",
    benchmark:
        "benchmarks/tables/head_overlap.tsv"
    localrule: True
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../envs/residual.yaml"
    script:
        "../workflow_scripts/heads_table.py"
