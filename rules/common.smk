# Config validation, the run's models and datasets, and path helpers shared by every rule.
# Every rule's params are plain values in canonical form (residual.config.params), holding exactly
# the settings its output depends on, plus its stage's VERSION: Snakemake reruns a job when one of
# them changes. Device, threads, workers and batch sizes are read by the scripts from the config.
from residual.alignment.options import CLASSIFIER_VERSION, ClassifierSpec, FinetuneOptions, FINETUNE_VERSION, TrainingOptions
from residual.alignment.names import FINETUNE
from residual.alignment.options import TRAINING_VERSION as TRAIN_VERSION
from residual.config.params import model_params, source_params, split_params
from residual.config.preflight import check_config, missing_inputs, require_inputs
from residual.config.validate import active_models, id_datasets, read_yaml, validate_config
from residual.data.catalog import DATASETS as DATASETS_WITH_FILES
from residual.data.sequences import SPLITS
from residual.data.splits import VERSION as SPLIT_VERSION
from residual.data.world import world_task_names
from residual.models.versions import PRETRAIN_VERSION
from residual.libraries import LIBRARIES, has_text_tower
from residual.report import outputs as OUTPUTS
from residual.report.main_table import VERSION as MAIN_TABLE_VERSION
from residual.report.tables import VERSION as TABLES_VERSION
from residual.spectral.versions import ID_VERSION, PCA_FORMAT, SIMILARITY_VERSION
from residual.units.versions import UNITS_FORMAT, UNIT_MAP_VERSION
from snakemake.logging import logger

# Snakemake's YAML reader keeps the last of two equal keys: read every config file again with one
# that refuses them, naming the key and its lines.
for configfile_path in workflow.configfiles:
    read_yaml(configfile_path)
validate_config(config, source="config")
# Preflight (residual.config.preflight), in the main process only (cluster jobs read this file again).
# Config mistakes (unknown architecture, tag, checkpoint file, loader, root) stop every run, dry runs
# included. Inputs absent from this machine that no rule can fetch (user-supplied datasets, uncached
# Hugging Face checkpoints) are only warned about here, so `snakemake -n` plans without the data;
# a real run stops on them in `onstart`, before its first job, if a pending job needs them.
if workflow.is_main_process:
    check_config(config)
    for problem in missing_inputs(config):
        logger.warning(f"Preflight: a real run that needs this stops before its first job: {problem}")


onstart:
    pending = [job.wildcards_dict for job in workflow.dag.needrun_jobs()]
    require_inputs(
        config,
        datasets={wildcards["dataset"] for wildcards in pending if "dataset" in wildcards},
        models={wildcards["model"] for wildcards in pending if "model" in wildcards},
    )


MODELS = active_models(config)
DATASETS = list(config["datasets"])
ENCODE = config["encode"]
ANALYSIS = config["analysis"]
TRAINING = config["training"]
FINETUNING = config["finetune"]
PRETRAINING = config["pretraining"]
# Models the pipeline trains itself (`pretrain`): their weights are the pretrain rule's output.
PRETRAINED = [name for name in MODELS if "pretrain" in config["models"][name]]
REFERENCE = config["reference_dataset"]
TASKS = [name for name, spec in config["datasets"].items() if spec["role"] == "task"]
# The planted-attribute world's task datasets -> the attribute each classifies (residual.data.world):
# their findings are measured against the truth (rules/world.smk, rules/findings.smk).
WORLD_TASKS = {name: attribute for name, attribute in world_task_names(config["datasets"]).items() if name in TASKS}
VARIANTS = TRAINING["variants"]
# Every job that reads a unit file also reads its model's unit map (to return output space).
UNIT_MAP = "results/units/{model}/unit_map.safetensors"
# The results tables the run makes: those it has rows for (residual.report.outputs), every format.
RUN_SHAPE = OUTPUTS.RunShape(datasets=len(DATASETS), tasks=len(TASKS), variants=len(VARIANTS), world_tasks=len(WORLD_TASKS))
TABLE_KINDS = OUTPUTS.table_kinds(RUN_SHAPE)
TABLES = OUTPUTS.table_paths(TABLE_KINDS)
# kind -> the inputs and params of its table's rule, one rule generated for all (rules/report.smk).
TABLE_RULES = {}


wildcard_constraints:
    model="|".join(MODELS),
    dataset="|".join(DATASETS),
    split="|".join(SPLITS),
    # The `train` rule's variants, on stored units; `finetune` has its own rule (it needs the images).
    variant="|".join(variant for variant in VARIANTS if variant != FINETUNE) or "(?!)",


def per_attempt(mem_mb):
    """A job's memory (MB) times its attempt: a job killed for memory retries with more (`retries`
    in profiles/slurm). Local rules (run by the login node itself) keep a fixed figure."""
    return lambda wildcards, attempt: mem_mb * attempt


def model_spec(wildcards):
    """What decides the model's weights (`residual.config.params.model_params`)."""
    return model_params(config["models"][wildcards.model])


