"""One training run from stored files (METHOD section 9): the options taken from the config, the
table row of every variant, determinism, checkpoint resumption and the LR range test switch."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import REPO, TINY_OPEN_CLIP
from safetensors.torch import load_file

from residual.alignment.variants import VARIANTS, build_variant, trainable_parameters
from residual.alignment.classifier import build_classifier, class_means_from_units, save_classifier
from residual.config.validate import SCHEMA, load_config, validate_config
from residual.alignment.run import TrainingOptions, run_variant
from residual.spectral.pca import UnitPCA, fit_unit_file
from residual.units.store import read_units

ROW_KEYS = {
    "variant", "label", "classifier", "logits", "lambda_init", "lr", "trainable_parameters",
    "val_accuracy", "test_accuracy", "best_epoch", "epochs_run", "energy_outside_basis",
}  # fmt: skip
OPTIONS = TrainingOptions(epochs=2, feature_batch_size=64, seed=42)
DIGITS = {"loader": "digits", "split": {"rule": "resplit", "val": 0.2, "test": 0.2, "subset": 150}}


@pytest.fixture(scope="module")
def inputs(digit_units: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What a training job reads: the digits' unit files, the reference PCA of their train split
    and the tiny CLIP's zero-shot text classifier of the digits ('classifier'); also a classifier of
    the normalised class means of the train embeddings ('means'), which scores well above chance."""
    folder = tmp_path_factory.mktemp("experiment")
    pca, classifier, means = (folder / f"{name}.safetensors" for name in ("pca", "classifier", "means"))
    fit_unit_file(digit_units["train"]).save(pca)
    save_classifier(classifier, *build_classifier("clip_tiny", TINY_OPEN_CLIP, "digits", DIGITS, 42, None, "plain"))
    weights = class_means_from_units(digit_units["train"], 10, normalize=True)
    save_classifier(means, weights, [str(digit) for digit in range(10)], "class_means", 100.0)
    return {"units": digit_units, "pca": pca, "classifier": classifier, "means": means}


