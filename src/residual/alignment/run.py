"""One training run of the pipeline: a variant of one model on one task dataset, from stored files.

Everything it needs is on disk: the dataset's train/val/test unit files, the reference dataset's
PCA of the same model (ResiDual's bases) and the dataset's classifier. The result is one table row
(accuracies, parameter count, the conventions used) and the best parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import polars as pl
import torch
from torch import Tensor

from residual.alignment.classifier import Logits, load_classifier
from residual.alignment.features import spectral_features
from residual.alignment.training import TrainSettings, lr_range_test, train
from residual.alignment.variants import (
    VARIANTS,
    Conventions,
    HeadRank,
    Init,
    build_variant,
)
from residual.config.params import RuleParams
from residual.data.sequences import SPLITS
from residual.io.tables import write_table
from residual.io.tensors import save_tensors
from residual.spectral.pca import UnitPCA
from residual.units.store import UnitFile

VERSION = "train/2"  # bump when a change to the training code changes its results


@dataclass(frozen=True)
class TrainingOptions(RuleParams):
    """The settings one variant's result depends on (see the schema for each `training` key).

    lr: the variant's own learning rate (`lr_residual` or `lr_adapter`, by `Variant.lr_key`).
    A variant that trains nothing (`base`) depends on `logits` alone: its other fields are None,
    so that changing them reruns only the variants they apply to. Likewise `published_code` and
    `head_rank` (`Conventions`) are None for the variants they do not change.
    """

    logits: Logits = "raw"
    lambda_init: Init | None = "randn"
    lr: float | None = 0.8
    lr_range_test: bool | None = False
    batch_size: int | None = 64
    epochs: int | None = 30
    patience: int | None = 5
    seed: int | None = 42
    published_code: bool | None = None
    head_rank: HeadRank | None = None

    @property
    def conventions(self) -> Conventions:
        """The `Conventions` to build the variant with (a None field: the paper's default, unused)."""
        chosen = {key: value for key, value in (("published_code", self.published_code), ("head_rank", self.head_rank)) if value is not None}
        return Conventions(**chosen)

    @classmethod
    def for_variant(cls, config: Mapping[str, Any], variant: str) -> TrainingOptions:
        """The options of `variant` in a validated config."""
        training, lr_key = config["training"], VARIANTS[variant].lr_key
        if lr_key is None:
            return cls(training["logits"], None, None, None, None, None, None, None)
        conventions = {key: training[key] for key in VARIANTS[variant].conventions}
        return cls(
            **conventions,
            logits=training["logits"],
            lambda_init=training["lambda_init"],
            lr=training[lr_key],
            lr_range_test=training["lr_range_test"],
            batch_size=training["batch_size"],
            epochs=training["epochs"],
            patience=training["patience"],
            seed=config["seed"],
        )



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
