"""OpenAI's zero-shot class names and prompt templates (METHOD section 3), in each loader's label order.

Where they come from:
- ImageNet (and ImageNet-Sketch, same classes): open_clip's `zero_shot_metadata`, the lists of
  CLIP's ImageNet notebook.
- The other task datasets: `openai_prompts.json`, copied verbatim from CLIP's `data/prompts.md`.
  LAION's clip_benchmark package is not used: it ships only some of these lists (not CIFAR,
  Cars, DTD, SUN397, RESISC45) and its RESISC45 and SVHN templates are not OpenAI's.
- SVHN, and the demo's scikit-learn digits: OpenAI published none; they get MNIST's digits and template (10 classes / 1 template,
  as METHOD counts them).

OpenAI's order is not always the loader's: EuroSAT's list is in neither alphabetical nor folder
order, and SUN397's is sorted after replacing '_' and '/' by spaces, which swaps 'jail/indoor'
and 'jail_cell'. So names are matched to the loader's own class names wherever a dataset has
them (`by_name`); only datasets whose labels are bare ids (MNIST and SVHN digits, GTSRB class
ids, ImageNet's sorted WordNet ids) are matched by position (`by_index`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import cache
from importlib.resources import files
from typing import Any

from residual.data.sequences import DatasetError

# Datasets that reuse another's OpenAI lists (see the module docstring).
BORROWED = {"svhn": "mnist", "digits": "mnist", "imagenet_sketch": "imagenet"}

# Native class names whose OpenAI name is not their own spelling with '_' and '/' as spaces.
RENAMED: Mapping[str, Mapping[str, str]] = {
    "eurosat": {
        "AnnualCrop": "annual crop land",
        "Forest": "forest",
        "HerbaceousVegetation": "brushland or shrubland",
        "Highway": "highway or road",
        "Industrial": "industrial buildings or commercial buildings",
        "Pasture": "pasture land",
        "PermanentCrop": "permanent crop land",
        "Residential": "residential buildings or homes or apartments",
        "River": "river",
        "SeaLake": "lake or sea",
    },
}


@cache
def _prompts() -> dict[str, Any]:
    return json.loads(files("residual.data").joinpath("openai_prompts.json").read_text(encoding="utf-8"))


def _key(dataset: str) -> str:
    key = BORROWED.get(dataset, dataset)
    if key != "imagenet" and key not in _prompts():
        known = sorted({"imagenet", *BORROWED, *(k for k in _prompts() if not k.startswith("_"))})
        raise DatasetError(f"no OpenAI class names or templates for dataset {dataset!r}; known: {known}")
    return key


def openai_classes(dataset: str) -> list[str]:
    """OpenAI's class names for `dataset` (a loader name), in OpenAI's order."""
    key = _key(dataset)
    if key == "imagenet":
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        return list(IMAGENET_CLASSNAMES)
    return list(_prompts()[key]["classes"])


def openai_templates(dataset: str) -> list[str]:
    """OpenAI's prompt templates for `dataset`, as `str.format` strings with one `{}`."""
    key = _key(dataset)
    if key == "imagenet":
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        return [template("{}") for template in OPENAI_IMAGENET_TEMPLATES]
    return list(_prompts()[key]["templates"])


def by_index(dataset: str, count: int) -> list[str]:
    """OpenAI's names for a dataset whose label i is OpenAI's class i; `count` is how many
    classes the files hold, checked so a partial copy cannot shift names onto wrong labels."""
    names = openai_classes(dataset)
    if count != len(names):
        raise DatasetError(
            f"dataset {dataset!r}: the files hold {count} classes, OpenAI's list has {len(names)}; "
            "labels are matched to names by position, so the dataset must be complete"
        )
    return names


def by_name(dataset: str, native: Sequence[str]) -> list[str]:
    """OpenAI's name of each native class name (the loader's `classes`, in label order)."""
    renamed = RENAMED.get(dataset, {})
    wanted = set(openai_classes(dataset))
    names = [renamed.get(name, name.replace("_", " ").replace("/", " ").strip()) for name in native]
    unknown = [raw for raw, name in zip(native, names) if name not in wanted]
    if unknown:
        raise DatasetError(
            f"dataset {dataset!r}: classes {unknown[:5]} (of {len(unknown)}) have no OpenAI name; the class "
            "folders and annotation files must keep the dataset's own class names"
        )
    if len(set(names)) != len(names):
        raise DatasetError(f"dataset {dataset!r}: two native classes map to the same OpenAI name in {names}")
    return names
