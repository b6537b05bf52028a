"""Check a validated config against this machine before any job runs, without touching the network.

Two kinds of problem, both reported all at once with the config key, the value and what to do:

- `check_config`: mistakes in the config itself (an architecture or pretrained tag the library
  does not know, an architecture that does not decompose, such as a Swin or a ViT with average
  pooling, found on its skeleton without weights; a checkpoint file that does not exist, an unknown
  loader, a dataset without a root). Always fatal: `rules/common.smk` calls it right after
  `validate_config`, so even `snakemake -n` stops on them. The model checks build the model
  libraries' skeletons, which takes torch: they run in a child process (`residual.config.preflight.models`)
  whose OK is remembered in this machine's cache (`verdict_folder`), so that parsing the workflow,
  which every cluster job does again, imports no model library once a config's models have passed,
  in any run folder.
- `missing_inputs` / `require_inputs`: files a real run needs that are not here and that no rule
  can fetch (a user-supplied dataset such as ImageNet, a dataset with `download: false`, a
  Hugging Face checkpoint absent from the local cache). Data legitimately lives elsewhere when a
  run is planned, so a dry run only warns; a real run stops before its first job (`onstart`).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Collection, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from residual.config.errors import ConfigError
from residual.config.params import canonical
from residual.config.validate import active_models
from residual.data import imagefolder
from residual.data.catalog import DATASETS
from residual.data.sources import FILE_LOADERS, LOADERS
from residual.io.machine_cache import cache_folder, remember
from residual.libraries import HF_ID, LIBRARIES, suggest

GENERATED_SIZES = ("random", "world")  # loaders whose image count is the entry's `size`
IMAGEFOLDER_KEYS = ("table", "classes", "templates")  # keys of the user's own images only


class PreflightError(ConfigError):
    """The config names something missing or unknown on this machine; the message lists every problem."""


def check_config(config: Mapping[str, Any]) -> None:
    """Raise PreflightError listing every static problem of a validated config (models run by this config, all datasets)."""
    problems = [
        *model_problems({name: config["models"][name] for name in active_models(config)}),
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


# What the model checks depend on besides the entries: the model libraries and the checking code.
MODEL_DISTRIBUTIONS = ("torch", "torchvision", "open_clip_torch", "timm", "transformers")
CHECKING_CODE = (Path(__file__).parent, Path(__file__).parents[2] / "models", Path(__file__).parents[2] / "libraries.py")


def verdict_folder() -> Path:
    """Where passes of the model checks are remembered (the machine's cache, `preflight/`). A pass
    holds for this machine, not for one run folder: its key names everything the checks read
    (`_models_key`)."""
    return cache_folder("preflight")


def model_problems(models: Mapping[str, Mapping[str, Any]], verdicts: Path | None = None) -> list[str]:
    """Static problems of the `models:` entries by name (`residual.config.preflight.models`), checked
    in a child process unless these entries already passed with the same libraries, checking code
    and checkpoint files (a verdict file under `verdicts`, default `verdict_folder()`); only a pass
    is remembered, and only where the folder can be written."""
    if not models:
        return []
    verdict = (verdicts or verdict_folder()) / f"{_models_key(models)}.ok"
    if verdict.is_file():
        return []
    source = str(Path(__file__).parents[3])  # the folder that holds this `residual` package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "residual.config.preflight.models"]
    run = subprocess.run(command, input=json.dumps({name: canonical(spec) for name, spec in models.items()}), capture_output=True, text=True, env=env, check=False)
    if run.returncode != 0:
        raise PreflightError(f"config: the model checks stopped ({' '.join(command)}, exit {run.returncode}):\n{run.stderr[-2000:]}")
    problems: list[str] = json.loads(run.stdout.splitlines()[-1])
    if not problems:
        remember(verdict, "ok\n")
    return problems


def _models_key(models: Mapping[str, Mapping[str, Any]]) -> str:
    """SHA-256 of what the model checks read: the entries, whether each checkpoint path they name is
    a file here, the model libraries' versions and the checking code."""
    paths = sorted({value for spec in models.values() for value in spec.values() if isinstance(value, str)})
    digest = hashlib.sha256()
    facts = {
        "models": canonical(models),
        "files": {path: Path(path).is_file() for path in paths},
        "versions": {name: _version(name) for name in MODEL_DISTRIBUTIONS},
    }
    digest.update(json.dumps(facts, sort_keys=True).encode())
    for root in CHECKING_CODE:
        for path in sorted(root.rglob("*.py")) if root.is_dir() else [root]:
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _version(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


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
