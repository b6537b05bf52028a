"""The fixed classifiers that the variants are trained through (METHOD section 9).

Zero-shot weights: for models with a text tower (CLIP, BLIP), per class every OpenAI template is
encoded, L2-normalised and averaged (`residual.models.text.zero_shot_classifier`); models without one
(ViT, DINOv2) use the class means of their train embeddings.

Facts from the authors' code (`src/residual/nn/classifier.py`, CentroidClassifier): logits are
`x @ centroids`. At the commit their configs target (before 3b5288a) x is not normalised and the
text centroids are unit-norm, no logit scale ("raw"); later code L2-normalises x and multiplies by
exp(logit_scale) ("normalized"). Their ViT/DINOv2 centroids are the plain class means.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from residual.alignment.options import ClassifierSpec, Logits
from residual.data.sources import DatasetError, class_templates, load_source
from residual.io.tensors import open_tensors, save_tensors
from residual.models.loaded import LoadedModel, load_model
from residual.models.text import zero_shot_classifier
from residual.units.store import UnitFile

DEFAULT_LOGIT_SCALE = 100.0  # CLIP's trained exp(logit_scale), used where a model has none
# Its version, CLASSIFIER_VERSION, is in residual.alignment.options: bump it with a change that changes the classifiers it writes.


class ZeroShotClassifier(nn.Module):
    """Fixed class weights [C, d] -> logits [b, C]. logits 'raw': representation @ W^T (the
    authors' committed configs); 'normalized': L2-normalised representation @ W^T * scale
    (their later code, scale = the model's logit scale, 100 for CLIP)."""

    def __init__(self, weights: Tensor, logits: Logits = "raw", scale: float = 100.0) -> None:
        super().__init__()
        if logits not in ("raw", "normalized"):
            raise ValueError(f"logit convention {logits!r} is not 'raw' or 'normalized'")
        self.register_buffer("weights", weights.float())
        self.logits, self.scale = logits, scale

    def forward(self, representation: Tensor) -> Tensor:
        if self.logits == "raw":
            return representation @ self.weights.T
        return F.normalize(representation, dim=-1) @ self.weights.T * self.scale


def class_mean_classifier(embeddings: Tensor, labels: Tensor, classes: int, normalize: bool = True) -> Tensor:
    """[C, d] class means of embeddings [n, d] with labels [n] in [0, classes), each L2-normalised
    when `normalize` (the authors used the plain means for ViT and DINOv2, which favours classes
    whose mean is long under raw logits)."""
    counts = torch.bincount(labels, minlength=classes)
    if len(counts) > classes or bool((counts == 0).any()):
        raise ValueError(
            f"class means need every class in [0, {classes}) at least once and no other label; counts {counts.tolist()}"
        )
    sums = torch.zeros(classes, embeddings.shape[1], dtype=torch.float64, device=embeddings.device)
    means = (sums.index_add_(0, labels, embeddings.double()) / counts[:, None]).float()
    return F.normalize(means, dim=-1) if normalize else means


@dataclass(frozen=True)
class ClassWeights:
    """A dataset's classifier as stored: weights [C, d]; classes [C]; source 'text' or
    'class_means'; logit_scale the model's exp(logit_scale) (DEFAULT_LOGIT_SCALE where it has none)."""

    weights: Tensor
    classes: list[str]
    source: str
    logit_scale: float

    def save(self, path: str | Path) -> None:
        header = {"classes": self.classes, "source": self.source, "logit_scale": self.logit_scale}
        save_tensors(path, {"weights": self.weights.float()}, header)


def load_classifier(path: str | Path, logits: Logits) -> tuple[ZeroShotClassifier, dict[str, Any]]:
    """The classifier stored at `path` with the given logit convention, and its header."""
    with open_tensors(path, "classifier file", "classifier") as (handle, header):
        return ZeroShotClassifier(handle.get_tensor("weights"), logits, float(header["logit_scale"])), header


def model_logit_scale(model: LoadedModel) -> float:
    """exp(logit_scale) of a CLIP-like model; DEFAULT_LOGIT_SCALE where the model has none."""
    scale = getattr(model.module, "logit_scale", None)
    return float(scale.detach().exp()) if isinstance(scale, Tensor) else DEFAULT_LOGIT_SCALE


def class_means_from_units(path: str | Path, classes: int, normalize: bool, batch_size: int = 4096) -> Tensor:
    """[C, d] class means of the embeddings stored in a unit file (only the embedding column is read)."""
    parts = list(UnitFile(path).iter_batches(batch_size, units=[]))
    embeddings = torch.cat([part.embedding for part in parts])
    labels = torch.cat([part.labels for part in parts])
    try:
        return class_mean_classifier(embeddings, labels, classes, normalize)
    except ValueError as error:
        raise ValueError(f"unit file {path}: {error}") from error


def build_classifier(
    model: str, dataset: str, spec: ClassifierSpec, train_units: str | Path | None = None, device: torch.device | str = "cpu"
) -> ClassWeights:
    """Dataset `dataset`'s classifier for model `model`: zero-shot text weights from OpenAI's class
    names and templates where the model has a text tower; else the class means of the train
    split's embeddings (the unit file `train_units`)."""
    source = load_source(dataset, spec.source)  # class names and templates do not depend on the seed
    classes = source.classes
    if len(classes) < 2:
        raise DatasetError(
            f"dataset {dataset!r} is a task with {len(classes)} class ({classes}): classifying needs at least 2; "
            "set its `role: analysis` or give it more classes"
        )
    if spec.model is None:
        if train_units is None:
            raise ValueError(f"model {model!r} has no text tower: its classifier needs the train unit file of {dataset!r}")
        weights = class_means_from_units(train_units, len(classes), normalize=spec.class_means == "normalized")
        return ClassWeights(weights, classes, "class_means", DEFAULT_LOGIT_SCALE)
    loaded = load_model(spec.model, name=model, device=device)
    weights = zero_shot_classifier(loaded, classes, class_templates(source, spec.source))
    return ClassWeights(weights, classes, "text", model_logit_scale(loaded))
