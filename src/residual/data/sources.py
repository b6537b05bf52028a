"""Image sources: the official parts of a dataset, as indexable (image, label) sequences.

A loader turns one `datasets:` entry of the config into a `Source`: its official parts (e.g.
{'train': ..., 'test': ...}, or {'all': ...} when the dataset has no official split) and its class
names. Items are PIL images, or `NoiseImage`s that are rendered at the model's input size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch import Tensor


class DatasetError(ValueError):
    """A dataset entry, its files or its root are unusable; the message says what to do."""


class ImageSequence(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Any, int]: ...


@dataclass(frozen=True)
class Source:
    """parts: official part name -> (image, label) sequence; classes: class names by label."""

    parts: Mapping[str, ImageSequence]
    classes: list[str]
    metadata: Mapping[str, Any] | None = None

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


Loader = Callable[[Mapping[str, Any], "Path | None", int], Source]
LOADERS: dict[str, Loader] = {
    "digits": load_digits_source,
    "random": load_random_source,
}


def load_source(name: str, spec: Mapping[str, Any], seed: int = 0) -> Source:
    """The `Source` of dataset `name` from its config entry (keys `loader`, `root`, ...)."""
    loader = spec.get("loader")
    if loader not in LOADERS:
        raise DatasetError(f"dataset {name!r}: unknown loader {loader!r}; known loaders: {sorted(LOADERS)}")
    root = Path(spec["root"]) if spec.get("root") else None
    return LOADERS[loader](spec, root, seed)


def prepare(image: Any, preprocess: Callable[[Any], Tensor], size: tuple[int, int]) -> Tensor:
    """A source item -> the model's input tensor [3, H, W]."""
    if isinstance(image, NoiseImage):
        return image.render(size)
    return preprocess(image)


def subset(sequence: ImageSequence, indices: Sequence[int]) -> torch.utils.data.Subset:
    return torch.utils.data.Subset(sequence, list(indices))
