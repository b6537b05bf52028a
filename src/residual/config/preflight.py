"""Check a validated config against this machine before any job runs, without touching the network.

Two kinds of problem, both reported all at once with the config key, the value and what to do:

- `check_config`: mistakes in the config itself (an architecture or pretrained tag the library
  does not know, an architecture that does not decompose, such as a Swin or a ViT with average
  pooling, found on its skeleton without weights; a checkpoint file that does not exist, an unknown
  loader, a dataset without a root). Always fatal: `rules/common.smk` calls it right after
  `validate_config`, so even `snakemake -n` stops on them.
- `missing_inputs` / `require_inputs`: files a real run needs that are not here and that no rule
  can fetch (a user-supplied dataset such as ImageNet, a dataset with `download: false`, a
  Hugging Face checkpoint absent from the local cache). Data legitimately lives elsewhere when a
  run is planned, so a dry run only warns; a real run stops before its first job (`onstart`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from residual.config.errors import ConfigError
from residual.config.validate import active_models
from residual.data import imagefolder
from residual.data.catalog import DATASETS
from residual.data.sources import FILE_LOADERS, LOADERS
from residual.libraries import HF_ID, LIBRARIES, suggest
from residual.models import looks_like_path
from residual.models.checkpoint import loading_kwargs
from residual.models.tower import UnsupportedModelError

GENERATED_SIZES = ("random", "world")  # loaders whose image count is the entry's `size`
IMAGEFOLDER_KEYS = ("table", "classes", "templates")  # keys of the user's own images only


class PreflightError(ConfigError):
    """The config names something missing or unknown on this machine; the message lists every problem."""


def check_config(config: Mapping[str, Any]) -> None:
    """Raise PreflightError listing every static problem of a validated config (models run by this config, all datasets)."""
    problems = [
        *(problem for name in active_models(config) for problem in _model_problems(name, config["models"][name])),
        *(problem for name, spec in config["datasets"].items() for problem in _dataset_problems(name, spec)),
    ]
    _raise(problems, "the config names things that do not exist")


def missing_inputs(
    config: Mapping[str, Any], datasets: Collection[str] | None = None, models: Collection[str] | None = None
) -> list[str]:
    """What a real run needs but cannot get: one message per dataset or model, naming the key, path and fix.

    datasets, models: only these (e.g. those with pending jobs); None means every dataset and every
    model this config runs. Relative dataset roots are taken from the current directory (Snakemake's
    working directory).
    """
    dataset_names = config["datasets"] if datasets is None else [name for name in config["datasets"] if name in datasets]
    model_names = [name for name in active_models(config) if models is None or name in models]
    return [
        *(message for name in dataset_names if (message := _missing_dataset(name, config["datasets"][name]))),
        *(message for name in model_names if (message := _missing_model(name, config["models"][name]))),
    ]


def require_inputs(
    config: Mapping[str, Any], datasets: Collection[str] | None = None, models: Collection[str] | None = None
) -> None:
    """Raise PreflightError unless `missing_inputs` is empty."""
    _raise(missing_inputs(config, datasets, models), "inputs are missing; no job was started")


def _model_problems(name: str, spec: Mapping[str, Any]) -> list[str]:
    """Static problems of one `models:` entry: architecture, pretrained tag or file."""
    key, library, pretrained = f"models.{name}", spec["library"], spec.get("pretrained")
    unsafe = loading_kwargs(spec.get("kwargs") or {})
    if unsafe:
        return [
            f"{key}.kwargs.{problem}; kwargs may not change how weights are loaded: remove it and give the weights file as `pretrained`"
            for problem in unsafe
        ]
    depth = LIBRARIES[library].vision_depth(spec)
    if depth is not None and (not isinstance(depth, int) or isinstance(depth, bool) or depth < 1):
        return [f"{key}.kwargs: {depth!r} blocks; a vision transformer needs at least one block to decompose into units"]
    folders = "arch" in LIBRARIES[library].checkpoint_fields  # the library reads checkpoint folders and model ids
    if not folders and isinstance(pretrained, str) and looks_like_path(pretrained) and not Path(pretrained).is_file() and "pretrain" not in spec:
        return [f"{key}.pretrained: checkpoint file {pretrained!r} does not exist; fix the path, or use null for random init"]
    return LIBRARIES[library].module().spec_problems(key, spec) or _architecture_problems(key, spec)


def _architecture_problems(key: str, spec: Mapping[str, Any]) -> list[str]:
    """What the model's first job would refuse (kwargs the library rejects; pooling or blocks that
    do not decompose: the adapter's `tower`), found on the architecture alone (`skeleton`)."""
    adapter = LIBRARIES[spec["library"]].module()
    try:
        module = adapter.skeleton(spec)
        if module is None:  # the library builds no architecture without its checkpoint: the first job checks it
            return []
    except TypeError as error:
        return [f"{key}.kwargs: {spec['library']} rejects {dict(spec.get('kwargs') or {})} for {spec['arch']!r} ({error}); fix `kwargs`"]
    except Exception:  # an operation the meta device lacks: the model's first job builds it for real, and checks it there
        return []
    try:
        adapter.tower(module)
    except UnsupportedModelError as error:
        return [f"{key}.arch: {spec['arch']!r} does not decompose into residual units: {error}"]
    return []


