"""One training run of the pipeline: a variant of one model on one task dataset, from stored files.

Everything it needs is on disk: the dataset's train/val/test unit files, the reference dataset's
PCA of the same model (ResiDual's bases) and the dataset's classifier. The result is one table row
(accuracies, parameter count, the conventions used) and the best parameters.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import polars as pl
import torch
from safetensors.torch import save_file
from torch import Tensor

from residual.alignment.variants import VARIANTS, Init, build_variant
from residual.io.atomic import atomic_path
from residual.alignment.classifier import Logits, load_classifier
from residual.alignment.features import spectral_features
from residual.spectral.pca import UnitPCA
from residual.units.store import UnitFile
from residual.report.tables import write_table
from residual.alignment.training import TrainSettings, lr_range_test, train

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class TrainingOptions:
    """The config's `training` block for one run (see the schema for each key)."""

    lambda_init: Init = "randn"
    logits: Logits = "raw"
    lr_residual: float = 0.8
    lr_adapter: float = 1e-3
    lr_range_test: bool = False
    batch_size: int = 64
    epochs: int = 30
    patience: int = 5
    feature_batch_size: int = 1024
    seed: int = 42

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrainingOptions:
        keys = set(cls.__dataclass_fields__) - {"seed"}
        return cls(**{key: config["training"][key] for key in keys}, seed=config["seed"])

    def lr(self, variant: str) -> float:
        return self.lr_residual if variant.startswith("residual_") else self.lr_adapter


def run_variant(
    variant: str,
    units: Mapping[str, str | Path],
    reference_pca: str | Path,
    classifier_path: str | Path,
    options: TrainingOptions,
    device: torch.device | str = "cpu",
    checkpoint: str | Path | None = None,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Train and test `variant`. units: split -> unit file. checkpoint: where the run saves its
    progress after every epoch and resumes from after an interruption.

    Returns the table row and the best parameters (CPU tensors, empty for `base`)."""
    reference = UnitPCA.load(reference_pca)
    plan, module = build_variant(variant, reference, options.lambda_init, options.seed)
    features = [spectral_features(UnitFile(units[split]), plan, options.feature_batch_size, device) for split in SPLITS]
    classifier, header = load_classifier(classifier_path, options.logits)
    classifier, module = classifier.to(device), module.to(device)
    settings = TrainSettings(variant, options.lr(variant), options.seed, options.epochs, options.patience, options.batch_size)
    if options.lr_range_test and any(parameter.requires_grad for parameter in module.parameters()):
        settings = replace(settings, lr=lr_range_test(module, features[0], classifier, settings))
    result = train(module, *features, classifier, settings, Path(checkpoint) if checkpoint else None)
    row = {
        "variant": variant,
        "label": VARIANTS[variant].label,
        "classifier": header["source"],
        "logits": options.logits,
        "lambda_init": options.lambda_init,
        "lr": settings.lr if result.trainable_parameters else None,
        "trainable_parameters": result.trainable_parameters,
        "val_accuracy": result.val_accuracy,
        "test_accuracy": result.test_accuracy,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "energy_outside_basis": features[0].outside,
    }
    return row, result.best_state


def save_run(row: dict[str, Any], best: dict[str, Tensor], metrics: str | Path, parameters: str | Path) -> None:
    """Write a run's table row (one-row Parquet) and its best parameters (safetensors, with the row
    as metadata), each atomically."""
    with atomic_path(parameters) as tmp:
        tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in best.items()}
        save_file(tensors, str(tmp), {"residual": json.dumps(row)})
    write_table(pl.DataFrame([row]), [metrics])
