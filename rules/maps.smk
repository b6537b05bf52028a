# Where the top heads look (residual.heads.maps): on every task dataset, each patch's part of the top
# heads' outputs (a selection's first heads) along the image's class direction and along each head's
# first principal components, on a few seeded test images; then their pictures (residual.report.map_charts),
# which `all` and the report include (MAP_CHART, rules/charts.smk).
from residual.heads.options import MAPS_VERSION, MapOptions

# Checked while the DAG is built, so that a bad key stops dry runs too.
MAP_OPTIONS = MapOptions.from_config(config).params()
MAP_TITLE = OUTPUTS.CHARTS["head_maps"].title


rule head_maps:
    input:
        split="results/splits/{dataset}.parquet",
        scores="results/heads/{model}/{dataset}/scores.parquet",
        classifier="results/classifiers/{model}/{dataset}.safetensors",
        pca="results/pca/{model}/{dataset}.safetensors",
        unit_map=UNIT_MAP,
        weights=local_weights,
    output:
        "results/maps/{model}/{dataset}.safetensors",
    wildcard_constraints:
        dataset="|".join(TASKS) or "(?!)",
    params:
        model=model_spec,
        # The split table (an input) decides which samples; the source what they are.
        source=dataset_source,
        options=MAP_OPTIONS,
        version=MAPS_VERSION,
    log:
        "logs/maps/{model}/{dataset}.log",
    benchmark:
        "benchmarks/maps/{model}/{dataset}.tsv"
    threads: ENCODE["threads"]
    resources:
        mem_mb=per_attempt(ENCODE["mem_mb"]),
        gpu=ENCODE["gpus"],
    conda:
        "../envs/residual.yaml"
    script:
        "../workflow_scripts/head_maps.py"


rule chart_head_maps:
    input:
        maps="results/maps/{model}/{dataset}.safetensors",
        # The heads' TextSpan texts, where the model has a text tower.
        descriptions="results/tables/descriptions.parquet",
    output:
        **chart_outputs("head_maps", MAP_CHART, {"chart": MAP_TITLE, "model": "{model}", "dataset": "{dataset}"}),
    wildcard_constraints:
        dataset="|".join(TASKS) or "(?!)",
    params:
        chart="head_maps",
        demo=config["demo"],
        version=CHARTS_VERSION,
    log:
        "logs/charts/head_maps/{model}/{dataset}.log",
    benchmark:
        "benchmarks/charts/head_maps/{model}/{dataset}.tsv"
    localrule: True
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../envs/residual.yaml"
    script:
        "../workflow_scripts/map_chart.py"
