"""One training run from stored files (METHOD section 9): the options taken from the config, the
table row of every variant, determinism, checkpoint resumption and the LR range test switch."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TINY_OPEN_CLIP
from safetensors.torch import load_file
from snakemake_runs import TINY, tiny_config

from residual.alignment.classifier import ClassWeights, build_classifier, class_means_from_units
from residual.alignment.options import ClassifierSpec, TrainingOptions
from residual.alignment.run import run_variant
from residual.alignment.variants import VARIANTS, build_variant, trainable_parameters
from residual.config.params import model_params, source_params
from residual.config.validate import SCHEMA, load_config, validate_config
from residual.spectral.pca import UnitPCA, fit_unit_file
from residual.units.store import read_units

ROW_KEYS = {
    "variant", "label", "classifier", "logits", "lambda_init", "lr", "trainable_parameters",
    "val_accuracy", "test_accuracy", "best_epoch", "epochs_run", "energy_outside_basis", "val_samples", "test_samples",
    "ln_constants", "published_code", "head_rank",
}  # fmt: skip
TRAINING = {
    "logits": "raw", "lambda_init": "randn", "lr_residual": 0.8, "lr_adapter": 1e-3, "lr_range_test": False,
    "batch_size": 64, "epochs": 2, "patience": 5, "published_code": False, "head_rank": "nonzero",
}  # fmt: skip


def options(variant: str, **changes: Any) -> TrainingOptions:
    """The tests' options of `variant` (the config's defaults but 2 epochs), with `changes`."""
    return dataclasses.replace(TrainingOptions.for_variant({"seed": 42, "training": TRAINING}, variant), **changes)
DIGITS = {"loader": "digits", "split": {"rule": "resplit", "val": 0.2, "test": 0.2, "subset": 150}}
TEXT_SPEC = ClassifierSpec(source_params(DIGITS), model_params(TINY_OPEN_CLIP), None)


@pytest.fixture(scope="module")
def inputs(digit_units: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What a training job reads: the digits' unit files, the reference PCA of their train split
    and the tiny CLIP's zero-shot text classifier of the digits ('classifier'); also a classifier of
    the normalised class means of the train embeddings ('means'), which scores well above chance."""
    folder = tmp_path_factory.mktemp("experiment")
    pca, classifier, means = (folder / f"{name}.safetensors" for name in ("pca", "classifier", "means"))
    fit_unit_file(digit_units["train"]).save(pca)
    build_classifier("clip_tiny", "digits", TEXT_SPEC).save(classifier)
    weights = class_means_from_units(digit_units["train"], 10, normalize=True)
    ClassWeights(weights, [str(digit) for digit in range(10)], "class_means", 100.0).save(means)
    return {"units": digit_units, "pca": pca, "classifier": classifier, "means": means}


