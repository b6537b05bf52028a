"""Zero-shot accuracy of a model's own embedding and of the sum of its stored units, through the
same fixed classifier (METHOD sections 1 and 9).

The units sum to the embedding (the decomposition invariant), so both give the same predictions.
With float32 storage they agree on every sample; float16 storage (per-unit power-of-two scales, the
stored embedding kept apart) rounds each unit, and a sample whose two best logits are closer than
that rounding can change class: the row reports the agreement rate instead of hiding it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from residual.alignment.options import Logits
from residual.heads.inputs import device_batches, task_classifier
from residual.units.guards import relative_error
from residual.units.store import UnitFile

# Its version, ZEROSHOT_VERSION, is in residual.heads.options: bump it with a change that changes the rows it writes.


def unit_sum(values: Tensor) -> Tensor:
    """[b, U, d] units -> [b, d] their sum: the one summation behind both the zero-shot row and the
    all-units (`B`) selection, so that the two are equal exactly, not just within rounding."""
    return values.sum(dim=1)


@torch.no_grad()
def zero_shot(unit_path: str | Path, classifier_path: str | Path, logits: Logits, batch_size: int, device: torch.device | str) -> dict[str, Any]:
    """One row: samples, classes, storage dtype, logit convention, accuracy of the stored embedding
    (`accuracy_embedding`) and of the sum of the stored units (`accuracy_units`), the fraction of
    samples on which both predict the same class (`agreement`), whether that is all of them
    (`same_predictions`) and the largest relative difference of the sum from the embedding."""
    unit_file = UnitFile(unit_path)
    classifier = task_classifier(classifier_path, logits, unit_file).to(device)
    classes = classifier.weights.shape[0]
    samples = embedding_correct = units_correct = agree = 0
    error = 0.0
    for batch in device_batches(unit_file, batch_size, device, "zero-shot", classes):
        total = unit_sum(batch.values)
        by_embedding, by_units = classifier(batch.embedding).argmax(-1), classifier(total).argmax(-1)
        samples += len(batch.labels)
        embedding_correct += int((by_embedding == batch.labels).sum())
        units_correct += int((by_units == batch.labels).sum())
        agree += int((by_embedding == by_units).sum())
        error = max(error, relative_error(total, batch.embedding))
    if samples == 0:
        raise ValueError(f"unit file {unit_path} holds no samples: zero-shot accuracy is undefined")
    return {
        "split": unit_file.metadata.get("split"),
        "samples": samples,
        "classes": classes,
        "dtype": unit_file.metadata["dtype"],
        "logits": logits,
        "accuracy_embedding": embedding_correct / samples,
        "accuracy_units": units_correct / samples,
        "agreement": agree / samples,
        "same_predictions": agree == samples,
        "sum_rel_error": error,
    }
