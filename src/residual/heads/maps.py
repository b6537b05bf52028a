"""Where the top heads look: per-patch maps of their CLS outputs on a few test images (rules/maps.smk).

For one model x task dataset, the maps are drawn for the first `heads` heads of one score's top-k
selection (`score` at `fraction`: the U|T selection at `heads.table_fraction`, 5%, by default) and,
for each, its first `components` principal components (the pca rule's PCA of the task's train
split, in output space). A seeded set of test images, `images_per_class` of each of at most
`classes` classes, goes through the model in batches (`residual.units.tokens.decompose_tokens`),
and each head's per-token parts of its unit value are projected
- on the image's class direction w_y - mean_c w_c: its true class's row of the task's classifier less
  the mean row. Softmax ignores what raises every class's logit alike, so a token's value is what it
  does for the true class against the others (under either logit convention, up to a positive factor
  per image);
- on each principal component v: the token's part of the head's coordinate along v (uncentred: the
  unit's mean is a constant of the PCA, not a part of any token).
What no token carries (the offset: the head's share of the output bias and of the final LayerNorm's
constant terms) is kept beside the maps, so that maps plus offsets are the head's projected value
exactly (to 1e-4, checked by `decompose_tokens`).

Stored in one safetensors file: maps [I, K, M, T] (M = 1 + components, T tokens in the model's order:
the prefix, then the patches row by row), offsets [I, K, M], the images as the model saw them
[I, H, W, 3] uint8, their labels, the model's predictions (its embedding through the classifier) and
sample ids. Memory: one batch of `batch_size` images x K heads x T tokens x d_out floats, besides the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision.transforms import Normalize

from residual.alignment.classifier import load_classifier
from residual.data.sequences import Source
from residual.data.splits import read_split
from residual.heads.options import MapOptions
from residual.heads.probes import component_bases
from residual.heads.scores import ranking
from residual.heads.selection import selection_size
from residual.io.tensors import TensorFileError, open_tensors, save_tensors
from residual.models.loaded import LoadedModel
from residual.spectral.pca import UnitPCA
from residual.units.encode import SplitImages
from residual.units.tokens import decompose_tokens
from residual.units.unit_map import UnitMap, layout_of

# Its version, MAPS_VERSION, is in residual.heads.options: bump it with a change that changes the maps it writes.
FORMAT = "head-maps/1"  # the file layout; bump with it
CLASS_MAP = "class"


class MapsFileError(TensorFileError):
    """A maps file is missing, corrupt or of another format."""


@dataclass(frozen=True)
class MapFiles:
    """The files the maps of one model x task dataset read: the dataset's split table, the head scores
    (val), the task's classifier, the PCA of the task's train split and the model's unit map."""

    split: str | Path
    scores: str | Path
    classifier: str | Path
    pca: str | Path
    unit_map: str | Path


@dataclass(frozen=True)
class HeadMaps:
    """Per-token maps of K heads on I images, M maps per head (the class direction, then components).

    - heads [K]; maps [M] ('class', 'pc1', ...); classes [C] the task's class names
    - values [I, K, M, T]: each token's part of the head's value projected on the map's direction
    - offsets [I, K, M]: the part no token carries; drawn [K, M] bool: False where a head has fewer
      components than asked (its maps there are zeros); ratios [K, M]: each component's explained
      variance ratio (NaN for the class map)
    - images [I, H, W, 3] uint8 as the model saw them; labels, predictions, sample_ids [I]
    - prefix [P] the tokens before the patches; grid (rows, columns); metadata: model, dataset, options
    """

    heads: list[str]
    maps: list[str]
    classes: list[str]
    values: Tensor
    offsets: Tensor
    drawn: Tensor
    ratios: Tensor
    images: Tensor
    labels: Tensor
    predictions: Tensor
    sample_ids: Tensor
    prefix: tuple[str, ...]
    grid: tuple[int, int]
    metadata: dict[str, Any]

    @property
    def patches(self) -> Tensor:
        """[I, K, M, rows, columns]: the patch tokens' values on the image's grid."""
        return self.values[..., len(self.prefix) :].unflatten(-1, self.grid)

    def save(self, path: str | Path) -> None:
        tensors = {
            "values": self.values.float(),
            "offsets": self.offsets.float(),
            "drawn": self.drawn.bool(),
            "ratios": self.ratios.float(),
            "images": self.images.to(torch.uint8),
            "labels": self.labels.long(),
            "predictions": self.predictions.long(),
            "sample_ids": self.sample_ids.long(),
        }
        header = {
            "format": FORMAT,
            "heads": self.heads,
            "maps": self.maps,
            "classes": self.classes,
            "prefix": list(self.prefix),
            "grid": list(self.grid),
            **self.metadata,
        }
        save_tensors(path, tensors, header)

    @classmethod
    def load(cls, path: str | Path) -> HeadMaps:
        with open_tensors(path, "maps file", "head_maps", format=FORMAT, error=MapsFileError) as (handle, header):
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
            fixed = {key: header.pop(key) for key in ("format", "heads", "maps", "classes", "prefix", "grid")}
            return cls(
                **tensors,
                heads=fixed["heads"],
                maps=fixed["maps"],
                classes=fixed["classes"],
                prefix=tuple(fixed["prefix"]),
                grid=(int(fixed["grid"][0]), int(fixed["grid"][1])),
                metadata=header,
            )