def run(
    inputs: dict[str, Any],
    variant: str,
    settings: TrainingOptions | None = None,
    checkpoint: Path | None = None,
    classifier: str = "classifier",
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    settings = options(variant) if settings is None else settings
    return run_variant(variant, inputs["units"], inputs["pca"], inputs[classifier], settings, "cpu", checkpoint, feature_batch_size=64)


def stored_accuracy(units: Path, classifier: Path) -> float:
    """Accuracy of argmax(embedding @ W^T) on a unit file, from the files alone."""
    weights = load_file(str(classifier))["weights"]
    stored = read_units(units, units=[])
    return (stored.embedding @ weights.T).argmax(dim=1).eq(stored.labels).double().mean().item()


def test_options_take_every_training_key_and_the_run_seed() -> None:
    """for_variant reads each option from the validated `training` block (every one set here to a
    value other than the dataclass default) and the seed from the top level; the round trip through
    a rule's params gives the same options."""
    fields = {field.name for field in dataclasses.fields(TrainingOptions)}
    assert fields - {"seed", "lr"} <= set(SCHEMA["properties"]["training"]["properties"])
    config = tiny_config()
    changed = {
        "lambda_init": "ones", "logits": "normalized", "lr_residual": 0.5, "lr_adapter": 0.02, "lr_range_test": True,
        "batch_size": 16, "epochs": 4, "patience": 2, "published_code": True, "head_rank": "d_head",
    }  # fmt: skip
    config["training"].update(changed)
    config["seed"] = 7
    config = validate_config(config)
    options = TrainingOptions.for_variant(config, "residual_full")
    expected = {key: value for key, value in changed.items() if key not in ("lr_residual", "lr_adapter")}
    assert dataclasses.asdict(options) == {**expected, "lr": 0.5, "seed": 7}
    for field in dataclasses.fields(TrainingOptions):
        assert getattr(options, field.name) != field.default, field.name
    assert TrainingOptions(**options.params()) == options

    tiny = load_config(TINY)
    options = TrainingOptions.for_variant(tiny, "linear_adapter")
    assert options.seed == tiny["seed"] and options.lr == tiny["training"]["lr_adapter"]
    assert all(getattr(options, name) == tiny["training"][name] for name in fields - {"seed", "lr", "published_code", "head_rank"})
    assert options.published_code is None and options.head_rank is None  # conventions it does not depend on
    assert options.epochs == 3


def test_lr_of_each_variant() -> None:
    """residual_* variants train at lr_residual, the adapters at lr_adapter; base trains nothing, so
    of the training settings only the logit convention applies to it (no other key reruns it)."""
    config = {"seed": 42, "training": {**TRAINING, "lr_residual": 0.7, "lr_adapter": 0.003}}
    assert {name: TrainingOptions.for_variant(config, name).lr for name in sorted(VARIANTS)} == {
        "base": None,
        "linear_adapter": 0.003,
        "residual_coarse": 0.7,
        "residual_fine": 0.7,
        "residual_full": 0.7,
        "spectral_adapter": 0.003,
    }
    base = TrainingOptions.for_variant(config, "base").params()
    assert {key for key, value in base.items() if value is not None} == {"logits"}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_row_of_every_variant(inputs: dict[str, Any], variant: str) -> None:
    """The row holds the run's identity and conventions and the parameter count of the variant's
    module; base trains nothing and scores the classifier on the stored embeddings; the full
    spectral variants lose no energy; a second run is identical bit for bit."""
    row, best = run(inputs, variant)
    assert set(row) == ROW_KEYS
    assert (row["variant"], row["label"], row["classifier"]) == (variant, VARIANTS[variant].label, "text")
    assert (row["logits"], row["lambda_init"]) == ("raw", None if variant == "base" else "randn")  # base has no init
    reference = UnitPCA.load(inputs["pca"])
    module = build_variant(variant, reference, "randn", 42)[1]
    assert row["trainable_parameters"] == trainable_parameters(module)
    assert 0.0 <= row["val_accuracy"] <= 1.0 and 0.0 <= row["test_accuracy"] <= 1.0
    if variant == "base":
        assert (row["trainable_parameters"], row["lr"], row["epochs_run"], row["best_epoch"], best) == (0, None, 0, 0, {})
        for split in ("test", "val"):
            expected = stored_accuracy(inputs["units"][split], inputs["classifier"])
            assert row[f"{split}_accuracy"] == pytest.approx(expected, abs=1e-12), split
    else:
        assert row["trainable_parameters"] > 0 and row["lr"] == options(variant).lr
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
    row, _ = run(inputs, "base", options("base", logits=logits), classifier="means")
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
    run(inputs, "residual_full", options("residual_full", epochs=1), checkpoint)
    assert checkpoint.is_file()
    with caplog.at_level(logging.INFO, logger="residual.alignment.epochs"):
        resumed, resumed_best = run(inputs, "residual_full", checkpoint=checkpoint)
    assert "resumed from" in caplog.text and "after epoch 1" in caplog.text
    assert resumed == whole and torch.equal(resumed_best["lambdas"], whole_best["lambdas"])
    assert checkpoint.is_file()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="residual.alignment.epochs"):
        rerun, _ = run(inputs, "residual_full", checkpoint=checkpoint)
    assert "after epoch 2" in caplog.text and "epoch 3" not in caplog.text
    assert rerun == whole


def test_lr_range_test_sets_the_lr_of_trainable_variants(inputs: dict[str, Any]) -> None:
    """With lr_range_test the recorded lr is the range test's choice, not the configured one; base
    has no lr to choose and keeps lr None."""
    settings = options("residual_full", lr_range_test=True)
    row, _ = run(inputs, "residual_full", settings)
    assert row["lr"] != options("residual_full").lr and 1e-3 <= row["lr"] <= 1.0
    assert run(inputs, "residual_full", settings)[0] == row  # the choice is deterministic
    base, _ = run(inputs, "base", options("base", lr_range_test=True))
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
