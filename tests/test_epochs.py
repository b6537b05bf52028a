"""The epoch loop shared by unit training and fine-tuning, on a toy problem (a linear classifier
of 3 Gaussian classes): resume after an interruption, early stopping, best-epoch restore,
divergence detection."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from residual.alignment.epochs import (
    Checkpoint,
    LoopSettings,
    Progress,
    TrainingDivergedError,
    epoch_batches,
    make_optimizer,
    run_epochs,
    trainable_state,
)

SAMPLES, FEATURES, CLASSES, BATCH, SEED = 96, 4, 3, 16, 0
# A resumed run repeats the uninterrupted run's operations in the same order on the same CPU;
# float32 rounding is the only slack allowed.
TOLERANCE = {"rtol": 1e-6, "atol": 1e-7}


class _Interrupted(Exception):
    pass


def toy() -> tuple[Tensor, Tensor]:
    """Inputs [SAMPLES, FEATURES] around one mean per class, and their labels [SAMPLES]."""
    generator = torch.Generator().manual_seed(SEED)
    labels = torch.arange(SAMPLES) % CLASSES
    means = 3 * torch.randn(CLASSES, FEATURES, generator=generator)
    return means[labels] + torch.randn(SAMPLES, FEATURES, generator=generator), labels


def fresh() -> nn.Linear:
    torch.manual_seed(SEED)
    return nn.Linear(FEATURES, CLASSES)


def fit(
    settings: LoopSettings,
    checkpoint: Path | None = None,
    validate: Callable[[nn.Module], float] | None = None,
    interrupt_at: int | None = None,
) -> tuple[nn.Linear, Progress, dict[str, Tensor]]:
    """Train a fresh model; validate(module) defaults to its accuracy on the inputs; interrupt_at:
    raise at the start of that epoch, as a killed job."""
    inputs, labels = toy()
    module = fresh()
    optimizer = make_optimizer(list(module.parameters()), settings.lr)

    def batches(epoch: int) -> Iterator[Tensor]:
        if epoch == interrupt_at:
            raise _Interrupted
        return epoch_batches(SAMPLES, BATCH, SEED, epoch)

    def loss(index: Tensor) -> tuple[Tensor, int]:
        return F.cross_entropy(module(inputs[index]), labels[index]), len(index)

    def accuracy() -> float:
        with torch.no_grad():
            return float((module(inputs).argmax(dim=-1) == labels).float().mean())

    file = None if checkpoint is None else Checkpoint(checkpoint, "toy digest", "toy/1", "toy")
    check = accuracy if validate is None else lambda: validate(module)
    progress, best = run_epochs(module, optimizer, batches, loss, check, settings, file)
    return module, progress, best


def scripted(accuracies: list[float]) -> Callable[[nn.Module], float]:
    """Val accuracies in this order, one per epoch; records each epoch's parameters."""
    seen: list[dict[str, Tensor]] = []

    def validate(module: nn.Module) -> float:
        seen.append(trainable_state(module))
        return accuracies[len(seen) - 1]

    validate.seen = seen  # type: ignore[attr-defined]
    return validate


def test_a_run_resumed_after_an_interruption_equals_an_uninterrupted_one(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = LoopSettings("toy", lr=0.05, epochs=6, patience=6)
    whole, whole_progress, whole_best = fit(settings)
    checkpoint = tmp_path / "toy.safetensors"
    with pytest.raises(_Interrupted):
        fit(settings, checkpoint, interrupt_at=4)
    with caplog.at_level(logging.INFO, logger="residual.alignment.epochs"):
        resumed, progress, best = fit(settings, checkpoint)
    assert "toy: resumed from" in caplog.text and "after epoch 3" in caplog.text
    assert [entry["epoch"] for entry in progress.history] == list(range(1, 7))
    assert (progress.best_epoch, progress.epochs_done) == (whole_progress.best_epoch, whole_progress.epochs_done)
    for mine, theirs in zip(progress.history, whole_progress.history, strict=True):
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=TOLERANCE["rtol"], abs=TOLERANCE["atol"])
        assert mine["val_accuracy"] == theirs["val_accuracy"]
    torch.testing.assert_close(best, whole_best, **TOLERANCE)
    torch.testing.assert_close(trainable_state(resumed), trainable_state(whole), **TOLERANCE)
    assert whole_progress.history[-1]["train_loss"] < whole_progress.history[0]["train_loss"]  # it learned something


