"""Read and validate a pipeline config against its JSON schema (unknown keys rejected)."""

from __future__ import annotations

import copy
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from residual.config.errors import ConfigError
from residual.data.sequences import DatasetError
from residual.data.world import expand_world_datasets

SCHEMA = yaml.safe_load(files("residual.config").joinpath("schema.yaml").read_text())


def _with_defaults(validator_class: type) -> type:
    """A validator that also fills in each property's `default` (the standard jsonschema recipe)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema:
                    instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


# JSON Schema counts 16.0 as an integer; torch does not take it as a batch size, so neither do we.
_STRICT_TYPES = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
    "integer", lambda checker, instance: isinstance(instance, int) and not isinstance(instance, bool)
)
_Validator = _with_defaults(jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=_STRICT_TYPES))


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one,
    so a second `encode:` block would silently replace the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in lines:
                raise ConfigError(f"{self.name}: key {key!r} is given twice (lines {lines[key]} and {line}); keep one")
            lines[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> Any:
    """A YAML file's content, read safely; ConfigError naming the file for a missing, binary or
    malformed file, or a key given twice in one mapping."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError as error:
        raise ConfigError(f"config file {path} does not exist") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {path} is not a UTF-8 text file (byte {error.start}); give a YAML config") from error
    loader = _UniqueKeyLoader(text)
    loader.name = str(path)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {' '.join(str(error).split())}") from error
    finally:
        loader.dispose()


def validate_config(config: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Validate `config` in place (filling defaults) and return it; raise ConfigError on the first problem."""
    if isinstance(config.get("datasets"), dict):
        try:
            config["datasets"] = expand_world_datasets(config["datasets"])
        except DatasetError as error:
            raise ConfigError(f"{source}: {error}") from error
    errors = sorted(_Validator(SCHEMA).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        error = errors[0]
        where = ".".join(str(part) for part in error.absolute_path) or "(top level)"
        hint = ""
        if error.validator == "additionalProperties":
            allowed = sorted(error.schema.get("properties", {}))
            hint = f"; allowed keys here: {allowed}" if allowed else ""
        elif error.validator in ("pattern", "minItems") and "description" in error.schema:
            hint = f"; {' '.join(error.schema['description'].split())}"  # a regex or [] alone says too little
        raise ConfigError(f"{source}: at `{where}`: {error.message}{hint}")
    for name, model in config["models"].items():
        model.setdefault("seed", config["seed"])
        if "pretrain" in model:
            _pretrained_by_rule(name, model, source)
    if config["reference_dataset"] is None:
        config["reference_dataset"] = "imagenet" if "imagenet" in config["datasets"] else next(iter(config["datasets"]))
    _check_dataset_names(config, source)
    return config


def pretrain_checkpoint(model: str) -> str:
    """Where the `pretrain` rule writes model `model`'s weights (relative to the run's directory)."""
    return f"results/pretrain/{model}.safetensors"


def _pretrained_by_rule(name: str, model: dict[str, Any], source: str) -> None:
    """A model trained by the pipeline takes its weights from the `pretrain` rule's checkpoint."""
    checkpoint = pretrain_checkpoint(name)
    if model["library"] != "open_clip":
        raise ConfigError(f"{source}: at `models.{name}.pretrain`: only open_clip CLIPs are pretrained by the pipeline, not {model['library']!r}")
    if model["pretrained"] not in (None, checkpoint):
        raise ConfigError(
            f"{source}: at `models.{name}.pretrained`: a model with `pretrain` takes its weights from the pretrain rule "
            f"({checkpoint}); set `pretrained: null`, or remove `pretrain` to load {model['pretrained']!r}"
        )
    model["pretrained"] = checkpoint


def _check_dataset_names(config: dict[str, Any], source: str) -> None:
    """Keys that name datasets must name datasets of this config."""
    datasets = list(config["datasets"])
    named = {
        "reference_dataset": [config["reference_dataset"]],
        "analysis.id_datasets": config["analysis"]["id_datasets"] or [],
        "descriptions.datasets": config["descriptions"]["datasets"] or [],
    }
    for key, names in named.items():
        for name in names:
            if name not in datasets:
                raise ConfigError(f"{source}: at `{key}`: {name!r} is not one of the config's datasets {datasets}; name one of them")


def id_datasets(config: dict[str, Any]) -> list[str]:
    """Datasets whose units get intrinsic dimensions (the reference dataset unless the config lists them)."""
    return config["analysis"]["id_datasets"] or [config["reference_dataset"]]


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config (safely) and validate it."""
    config = read_yaml(path)
    if not isinstance(config, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return validate_config(config, source=str(path))


def active_models(config: dict[str, Any]) -> list[str]:
    """Model keys this run uses (appendix models only when `appendix_models` is true)."""
    return [name for name, spec in config["models"].items() if config["appendix_models"] or not spec["appendix"]]
