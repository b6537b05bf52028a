"""The folded logit path (classifier folded into the basis) against the general path."""

from __future__ import annotations

import pytest
import torch
from test_train import REFERENCE, setup

from residual.alignment.classifier import ZeroShotClassifier
from residual.alignment.logits import FoldedLogits, LogitPath, logit_path
from residual.alignment.training import TrainSettings, train
from residual.alignment.variants import SpectralReweighting, UnitScaling, build_variant


class GeneralReweighting(SpectralReweighting):
    """The same module, but not the exact type `logit_path` folds: it trains on the general path."""


class GeneralScaling(UnitScaling):
    """As GeneralReweighting, for residual_coarse."""


GENERAL = {"residual_full": GeneralReweighting, "residual_fine": GeneralReweighting, "residual_coarse": GeneralScaling}


@pytest.mark.parametrize("variant", ["residual_full", "residual_fine", "residual_coarse"])
def test_folded_training_equals_the_general_path(variant: str) -> None:
    """Same lambdas, losses and accuracies to 1e-5: the fold only reorders float32 sums."""
    module, (train_split, val, test), classifier = setup(variant, init="randn")
    general = GENERAL[variant](build_variant(variant, REFERENCE, "randn", 0)[0], "randn", 0)  # same seed, same lambdas
    assert torch.equal(general.lambdas, module.lambdas)
    assert isinstance(logit_path(module, classifier), FoldedLogits)
    assert type(logit_path(general, classifier)) is LogitPath
    settings = TrainSettings(variant, 0.8, seed=0, epochs=6, patience=30)
    folded = train(module, train_split, val, test, classifier, settings)
    reference = train(general, train_split, val, test, classifier, settings)
    assert [entry["val_accuracy"] for entry in folded.history] == [entry["val_accuracy"] for entry in reference.history]
    assert folded.test_accuracy == reference.test_accuracy
    losses = torch.tensor([[entry["train_loss"] for entry in result.history] for result in (folded, reference)])
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(folded.best_state["lambdas"], reference.best_state["lambdas"], rtol=1e-5, atol=1e-5)


def test_folded_logits_equal_the_classifier_on_a_batch() -> None:
    module, (train_split, _, _), classifier = setup("residual_full", init="randn")
    folded = logit_path(module, classifier)
    expected = classifier(module(train_split))
    # float32 sums in another order (and the constants formed in float64)
    torch.testing.assert_close(folded(folded.prepare(train_split)), expected, rtol=1e-5, atol=1e-5)


def test_normalised_logits_take_the_general_path() -> None:
    module, _, classifier = setup("residual_full")
    normalised = ZeroShotClassifier(classifier.weights, logits="normalized")
    assert type(logit_path(module, normalised)) is LogitPath