def local_weights(wildcards):
    """A model's local checkpoint files or folders (its library's `checkpoint_fields`), so that
    replacing them reruns what depends on them."""
    spec = config["models"][wildcards.model]
    if "pretrain" in spec:  # trained by the pipeline: the pretrain rule's output
        return [spec["pretrained"]]
    return LIBRARIES[spec["library"]].local_checkpoints(spec)


def dataset_source(wildcards):
    """What decides the dataset's images and labels (`source_params`)."""
    return source_params(config["datasets"][wildcards.dataset])


def dataset_split(wildcards):
    """What decides the dataset's split table (`split_params`)."""
    return split_params(config["datasets"][wildcards.dataset])


def has_files(spec):
    return spec["loader"] in DATASETS_WITH_FILES


def dataset_ready(wildcards):
    """The download marker for the catalog's datasets; nothing for generated ones (digits, random) or
    your own images (nothing to fetch: preflight looks for their folder)."""
    return [f"results/downloads/{wildcards.dataset}.done"] if has_files(config["datasets"][wildcards.dataset]) else []


def unit_files(wildcards):
    return expand(
        "results/units/{model}/{dataset}/{split}.parquet",
        model=MODELS,
        dataset=DATASETS,
        split=SPLITS,
    )


def id_files(wildcards):
    return expand("results/intrinsic_dimension/{model}/{dataset}.parquet", model=MODELS, dataset=id_datasets(config))


def similarity_files(wildcards):
    """Every dataset's units against the reference dataset's (the reference with itself is 1 by construction)."""
    others = [dataset for dataset in DATASETS if dataset != REFERENCE]
    return expand("results/similarity/{model}/{dataset}.parquet", model=MODELS, dataset=others)


def classifier_inputs(wildcards):
    """Models without a text tower classify by the class means of their train embeddings; the
    others encode OpenAI's class names with their own weights (the class names are read from the
    dataset's files, hence its download marker, not its split)."""
    if has_text_tower(config["models"][wildcards.model]):
        return {"dataset": dataset_ready(wildcards), "weights": local_weights(wildcards)}
    return {
        "units": f"results/units/{wildcards.model}/{wildcards.dataset}/train.parquet",
        "unit_map": UNIT_MAP.format(model=wildcards.model),
    }


def training_files(wildcards):
    return expand("results/train/{model}/{dataset}/{variant}.parquet", model=MODELS, dataset=TASKS, variant=VARIANTS)


def tables_message():
    listing = "\n".join(f"  {path}" for path in TABLES if path.endswith(".md"))
    note = " (demo: random weights, not the paper's numbers)" if config["demo"] else ""
    return f"Run '{config['run_name']}' is complete{note}. Tables:\n{listing}\nUnits: results/units/"


def table_rule(table_kind, inputs=None, named=None, **params):
    """Declares how the results table `table_kind` is made, its inputs (a list or an input function;
    `named`: named inputs) and its params after run_name and demo, in order. Each rule file
    declares its tables; rules/report.smk, read last, generates their rules."""
    TABLE_RULES[table_kind] = (inputs or [], named or {}, {"run_name": config["run_name"], "demo": config["demo"], **params})


def table_files(kind):
    """A results table's files, every format it has (residual.report.outputs); its CSV (every row)
    goes into `snakemake --report` where it has a caption."""
    paths = OUTPUTS.table_paths([kind])
    caption = OUTPUTS.table(kind).caption
    if caption is None:
        return paths
    labels = {"table": kind, "format": "CSV"}
    flagged = report(
        f"results/tables/{kind}.csv", caption=f"../report/captions/{caption}.rst", category="Tables", subcategory="results", labels=labels
    )
    return [flagged if path.endswith(".csv") else path for path in paths]


# Charts, LaTeX tables and runtime (rules/charts.smk).
def chart_outputs(chart, stem=None, labels=None):
    """The output files of one chart, `stem` plus each format's suffix (default results/charts/{chart});
    the HTML (interactive, offline) goes into the report, with `labels` (default its title and table)."""
    figure = OUTPUTS.CHARTS[chart]
    stem = stem or f"results/charts/{chart}"
    return {
        "html": report(
            f"{stem}.html",
            caption=f"../report/captions/{chart}.rst",
            category=figure.category,
            subcategory=figure.subcategory,
            labels=labels or {"chart": figure.title, "table": figure.table},
        ),
        **{ext: f"{stem}.{ext}" for ext in OUTPUTS.CHART_FORMATS if ext != "html"},
    }


def benchmark_patterns(wildcards):
    """Every rule's benchmark path pattern, but this rule's own and those of the charts drawn from
    its table (evaluated when the DAG is built, when every rule file is loaded)."""
    after = {OUTPUTS.table_rule(OUTPUTS.RUNTIME), *(f"chart_{chart}" for chart in RUNTIME_CHARTS)}
    return {rule.name: str(rule.benchmark) for rule in workflow.rules if rule.benchmark and rule.name not in after}


def charts_message():
    note = f"Charts: results/charts/ ({len(CHARTS)} charts as HTML, PNG and SVG); LaTeX tables: results/tables/latex/"
    return f"{note}\nReport (with the runtime of every job): make report, or snakemake report_files && snakemake --report {REPORT} report_files"