def _dataset_problems(name: str, spec: Mapping[str, Any]) -> list[str]:
    """Static problems of one `datasets:` entry: loader, root, size and split fractions."""
    key, loader, problems = f"datasets.{name}", spec["loader"], []
    if loader not in LOADERS:
        return [f"{key}.loader: unknown loader {loader!r}{suggest(loader, LOADERS)}; known loaders: {sorted(LOADERS)}"]
    if loader in FILE_LOADERS and not spec.get("root"):
        problems.append(
            f"{key}.root: loader {loader!r} reads files, so `root` must name the folder that holds (or will hold) them"
        )
    if loader not in FILE_LOADERS and spec.get("root"):
        problems.append(f"{key}.root: loader {loader!r} reads no files (its data are generated), so `root` would be ignored; remove it")
    if "size" in spec and loader not in GENERATED_SIZES:
        problems.append(f"{key}.size: only the {' and '.join(map(repr, GENERATED_SIZES))} loaders take a size; remove it (use split.subset to subsample)")
    if spec.get("attribute") and loader != "world":
        problems.append(f"{key}.attribute: only the 'world' loader has planted attributes; remove it")
    problems.extend(
        f"{key}.{option}: only the {imagefolder.LOADER!r} loader (your own images) takes `{option}`; remove it"
        for option in IMAGEFOLDER_KEYS
        if option in spec and loader != imagefolder.LOADER
    )
    split = spec["split"]
    if split["rule"] == "resplit" and split["val"] + split["test"] >= 1:
        problems.append(
            f"{key}.split: val {split['val']} + test {split['test']} leaves nothing for train; their sum must be below 1"
        )
    return problems


def _missing_dataset(name: str, spec: Mapping[str, Any]) -> str | None:
    if spec["loader"] not in FILE_LOADERS or not spec.get("root"):  # generated in memory (digits, random), or a static problem
        return None
    root = Path(spec["root"])
    if spec["loader"] == imagefolder.LOADER:
        problem = imagefolder.missing(spec, root)
        return None if problem is None else f"datasets.{name}: {problem}"
    entry = DATASETS[spec["loader"]]
    missing = entry.missing(root)
    if not missing:
        return None
    where = f"datasets.{name}: {root.resolve()} lacks {', '.join(missing)}"
    if entry.fetch is None:
        return f"{where}. {entry.origin}"
    if not spec["download"]:
        return f"{where}. Set `download: true` to fetch them in the download step, or place them there by hand."
    return None


def _missing_model(name: str, spec: Mapping[str, Any]) -> str | None:
    """Hugging Face ids must already be in the local cache: the transformers adapter never contacts the hub."""
    if spec["library"] != "transformers":
        return None
    from huggingface_hub import try_to_load_from_cache

    for field in LIBRARIES["transformers"].checkpoint_fields:
        source = spec.get(field)
        if source and not Path(source).exists() and HF_ID.match(source):
            if not isinstance(try_to_load_from_cache(source, "config.json"), str):
                return (
                    f"models.{name}.{field}: {source!r} is not in the local Hugging Face cache. Download it once "
                    f"where there is network (`hf download {source}`) into the HF_HOME this machine uses, "
                    "or point to a local checkpoint directory"
                )
    return None


def _raise(problems: list[str], summary: str) -> None:
    if problems:
        listing = "\n".join(f"  - {problem}" for problem in problems)
        raise PreflightError(f"config: {summary} ({len(problems)} problem{'s' * (len(problems) > 1)}):\n{listing}")