def run(
    inputs: dict[str, Any],
    variant: str,
    options: TrainingOptions = OPTIONS,
    checkpoint: Path | None = None,
    classifier: str = "classifier",
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    return run_variant(variant, inputs["units"], inputs["pca"], inputs[classifier], options, "cpu", checkpoint)


def stored_accuracy(units: Path, classifier: Path) -> float:
    """Accuracy of argmax(embedding @ W^T) on a unit file, from the files alone."""
    weights = load_file(str(classifier))["weights"]
    stored = read_units(units, units=[])
    return (stored.embedding @ weights.T).argmax(dim=1).eq(stored.labels).double().mean().item()


def test_options_take_every_training_key_and_the_run_seed() -> None:
    """from_config reads each option from the validated `training` block (every one set here to a
    value other than the dataclass default) and the seed from the top level."""
    fields = {field.name for field in dataclasses.fields(TrainingOptions)}
    assert fields - {"seed"} <= set(SCHEMA["properties"]["training"]["properties"])
    config = yaml.safe_load((REPO / "tests/configs/tiny.yaml").read_text())
    changed = {
        "lambda_init": "ones", "logits": "normalized", "lr_residual": 0.5, "lr_adapter": 0.02, "lr_range_test": True,
        "batch_size": 16, "epochs": 4, "patience": 2, "feature_batch_size": 32,
    }  # fmt: skip
    assert set(changed) == fields - {"seed"}
    config["training"].update(changed)
    config["seed"] = 7
    options = TrainingOptions.from_config(validate_config(config))
    assert dataclasses.asdict(options) == {**changed, "seed": 7}
    for field in dataclasses.fields(TrainingOptions):
        assert getattr(options, field.name) != field.default, field.name

    tiny = load_config(REPO / "tests/configs/tiny.yaml")
    options = TrainingOptions.from_config(tiny)
    assert options.seed == tiny["seed"]
    assert all(getattr(options, name) == tiny["training"][name] for name in fields - {"seed"})
    assert (options.epochs, options.feature_batch_size) == (3, 256)


def test_lr_of_each_variant() -> None:
    """residual_* variants train at lr_residual, the adapters (and base) at lr_adapter."""
    options = TrainingOptions(lr_residual=0.7, lr_adapter=0.003)
    assert {name: options.lr(name) for name in sorted(VARIANTS)} == {
        "base": 0.003,
        "linear_adapter": 0.003,
        "residual_coarse": 0.7,
        "residual_fine": 0.7,
        "residual_full": 0.7,
        "spectral_adapter": 0.003,
    }


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_row_of_every_variant(inputs: dict[str, Any], variant: str) -> None:
    """The row holds the run's identity and conventions and the parameter count of the variant's
    module; base trains nothing and scores the classifier on the stored embeddings; the full
    spectral variants lose no energy; a second run is identical bit for bit."""
    row, best = run(inputs, variant)
    assert set(row) == ROW_KEYS
    assert (row["variant"], row["label"], row["classifier"]) == (variant, VARIANTS[variant].label, "text")
    assert (row["logits"], row["lambda_init"]) == ("raw", "randn")
    reference = UnitPCA.load(inputs["pca"])
    module = build_variant(variant, reference, OPTIONS.lambda_init, OPTIONS.seed)[1]
    assert row["trainable_parameters"] == trainable_parameters(module)
    assert 0.0 <= row["val_accuracy"] <= 1.0 and 0.0 <= row["test_accuracy"] <= 1.0
    if variant == "base":
        assert (row["trainable_parameters"], row["lr"], row["epochs_run"], row["best_epoch"], best) == (0, None, 0, 0, {})
        for split in ("test", "val"):
            expected = stored_accuracy(inputs["units"][split], inputs["classifier"])
            assert row[f"{split}_accuracy"] == pytest.approx(expected, abs=1e-12), split
    else:
        assert row["trainable_parameters"] > 0 and row["lr"] == OPTIONS.lr(variant)
        assert row["epochs_run"] == 2 and row["best_epoch"] in (1, 2)
        assert set(best) == {name for name, parameter in module.named_parameters() if parameter.requires_grad}
    if variant == "linear_adapter":
        assert row["trainable_parameters"] == 32 * 32 + 32
    if variant == "residual_coarse":
        assert row["trainable_parameters"] == 2 * 4  # one scalar per head: 2 layers x 4 heads
    if variant in ("residual_full", "residual_coarse"):
        assert row["energy_outside_basis"] < 1e-4
    again, best_again = run(inputs, variant)
    assert again == row
    assert best_again.keys() == best.keys()
    assert all(torch.equal(best_again[name], value) for name, value in best.items())


@pytest.mark.parametrize("logits", ["raw", "normalized"])
def test_base_scores_the_stored_classifier(inputs: dict[str, Any], logits: str) -> None:
    """base's accuracies are those of the classifier file on the stored embeddings (argmax is the
    same under either logit convention), and the row names the classifier's source."""
    row, _ = run(inputs, "base", dataclasses.replace(OPTIONS, logits=logits), classifier="means")
    assert (row["classifier"], row["logits"]) == ("class_means", logits)
    for split in ("test", "val"):
        expected = stored_accuracy(inputs["units"][split], inputs["means"])
        assert row[f"{split}_accuracy"] == pytest.approx(expected, abs=1e-12), split
    assert row["test_accuracy"] > 0.3  # well above chance (0.1): a wrong pairing of rows would show


def test_checkpoint_is_kept_and_resumed(inputs: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A run with a checkpoint leaves it on disk (the caller deletes it); a run stopped after one
    epoch and resumed to two equals the uninterrupted run, and so does a rerun from the final file."""
    checkpoint = tmp_path / "residual_full.safetensors"
    whole, whole_best = run(inputs, "residual_full")
    run(inputs, "residual_full", dataclasses.replace(OPTIONS, epochs=1), checkpoint)
    assert checkpoint.is_file()
    with caplog.at_level(logging.INFO, logger="residual.alignment.training"):
        resumed, resumed_best = run(inputs, "residual_full", OPTIONS, checkpoint)
    assert "resumed from" in caplog.text and "after epoch 1" in caplog.text
    assert resumed == whole and torch.equal(resumed_best["lambdas"], whole_best["lambdas"])
    assert checkpoint.is_file()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="residual.alignment.training"):
        rerun, _ = run(inputs, "residual_full", OPTIONS, checkpoint)
    assert "after epoch 2" in caplog.text and "epoch 3" not in caplog.text
    assert rerun == whole


def test_lr_range_test_sets_the_lr_of_trainable_variants(inputs: dict[str, Any]) -> None:
    """With lr_range_test the recorded lr is the range test's choice, not the configured one; base
    has no lr to choose and keeps lr None."""
    options = dataclasses.replace(OPTIONS, lr_range_test=True)
    row, _ = run(inputs, "residual_full", options)
    assert row["lr"] != OPTIONS.lr("residual_full") and 1e-3 <= row["lr"] <= 1.0
    assert run(inputs, "residual_full", options)[0] == row  # the choice is deterministic
    base, _ = run(inputs, "base", options)
    assert base["lr"] is None and base == run(inputs, "base")[0]


def test_saved_run_keeps_the_row_beside_its_parameters(inputs: dict[str, Any], tmp_path: Path) -> None:
    """The train rule's outputs: a one-row table, and the best parameters carrying that row."""
    import json

    import polars as pl
    from safetensors import safe_open

    from residual.alignment.run import save_run

    row, best = run(inputs, "residual_fine")
    row = {"model": "clip_tiny", "dataset": "digits", **row}
    save_run(row, best, tmp_path / "run.parquet", tmp_path / "run.safetensors")
    assert pl.read_parquet(tmp_path / "run.parquet").row(0, named=True) == row
    with safe_open(str(tmp_path / "run.safetensors"), framework="pt") as handle:
        assert json.loads(handle.metadata()["residual"]) == row
        assert torch.equal(handle.get_tensor("lambdas"), best["lambdas"])
