"""Image sources: the official parts of a dataset, as indexable (image, label) sequences.

A loader turns one `datasets:` entry of the config into a `Source`: its official parts (e.g.
{'train': ..., 'test': ...}, or {'all': ...} when the dataset has no official split) and its class
names. Items are PIL images, or `NoiseImage`s that are rendered at the model's input size.
`LOADERS` names every loader: the paper's datasets (`catalog`, read from files under `root`), the
user's own images (`imagefolder`: class folders or a table under `root`) and three that need no
files (scikit-learn's digits, the paper's "random" images and the planted-attribute world of
`residual.data.world`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from residual.data.catalog import DATASETS, load
from residual.data.classnames import openai_templates
from residual.data.imagefolder import LOADER as IMAGEFOLDER
from residual.data.imagefolder import load_imagefolder_source
from residual.data.sequences import (
    ArrayImages,
    DatasetError,
    ImageSequence,
    LabelledImages,
    NoiseImage,
    NoiseImages,
    Source,
)
from residual.data.world import load_world_source

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "FILE_LOADERS",
    "LOADERS",
    "ArrayImages",
    "DatasetError",
    "ImageSequence",
    "LabelledImages",
    "Loader",
    "NoiseImage",
    "NoiseImages",
    "Source",
    "class_templates",
    "load_source",
    "prepare",
]

Loader = Callable[[Mapping[str, Any], "Path | None", int], Source]


def load_digits_source(spec: Mapping[str, Any], root: Path | None, seed: int) -> Source:
    """scikit-learn's bundled 8x8 handwritten digits (values 0..16), scaled to 0..255."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    return Source({"all": ArrayImages(images, digits.target)}, [str(d) for d in range(10)])


def load_random_source(spec: Mapping[str, Any], root: Path | None, seed: int) -> Source:
    count = int(spec.get("size", 10_000))
    return Source(
        {"all": NoiseImages(count, seed)},
        ["random"],
        {"random_space": "model input (after normalisation), uniform in [-1, 1]"},
    )


def _catalog_loader(name: str) -> Loader:
    """The loader of catalog dataset `name`: its files must lie under the entry's `root`."""

    def load_catalog_source(spec: Mapping[str, Any], root: Path | None, seed: int) -> Source:
        if root is None:
            raise DatasetError(f"loader {name!r} needs `root`, the folder that holds {', '.join(DATASETS[name].files)}")
        return load(name, root)

    return load_catalog_source


LOADERS: dict[str, Loader] = {
    **{name: _catalog_loader(name) for name in DATASETS},
    "digits": load_digits_source,
    "random": load_random_source,
    "world": load_world_source,
    IMAGEFOLDER: load_imagefolder_source,
}
# The loaders that read files under the entry's `root` (the others generate their images).
FILE_LOADERS = frozenset({*DATASETS, IMAGEFOLDER})


def load_source(name: str, spec: Mapping[str, Any], seed: int = 0) -> Source:
    """The `Source` of dataset `name` from its config entry (keys `loader`, `root`, ...)."""
    loader = spec.get("loader")
    if loader not in LOADERS:
        raise DatasetError(f"dataset {name!r}: unknown loader {loader!r}; known loaders: {sorted(LOADERS)}")
    root = Path(spec["root"]) if spec.get("root") else None
    return LOADERS[loader](spec, root, seed)


def class_templates(source: Source, spec: Mapping[str, Any]) -> list[str]:
    """The zero-shot prompt templates of a dataset: its own where its loader brings them, else OpenAI's."""
    return source.templates if source.templates is not None else openai_templates(spec["loader"])


def prepare(image: Any, preprocess: Callable[[Any], Tensor], size: tuple[int, int]) -> Tensor:
    """A source item -> the model's input tensor [3, H, W]."""
    if isinstance(image, NoiseImage):
        return image.render(size)
    return preprocess(image)
