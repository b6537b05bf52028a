"""The training loop (METHOD section 9): learning, early stopping, testing the best epoch,
bit-exact determinism and resumption, refused checkpoints, divergence guard, LR range test."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from test_adapters import reference_of, toy_units

from residual.alignment.classifier import ZeroShotClassifier, class_mean_classifier
from residual.alignment.epochs import TrainingDivergedError
from residual.alignment.features import Features
from residual.alignment.training import (
    TrainResult,
    TrainSettings,
    accuracy,
    lr_range_test,
    train,
)
from residual.alignment.variants import build_variant
from residual.units.guards import NonFiniteError

REFERENCE = reference_of(toy_units(200, seed=0))
SIGNAL = 2.5  # head_1_1 carries the class, drowned in the other units' variance


def setup(variant: str, init: str = "ones") -> tuple[torch.nn.Module, list[Features], ZeroShotClassifier]:
    """A fresh module, its train/val/test features (200 samples, 3 classes each) and a class-mean
    classifier of the train embeddings."""
    plan, module = build_variant(variant, REFERENCE, init=init, seed=0)
    splits = [plan.features(toy_units(200, seed=seed, signal=SIGNAL), "cpu") for seed in (1, 2, 3)]
    weights = class_mean_classifier(splits[0].embedding, splits[0].labels, 3)
    return module, splits, ZeroShotClassifier(weights)


def run(variant: str, lr: float, checkpoint: Path | None = None, init: str = "ones", **settings: int) -> TrainResult:
    module, (train_split, val, test), classifier = setup(variant, init)
    return train(module, train_split, val, test, classifier, TrainSettings(variant, lr, seed=0, **settings), checkpoint)


def assert_same(first: TrainResult, second: TrainResult) -> None:
    """Bit for bit: accuracies, epochs, history (losses as floats) and best parameters."""
    for field in ("val_accuracy", "test_accuracy", "best_epoch", "epochs_run", "trainable_parameters", "history"):
        assert getattr(first, field) == getattr(second, field), field
    assert first.best_state.keys() == second.best_state.keys()
    for name, value in first.best_state.items():
        assert torch.equal(value, second.best_state[name]), name


def parameters_in(checkpoint: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(checkpoint), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys() if key.startswith("module/")}


def test_training_beats_zero_shot_and_tests_the_best_epoch() -> None:
    module, (train_split, val, test), classifier = setup("residual_fine")
    zero_shot = accuracy(build_variant("base", REFERENCE, "ones", 0)[1], classifier, test, 512)
    result = train(module, train_split, val, test, classifier, TrainSettings("residual_fine", 0.8, seed=0))
    assert result.test_accuracy > zero_shot + 0.1
    assert result.trainable_parameters == int(REFERENCE.k(0.9)[3:7].sum())
    accuracies = [entry["val_accuracy"] for entry in result.history]
    assert [entry["epoch"] for entry in result.history] == list(range(1, result.epochs_run + 1))
    assert result.val_accuracy == max(accuracies) and result.best_epoch == accuracies.index(max(accuracies)) + 1
    # The module ends holding the best parameters, and those give the reported accuracies.
    fresh = build_variant("residual_fine", REFERENCE, "ones", 0)[1]
    fresh.load_state_dict({**fresh.state_dict(), **result.best_state})
    fresh.eval()
    assert accuracy(fresh, classifier, test, 7) == result.test_accuracy
    assert accuracy(fresh, classifier, val, 7) == result.val_accuracy
    assert torch.equal(module.lambdas.detach(), result.best_state["lambdas"])


def test_early_stopping_after_patience() -> None:
    frozen = run("residual_coarse", lr=0.0, patience=5)  # lr 0: val accuracy never improves on epoch 1
    assert frozen.best_epoch == 1 and frozen.epochs_run == 6
    stopped = run("residual_full", lr=0.8, patience=2)
    accuracies = [entry["val_accuracy"] for entry in stopped.history]
    assert stopped.epochs_run < 30 and stopped.epochs_run == stopped.best_epoch + 2
    assert all(value <= stopped.val_accuracy for value in accuracies[stopped.best_epoch :])


def test_base_trains_nothing() -> None:
    module, (_, val, test), classifier = setup("base")
    result = run("base", lr=0.8)
    assert (result.epochs_run, result.trainable_parameters, result.history, result.best_state) == (0, 0, [], {})
    assert result.test_accuracy == accuracy(module, classifier, test, 64)


def test_two_runs_are_bit_identical() -> None:
    assert_same(run("residual_full", 0.8, init="randn", epochs=6), run("residual_full", 0.8, init="randn", epochs=6))


def test_resumed_run_equals_uninterrupted_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    whole = run("residual_full", 0.8, tmp_path / "whole.safetensors", init="randn", epochs=7, patience=30)
    run("residual_full", 0.8, tmp_path / "parts.safetensors", init="randn", epochs=2, patience=30)
    with caplog.at_level(logging.INFO, logger="residual.alignment.epochs"):
        resumed = run("residual_full", 0.8, tmp_path / "parts.safetensors", init="randn", epochs=7, patience=30)
    assert "resumed from" in caplog.text and "after epoch 2" in caplog.text
    assert resumed.epochs_run == 7
    assert_same(whole, resumed)
    final, final_resumed = parameters_in(tmp_path / "whole.safetensors"), parameters_in(tmp_path / "parts.safetensors")
    assert final.keys() == final_resumed.keys() == {"module/lambdas"}
    assert torch.equal(final["module/lambdas"], final_resumed["module/lambdas"])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["parts.safetensors", "whole.safetensors"]


def test_checkpoint_of_other_settings_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    checkpoint = tmp_path / "run.safetensors"
    run("residual_full", 0.8, checkpoint, epochs=2)
    with caplog.at_level(logging.WARNING, logger="residual.alignment.epochs"):
        changed = run("residual_full", 0.5, checkpoint, epochs=3)
    assert "other settings or inputs" in caplog.text
    assert_same(changed, run("residual_full", 0.5, epochs=3))
    checkpoint.write_bytes(b"not a safetensors file")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="residual.alignment.epochs"):
        assert_same(run("residual_full", 0.5, checkpoint, epochs=3), changed)
    assert "unreadable" in caplog.text


def test_divergence_raises_naming_variant_epoch_step_and_lr() -> None:
    with pytest.raises(TrainingDivergedError, match=r"residual_full: .*epoch 1, step \d+ with lr 1e\+38.*lower the learning rate"):
        run("residual_full", lr=1e38, epochs=3)


def test_non_finite_features_are_refused_before_training() -> None:
    module, (train_split, val, test), classifier = setup("residual_fine")
    coords = train_split.coords.clone()
    coords[5, 0] = float("nan")
    broken = dataclasses.replace(train_split, coords=coords)
    with pytest.raises(NonFiniteError, match="residual_fine: the train features"):
        train(module, broken, val, test, classifier, TrainSettings("residual_fine", 0.8, seed=0))


def test_lr_range_test_suggests_a_rate_and_restores_the_module() -> None:
    module, (train_split, _, _), classifier = setup("residual_full", init="randn")
    before = module.lambdas.detach().clone()
    settings = TrainSettings("residual_full", 0.8, seed=0)
    suggested = lr_range_test(module, train_split, classifier, settings)
    assert 1e-3 <= suggested <= 1.0
    assert torch.equal(module.lambdas.detach(), before)
    assert lr_range_test(module, train_split, classifier, settings) == suggested
    with pytest.raises(ValueError, match="no trainable parameters"):
        lr_range_test(setup("base")[0], train_split, classifier, settings)
