"""What each rule's output depends on, as plain values: the rules' `params`.

Snakemake reruns a job when the repr of one of its params changes, and silently skips a param it
cannot represent (a dataclass, say). So every param is built here from the config as plain values
in canonical form (mappings with sorted keys, at every depth: the same settings in another key
order are the same params), and holds exactly the settings its output depends on: where a job
runs (device, threads, workers) and how it batches (which changes float rounding only) are read
from the config by the workflow scripts, never passed as params.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

# The keys of a `models:` entry that decide the weights: everything but `appendix` (which only
# selects the model) and the run-level defaults filled in by validation.
MODEL_KEYS = ("library", "arch", "pretrained", "kwargs", "seed", "pretrain")
# The keys of a `datasets:` entry that decide its images and labels (`download` and `role` do not),
# and those that decide only what its classes are called and the prompts that name them.
SOURCE_KEYS = ("loader", "root", "size", "attribute", "table")
CLASS_NAME_KEYS = ("classes",)
PROMPT_KEYS = ("templates",)

Plain = None | bool | int | float | str | list["Plain"] | dict[str, "Plain"]


def canonical(value: Any) -> Plain:
    """`value` as plain values in canonical form: mappings (dict keys sorted, at every depth) and
    sequences become dicts and lists; TypeError for anything that is not a plain value."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(key): canonical(value[key]) for key in sorted(value, key=str)}
    if isinstance(value, (list, tuple)):
        return [canonical(item) for item in value]
    raise TypeError(f"{type(value).__name__} {value!r} is not a plain config value (None, bool, number, str, list or mapping)")


class RuleParams:
    """Base of the frozen dataclasses that travel as a rule's params: `params()` gives one as plain
    values in canonical form, and `Class(**params)` rebuilds it in the rule's script."""

    def params(self) -> dict[str, Plain]:
        return canonical(dataclasses.asdict(self))  # type: ignore[call-overload, return-value]


def pick(spec: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Plain]:
    """The `keys` of a config entry that are set, canonical."""
    return canonical({key: spec[key] for key in keys if spec.get(key) is not None})  # type: ignore[return-value]


def model_params(spec: Mapping[str, Any]) -> dict[str, Plain]:
    """What decides a model's weights and so every unit it produces."""
    return pick(spec, MODEL_KEYS)


def source_params(spec: Mapping[str, Any]) -> dict[str, Plain]:
    """What decides a dataset's images, labels and class names."""
    return pick(spec, SOURCE_KEYS)


def classifier_source_params(spec: Mapping[str, Any], text_tower: bool) -> dict[str, Plain]:
    """What decides a dataset's side of a classifier: its source and class names, and the prompt
    templates where a text tower encodes them (class means have no prompts)."""
    return pick(spec, SOURCE_KEYS + CLASS_NAME_KEYS + (PROMPT_KEYS if text_tower else ()))


def split_params(spec: Mapping[str, Any]) -> dict[str, Plain]:
    """What decides a dataset's split table: its source and its split rule."""
    return {**source_params(spec), "split": canonical(spec["split"])}  # type: ignore[dict-item]