def test_a_checkpoint_of_another_digest_is_not_resumed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    checkpoint = tmp_path / "toy.safetensors"
    fit(LoopSettings("toy", lr=0.05, epochs=2, patience=6), checkpoint)
    inputs, labels = toy()
    module = fresh()
    optimizer = make_optimizer(list(module.parameters()), 0.05)
    other = Checkpoint(checkpoint, "another digest", "toy/1", "toy")
    batches = lambda epoch: epoch_batches(SAMPLES, BATCH, SEED, epoch)  # noqa: E731
    loss = lambda index: (F.cross_entropy(module(inputs[index]), labels[index]), len(index))  # noqa: E731
    with caplog.at_level(logging.WARNING, logger="residual.alignment.epochs"):
        progress, _ = run_epochs(module, optimizer, batches, loss, lambda: 0.5, LoopSettings("toy", 0.05, 3, 6), other)
    assert "other settings or inputs" in caplog.text and progress.epochs_done == 3


def test_training_stops_after_patience_epochs_without_a_better_val_accuracy() -> None:
    validate = scripted([0.5, 0.7, 0.6, 0.7, 0.65, 0.9, 0.95])
    _, progress, _ = fit(LoopSettings("toy", lr=0.05, epochs=7, patience=3), validate=validate)
    # Epoch 2's 0.7 is the best (epoch 4 only ties it); epochs 3, 4 and 5 bring nothing: stop.
    assert (progress.epochs_done, progress.best_epoch, progress.best_val, progress.bad_epochs) == (5, 2, 0.7, 3)
    assert [entry["val_accuracy"] for entry in progress.history] == [0.5, 0.7, 0.6, 0.7, 0.65]


def test_the_module_ends_holding_the_best_epochs_parameters() -> None:
    validate = scripted([0.5, 0.9, 0.6, 0.7])
    module, progress, best = fit(LoopSettings("toy", lr=0.05, epochs=4, patience=4), validate=validate)
    epoch_two = validate.seen[1]  # type: ignore[attr-defined]
    assert progress.best_epoch == 2 and progress.epochs_done == 4
    torch.testing.assert_close(best, epoch_two, rtol=0, atol=0)  # a copy of the same tensors
    torch.testing.assert_close(trainable_state(module), epoch_two, rtol=0, atol=0)
    assert not torch.equal(validate.seen[3]["weight"], epoch_two["weight"])  # type: ignore[attr-defined]
    assert not module.training


@pytest.mark.parametrize(
    ("settings", "what"),
    [
        (LoopSettings("toy", lr=1e38, epochs=3, patience=3), "the loss is nan|a parameter became NaN or Inf"),
        (LoopSettings("toy", lr=1e38, epochs=3, patience=3, clip_norm=1.0), "the loss is nan|the gradient norm is|a parameter"),
    ],
)
def test_divergence_names_what_epoch_step_and_lr(settings: LoopSettings, what: str) -> None:
    with pytest.raises(TrainingDivergedError, match=rf"toy: training diverged at epoch \d+, step \d+ with lr 1e\+38: ({what})"):
        fit(settings)


def test_a_non_finite_loss_is_divergence() -> None:
    module = fresh()
    optimizer = make_optimizer(list(module.parameters()), 0.05)
    loss = lambda _: (module.weight.sum() * float("inf"), 1)  # noqa: E731
    with pytest.raises(TrainingDivergedError, match=r"epoch 1, step 1 .*the loss is (-?inf|nan).*lower the learning rate"):
        run_epochs(module, optimizer, lambda epoch: [0], loss, lambda: 0.0, LoopSettings("toy", 0.05, 2, 2))


def test_epochs_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="toy: epochs must be at least 1, got 0"):
        fit(LoopSettings("toy", lr=0.05, epochs=0, patience=3))