def pick_images(rows: pl.DataFrame, options: MapOptions) -> pl.DataFrame:
    """The rows of a split table to map, sorted by label then sample id: `options.images_per_class`
    of each class (all of a class that has fewer), of at most `options.classes` classes, drawn by a
    generator seeded with `options.seed` (the classes first, then each class's images in label order)."""
    generator = np.random.default_rng(options.seed)
    labels = sorted(rows["label"].unique().to_list())
    if options.classes is not None and len(labels) > options.classes:
        labels = sorted(generator.choice(labels, options.classes, replace=False).tolist())
    picked: list[int] = []
    for label in labels:
        ids = rows.filter(pl.col("label") == label)["sample_id"].sort().to_numpy()
        picked += generator.choice(ids, min(options.images_per_class, len(ids)), replace=False).tolist()
    return rows.filter(pl.col("sample_id").is_in(picked)).sort("label", "sample_id")


def top_heads(scores: pl.DataFrame, options: MapOptions, source: str | Path) -> list[str]:
    """The first `options.heads` heads, best first, of the `options.score` selection at
    `options.fraction` in a head scores table (`source` names it in errors)."""
    order = ranking(scores, options.score, None)
    if not order:
        raise ValueError(f"head scores {source} hold no score {options.score!r}: add it to `heads.scores` and rerun head_scores")
    return order[: min(options.heads, selection_size(options.fraction, len(order)))]


def display_pixels(images: Tensor, preprocess: Callable[[Any], Tensor]) -> Tensor:
    """images [B, 3, H, W] as the model's transform made them -> [B, H, W, 3] uint8, its normalisation
    undone (values it pushed outside [0, 1] are clipped)."""
    steps = getattr(preprocess, "transforms", [preprocess])
    normalise = next((step for step in steps if isinstance(step, Normalize)), None)
    if normalise is None:
        raise ValueError("the model's image transform has no Normalize step to undo: its inputs cannot be drawn as images")
    mean = torch.as_tensor(normalise.mean, dtype=torch.float32, device=images.device)[:, None, None]
    std = torch.as_tensor(normalise.std, dtype=torch.float32, device=images.device)[:, None, None]
    pixels = (images.float() * std + mean).clamp(0, 1)
    return (pixels * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()


@torch.no_grad()
def head_maps(model: LoadedModel, dataset: str, source: Source, files: MapFiles, options: MapOptions, batch_size: int) -> HeadMaps:
    """The maps of `model` on the test split of task dataset `dataset` (images from `source`; see the module's docstring)."""
    heads = top_heads(pl.read_parquet(files.scores), options, files.scores)
    unit_map = UnitMap.load(files.unit_map)
    if unit_map.layout != layout_of(model.tower):
        raise ValueError(f"unit map {files.unit_map} is of another model ({unit_map.layout}, not {layout_of(model.tower)}): rerun the unit_map rule")
    classifier, header = load_classifier(files.classifier, "raw")
    weights = classifier.weights.to(model.device)  # [C, d]
    if weights.shape[1] != layout_of(model.tower).out_dim:
        raise ValueError(f"classifier {files.classifier} has width {weights.shape[1]}, the model {layout_of(model.tower).out_dim}: rerun the classifier rule")
    bases, kept, ratios = component_bases(UnitPCA.load(files.pca, heads), options.components, layout_of(model.tower).out_dim)
    bases = bases.to(model.device, torch.float32)  # [K, components, d]
    rows = pick_images(read_split(files.split, "test"), options)
    if int(rows["label"].max()) >= len(weights):
        raise ValueError(f"split table {files.split} has labels up to {int(rows['label'].max())}, the classifier {len(weights)} classes")
    centred = weights - weights.mean(dim=0)  # softmax ignores what every class gets alike
    values, offsets, images, predictions = [], [], [], []
    for batch, labels, _ in DataLoader(SplitImages(source, rows, model), batch_size=batch_size, shuffle=False):
        parts = decompose_tokens(model, batch, heads, unit_map)
        count = len(labels)
        directions = torch.cat([centred[labels.to(model.device)][:, None, None].expand(-1, len(heads), 1, -1),
                                bases[None].expand(count, -1, -1, -1)], dim=2)  # fmt: skip  # [b, K, M, d]
        values.append(torch.einsum("bktd,bkmd->bkmt", parts.tokens, directions).cpu())
        offsets.append(torch.einsum("bkd,bkmd->bkm", parts.offset, directions).cpu())
        predictions.append((parts.embedding @ weights.T).argmax(dim=-1).cpu())
        images.append(display_pixels(batch, model.preprocess))
    class_ratio = torch.full((len(heads), 1), float("nan"), dtype=torch.float64)
    return HeadMaps(
        heads=heads,
        maps=[CLASS_MAP, *(f"pc{index + 1}" for index in range(options.components))],
        classes=list(header["classes"]),
        values=torch.cat(values),
        offsets=torch.cat(offsets),
        drawn=torch.cat([torch.ones(len(heads), 1, dtype=torch.bool), kept], dim=1),
        ratios=torch.cat([class_ratio, ratios], dim=1).float(),
        images=torch.cat(images),
        labels=torch.tensor(rows["label"].to_list()),
        predictions=torch.cat(predictions),
        sample_ids=torch.tensor(rows["sample_id"].to_list()),
        prefix=model.tower.prefix,
        grid=model.tower.grid,
        metadata={"model": model.name, "dataset": dataset, "options": options.params()},
    )

