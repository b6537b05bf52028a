# What each unit encodes, in words (METHOD section 7): the run's text dictionary, fetched once and
# encoded once per model with a text tower; then per model x dataset TextSpan, SOMP and the texts at
# both ends of each unit's first principal components.
from residual.descriptions.options import DESCRIPTIONS_VERSION, DescriptionSettings, description_datasets, DICTIONARY_FORMAT
from residual.descriptions.sources import DictionarySource, check_source

DICTIONARY = DictionarySource.from_config(config)
DESCRIBED_MODELS = [model for model in MODELS if has_text_tower(config["models"][model])]
DESCRIPTIONS = config["descriptions"]
# A missing or empty local dictionary stops every run, dry runs included (a URL is checked when fetched).
if workflow.is_main_process:
    check_source(DICTIONARY)
DESCRIPTION_FILES = expand("results/descriptions/{model}/{dataset}.parquet", model=DESCRIBED_MODELS, dataset=description_datasets(config))


rule description_texts:
    input:
        DICTIONARY.input_files(),
    output:
        "results/descriptions/dictionary.txt",
    params:
        source=DICTIONARY.params(),
        version=DICTIONARY_FORMAT,
    log:
        "logs/descriptions/dictionary.log",
    benchmark:
        "benchmarks/descriptions/dictionary.tsv"
    # Local: a URL source is downloaded here (cluster compute nodes often have no network).
    localrule: True
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../envs/residual.yaml"
    script:
        "../workflow_scripts/description_texts.py"


rule encode_descriptions:
    input:
        texts="results/descriptions/dictionary.txt",
        weights=local_weights,
    output:
        "results/descriptions/{model}/dictionary.safetensors",
    params:
        model=model_spec,
        version=DICTIONARY_FORMAT,
    log:
        "logs/descriptions/{model}/dictionary.log",
    benchmark:
        "benchmarks/descriptions/{model}/dictionary.tsv"
    threads: ENCODE["threads"]
    resources:
        mem_mb=per_attempt(ENCODE["mem_mb"]),
        gpu=ENCODE["gpus"],
    conda:
        "../envs/residual.yaml"
    script:
        "../workflow_scripts/encode_descriptions.py"


rule describe_units:
    input:
        units=f"results/units/{{model}}/{{dataset}}/{DESCRIPTIONS['split']}.parquet",
        unit_map=UNIT_MAP,
        pca="results/pca/{model}/{dataset}.safetensors",
        dictionary="results/descriptions/{model}/dictionary.safetensors",
    output:
        "results/descriptions/{model}/{dataset}.parquet",
    params:
        settings=DescriptionSettings.from_config(config).params(),
        version=DESCRIPTIONS_VERSION,
    log:
        "logs/descriptions/{model}/{dataset}.log",
    benchmark:
        "benchmarks/descriptions/{model}/{dataset}.tsv"
    threads: ANALYSIS["threads"]
    resources:
        mem_mb=per_attempt(ANALYSIS["mem_mb"]),
        gpu=ANALYSIS["gpus"],
    conda:
        "../envs/residual.yaml"
    script:
        "../workflow_scripts/describe_units.py"


table_rule(
    "descriptions",
    DESCRIPTION_FILES,
    version=[TABLES_VERSION, DESCRIPTIONS_VERSION],
    title="What each unit encodes: TextSpan and SOMP texts, and the texts at both ends of its principal components",
    no_text_tower=[model for model in MODELS if model not in DESCRIBED_MODELS],
)
