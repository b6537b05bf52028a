# Config validation, the run's models and datasets, and path helpers shared by every rule.
from residual.config import active_models, validate_config

validate_config(config, source="config")

MODELS = active_models(config)
DATASETS = list(config["datasets"])
SPLITS = ["train", "val", "test"]
ENCODE = config["encode"]
TABLE_FORMATS = ["parquet", "csv", "md"]
TABLES = expand("results/tables/{table}.{ext}", table=["decomposition"], ext=TABLE_FORMATS)


wildcard_constraints:
    model="|".join(MODELS),
    dataset="|".join(DATASETS),
    split="|".join(SPLITS),


def model_spec(wildcards):
    return config["models"][wildcards.model]


def dataset_spec(wildcards):
    return config["datasets"][wildcards.dataset]


def unit_files(wildcards):
    return expand(
        "results/units/{model}/{dataset}/{split}.parquet",
        model=MODELS,
        dataset=DATASETS,
        split=SPLITS,
    )


def tables_message():
    listing = "\n".join(f"  {path}" for path in TABLES if path.endswith(".md"))
    note = " (demo: random weights, not the paper's numbers)" if config["demo"] else ""
    return f"Run '{config['run_name']}' is complete{note}. Tables:\n{listing}\nUnits: results/units/"
