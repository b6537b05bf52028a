"""What every head-stage step reads: a task dataset's classifier, checked against the unit file it is
applied to, and the unit file streamed in batches, on the compute device, with the NaN/Inf guard."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from residual.alignment.classifier import ZeroShotClassifier, load_classifier
from residual.alignment.options import Logits
from residual.units.guards import check_finite_values
from residual.units.store import StoredUnits, UnitFile


def task_classifier(path: str | Path, logits: Logits, unit_file: UnitFile) -> ZeroShotClassifier:
    """The classifier at `path` (weights [C, d]) with the `logits` convention, refused with an error
    naming both files when its width is not the unit file's output width or it has a single class
    (every representation would then be classified correctly: no accuracy or score means anything)."""
    classifier, header = load_classifier(path, logits)
    classes, width = classifier.weights.shape
    if width != unit_file.layout.out_dim:
        raise ValueError(
            f"classifier {path} has width {width}, the units of {unit_file.path} have width {unit_file.layout.out_dim}: "
            "the classifier belongs to another model; delete it and rerun the classifier rule"
        )
    if classes < 2:
        raise ValueError(
            f"classifier {path} has a single class {header.get('classes')}: zero-shot accuracy, head scores and "
            "selections need a dataset with at least 2 classes; give the dataset `role: analysis` instead"
        )
    return classifier


def device_batches(
    unit_file: UnitFile, batch_size: int, device: torch.device | str, step: str, classes: int, units: Sequence[str] | None = None
) -> Iterator[StoredUnits]:
    """Consecutive batches of the selected units (all if None): values [b, U, d], embedding [b, d] and
    labels [b] on `device`; sample ids stay on the CPU. NonFiniteError names the unit, the samples,
    the file and `step`; a label outside [0, classes) is a ValueError naming the file."""
    context = f"unit file {unit_file.path}, step {step}"
    for batch in unit_file.iter_batches(batch_size, units):
        check_finite_values(batch.values, batch.names, batch.sample_ids, context)
        check_finite_values(batch.embedding[:, None], ["embedding"], batch.sample_ids, context)
        if len(batch.labels) and not 0 <= int(batch.labels.min()) <= int(batch.labels.max()) < classes:
            raise ValueError(f"{context}: labels outside [0, {classes}) for a classifier of {classes} classes")
        yield StoredUnits(batch.names, batch.values.to(device), batch.embedding.to(device), batch.labels.to(device), batch.sample_ids)
