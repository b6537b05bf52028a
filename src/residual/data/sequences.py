"""What a dataset is to the pipeline: a `Source` of indexable (image, label) sequences.

Kept apart from the loaders (`catalog`, `sources`) so that every loader module can build
`Source`s without importing the registry that lists them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # torch is imported where an image is rendered: the workflow imports SPLITS when it parses
    from torch import Tensor
    from torch.utils.data import Dataset

SPLITS = ("train", "val", "test")  # the pipeline's splits, and the official part names of datasets that have all three


class DatasetError(ValueError):
    """A dataset entry, its files or its root are unusable; the message says what to do."""


class ImageSequence(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Any, int]: ...


@dataclass(frozen=True)
class Source:
    """parts: official part name -> (image, label) sequence; classes: class names by label;
    templates: the zero-shot prompt templates of a dataset that brings its own (the world's), None
    for the paper's datasets (OpenAI's, `residual.data.classnames`)."""

    parts: Mapping[str, ImageSequence]
    classes: list[str]
    metadata: Mapping[str, Any] | None = None
    templates: list[str] | None = None

    def labels(self, part: str) -> np.ndarray:
        """All labels of a part, [n] int64 (reads targets without decoding images where possible)."""
        sequence = self.parts[part]
        targets = getattr(sequence, "targets", None)
        if targets is None:
            targets = [sequence[i][1] for i in range(len(sequence))]
        return np.asarray(targets, dtype=np.int64)


@dataclass(frozen=True)
class NoiseImage:
    """The paper's "random" image: RGB values uniform in [-1, 1] in the model's input space
    (after its normalisation), seeded per sample so every model sees the same draw."""

    seed: int
    index: int

    def render(self, size: tuple[int, int]) -> Tensor:
        """[3, H, W] float32."""
        import torch

        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.index)
        return torch.rand(3, *size, generator=generator) * 2 - 1


class NoiseImages:
    def __init__(self, count: int, seed: int) -> None:
        self.count, self.seed = count, seed
        self.targets = [0] * count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[NoiseImage, int]:
        if not 0 <= index < self.count:
            raise IndexError(index)
        return NoiseImage(self.seed, index), 0


class ArrayImages:
    """In-memory uint8 images [n, H, W] (grayscale) or [n, H, W, 3] with labels [n]."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.targets = images, [int(label) for label in labels]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[index]).convert("RGB"), self.targets[index]


class LabelledImages:
    """A map-style image dataset with its labels read once from its annotations.

    Splitting needs every label of a part; asking the dataset for them would decode every image.
    Items are RGB whatever the dataset stores (MNIST is grayscale), so every model's preprocessing
    sees the same kind of input.
    """

    def __init__(self, dataset: Dataset, targets: list[int]) -> None:
        size = len(dataset)  # type: ignore[arg-type]
        if len(targets) != size:
            raise DatasetError(f"{type(dataset).__name__}: {len(targets)} labels for {size} images")
        self.dataset, self.targets = dataset, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        try:
            image, _ = self.dataset[index]
            return image.convert("RGB"), self.targets[index]
        except OSError as error:  # PIL: unidentified or truncated image files
            raise DatasetError(
                f"{_describe(self.dataset, index)} cannot be decoded ({error}); replace it with an intact copy "
                "(removing it would renumber the samples after it)"
            ) from error


def _describe(dataset: Any, index: int) -> str:
    """The image file behind item `index` of a torchvision dataset (through Subset and ConcatDataset), if it has one."""
    from torch.utils.data import ConcatDataset, Subset

    if isinstance(dataset, Subset):
        return _describe(dataset.dataset, int(dataset.indices[index]))
    if isinstance(dataset, ConcatDataset):
        part = int(np.searchsorted(dataset.cumulative_sizes, index, side="right"))
        return _describe(dataset.datasets[part], index - (dataset.cumulative_sizes[part - 1] if part else 0))
    for attribute in ("samples", "_samples", "_image_files"):  # ImageFolder; GTSRB, StanfordCars; DTD, SUN397
        files = getattr(dataset, attribute, None)
        if files is not None:
            entry = files[index]
            return f"image file {entry[0] if isinstance(entry, tuple) else entry}"
    return f"item {index} of {type(dataset).__name__}"
