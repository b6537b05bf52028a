"""One training run of the pipeline: a variant of one model on one task dataset, from stored files.

Everything it needs is on disk: the dataset's train/val/test unit files, the reference dataset's
PCA of the same model (ResiDual's bases) and the dataset's classifier. The result is one table row
(accuracies, parameter count, the conventions used) and the best parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl
import torch
from torch import Tensor

from residual.alignment.classifier import load_classifier
from residual.alignment.features import spectral_features
from residual.alignment.options import TrainingOptions
from residual.alignment.training import TrainSettings, lr_range_test, train
from residual.alignment.variants import VARIANTS, build_variant
from residual.data.sequences import SPLITS
from residual.io.tables import write_table
from residual.io.tensors import save_tensors
from residual.spectral.pca import UnitPCA
from residual.units.store import UnitFile

# Its version, TRAINING_VERSION, is in residual.alignment.options: bump it with a change to the training code that changes its results.


def run_variant(
    variant: str,
    units: Mapping[str, str | Path],
    reference_pca: str | Path,
    classifier_path: str | Path,
    options: TrainingOptions,
    device: torch.device | str = "cpu",
    checkpoint: str | Path | None = None,
    feature_batch_size: int = 1024,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Train and test `variant`. units: split -> unit file. checkpoint: where the run saves its
    progress after every epoch and resumes from after an interruption. feature_batch_size: samples
    read at once while the features are built (memory and float rounding only).

    Returns the table row and the best parameters (CPU tensors, empty for `base`)."""
    reference = UnitPCA.load(reference_pca)
    plan, module = build_variant(variant, reference, options.lambda_init, options.seed, conventions=options.conventions)
    features = [spectral_features(UnitFile(units[split]), plan, feature_batch_size, device) for split in SPLITS]
    classifier, header = load_classifier(classifier_path, options.logits)
    classifier, module = classifier.to(device), module.to(device)
    if options.lr is None:  # nothing to train: the settings only name the variant in messages
        settings = TrainSettings(variant, lr=0.0, seed=0)
    else:
        settings = TrainSettings(variant, options.lr, options.seed, options.epochs, options.patience, options.batch_size)
    if options.lr_range_test and any(parameter.requires_grad for parameter in module.parameters()):
        settings = replace(settings, lr=lr_range_test(module, features[0], classifier, settings))
    result = train(module, *features, classifier, settings, Path(checkpoint) if checkpoint else None)
    row = {
        "variant": variant,
        "label": VARIANTS[variant].label,
        "classifier": header["source"],
        "logits": options.logits,
        "lambda_init": options.lambda_init,
        "ln_constants": UnitFile(units["train"]).metadata.get("ln_constants"),
        "published_code": options.published_code,
        "head_rank": options.head_rank,
        "lr": settings.lr if result.trainable_parameters else None,
        "trainable_parameters": result.trainable_parameters,
        "val_accuracy": result.val_accuracy,
        "test_accuracy": result.test_accuracy,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "energy_outside_basis": features[0].outside,
        "val_samples": len(features[1]),
        "test_samples": len(features[2]),
    }
    return row, result.best_state


def save_run(row: dict[str, Any], best: dict[str, Tensor], metrics: str | Path, parameters: str | Path) -> None:
    """Write a run's table row (one-row Parquet) and its best parameters (safetensors, with the row
    as metadata), each atomically."""
    save_tensors(parameters, best, row)
    write_table(pl.DataFrame([row]), [metrics])
