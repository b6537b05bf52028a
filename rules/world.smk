# Ground truth on the planted-attribute world (residual.data.world): how well each unit's output
# alone reads each world task's attribute (train -> val probes of the whole unit and of each of its
# first principal components, residual.heads.probes), and their table.
from residual.heads.options import PROBES_VERSION, ProbeOptions

# Checked while the DAG is built, so that a bad key stops dry runs too.
PROBE_OPTIONS = ProbeOptions.from_config(config).params()


rule probes:
    input:
        train="results/units/{model}/{dataset}/train.parquet",
        val="results/units/{model}/{dataset}/val.parquet",
        unit_map=UNIT_MAP,
        pca="results/pca/{model}/{dataset}.safetensors",
    output:
        "results/probes/{model}/{dataset}.parquet",
    wildcard_constraints:
        dataset="|".join(WORLD_TASKS) or "(?!)",
    params:
        # The attribute that labels the task's images: a column of its probes.
        attribute=lambda wildcards: WORLD_TASKS[wildcards.dataset],
        options=PROBE_OPTIONS,
        version=PROBES_VERSION,
    log:
        "logs/probes/{model}/{dataset}.log",
    benchmark:
        "benchmarks/probes/{model}/{dataset}.tsv"
    threads: HEADS["threads"]
    resources:
        mem_mb=per_attempt(HEADS["mem_mb"]),
        gpu=HEADS["gpus"],
    conda:
        "../envs/residual.yaml"
    script:
        "../workflow_scripts/probes.py"


table_rule(
    "probes",
    expand("results/probes/{model}/{dataset}.parquet", model=MODELS, dataset=WORLD_TASKS),
    title="How well each unit alone reads each planted attribute (val balanced accuracy of a probe of its stored values; margin = (accuracy - chance) / (1 - chance))",
    version=[TABLES_VERSION, PROBES_VERSION],
)
