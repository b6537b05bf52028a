"""Training of the ResiDual variants on precomputed features (METHOD section 9).

Cross-entropy through a fixed zero-shot classifier; batch 64; the epoch loop of
`residual.alignment.epochs` (Schedule-Free AdamW, at most `epochs` epochs, early stopping on val
accuracy with `patience`, divergence check, resume); the best epoch is evaluated on test. `base`
trains nothing.

With raw logits the spectral variants train through `residual.alignment.logits.FoldedLogits`:
the classifier folded into their basis, the same loss up to float rounding at a fraction of the
cost per step.

Determinism: epoch e's batch order comes from a generator seeded with (seed, e), so a run resumed
from its checkpoint equals an uninterrupted one bit for bit on the CPU. The checkpoint's digest
covers the settings and inputs: a checkpoint of other settings or inputs is never resumed.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from residual.alignment.classifier import ZeroShotClassifier
from residual.alignment.epochs import (
    Checkpoint,
    LoopSettings,
    epoch_batches,
    hash_tensors,
    load_parameters,
    make_optimizer,
    run_epochs,
    set_mode,
    trainable_state,
)
from residual.alignment.features import Features
from residual.alignment.logits import LogitPath, logit_path
from residual.alignment.variants import trainable_parameters
from residual.units.guards import NonFiniteError

FORMAT = "residual-train/1"


@dataclass(frozen=True)
class TrainSettings:
    """variant: its name (for messages and the digest); lr: 0.8 for the residual variants, 1e-3 for
    the adapters in the authors' configs; seed: batch order; eval_batch_size only bounds memory."""

    variant: str
    lr: float
    seed: int
    epochs: int = 30
    patience: int = 5
    batch_size: int = 64
    eval_batch_size: int = 4096


@dataclass(frozen=True)
class TrainResult:
    """val_accuracy: the best epoch's; test_accuracy: of the best parameters; best_epoch and
    epochs_run count from 1 (0 for `base`); history: per epoch {epoch, train_loss, val_accuracy};
    best_state: the best parameters by name (CPU tensors, empty for `base`)."""

    val_accuracy: float
    test_accuracy: float
    best_epoch: int
    epochs_run: int
    trainable_parameters: int
    history: list[dict[str, float | int]]
    best_state: dict[str, Tensor] = field(repr=False)


def train(
    module: nn.Module,
    features_train: Features,
    features_val: Features,
    features_test: Features,
    classifier: ZeroShotClassifier,
    settings: TrainSettings,
    checkpoint: Path | None = None,
) -> TrainResult:
    """Train a freshly built module (features, module and classifier on one device) and test its
    best epoch. checkpoint: resumed when it exists and matches, rewritten after every epoch."""
    for split, features in (("train", features_train), ("val", features_val), ("test", features_test)):
        if not len(features):
            raise ValueError(f"{settings.variant}: the {split} split has no samples")
        _check_finite(features, split, settings.variant)
    classifier.eval()
    parameters = [parameter for parameter in module.parameters() if parameter.requires_grad]
    count = trainable_parameters(module)
    if not parameters:
        module.eval()
        val = accuracy(module, classifier, features_val, settings.eval_batch_size)
        test = accuracy(module, classifier, features_test, settings.eval_batch_size)
        return TrainResult(val, test, 0, 0, 0, [], {})
    optimizer = make_optimizer(parameters, settings.lr)
    path = logit_path(module, classifier)
    train_split, val_split = path.prepare(features_train), path.prepare(features_val)
    digest = _digest(module, classifier, settings, (features_train, features_val, features_test))

    def batches(epoch: int) -> Iterator[Tensor]:
        return epoch_batches(len(features_train), settings.batch_size, settings.seed, epoch)

    def loss(index: Tensor) -> tuple[Tensor, int]:
        batch = train_split.select(index.to(train_split.labels.device))
        return F.cross_entropy(path(batch), batch.labels), len(index)

    progress, best_state = run_epochs(
        module,
        optimizer,
        batches,
        loss,
        lambda: _accuracy(path, val_split, settings.eval_batch_size),
        LoopSettings(settings.variant, settings.lr, settings.epochs, settings.patience),
        None if checkpoint is None else Checkpoint(Path(checkpoint), digest, FORMAT, "train"),
    )
    test = _accuracy(path, path.prepare(features_test), settings.eval_batch_size)
    return TrainResult(
        val_accuracy=progress.best_val,
        test_accuracy=test,
        best_epoch=progress.best_epoch,
        epochs_run=progress.epochs_done,
        trainable_parameters=count,
        history=progress.history,
        best_state=best_state,
    )


def accuracy(module: nn.Module, classifier: ZeroShotClassifier, features: Features, batch_size: int) -> float:
    """Fraction of samples whose largest logit is their label (module in its current mode)."""
    return _accuracy(LogitPath(module, classifier), features, batch_size)


@torch.no_grad()
def _accuracy(path: LogitPath, features: Features, batch_size: int) -> float:
    """`accuracy` through a logit path, on features it prepared."""
    correct = 0
    for start in range(0, len(features), batch_size):
        index = torch.arange(start, min(start + batch_size, len(features)), device=features.labels.device)
        batch = features.select(index)
        correct += int((path(batch).argmax(dim=-1) == batch.labels).sum())
    return correct / len(features)


def lr_range_test(
    module: nn.Module,
    features: Features,
    classifier: ZeroShotClassifier,
    settings: TrainSettings,
    min_lr: float = 1e-3,
    max_lr: float = 1.0,
    steps: int = 50,
) -> float:
    """Smith's LR range test, as Lightning's `lr_find` that the authors' code could switch on
    (min_lr 1e-3, 50 steps there; max_lr Lightning's default): lr grows exponentially from min_lr
    to max_lr over `steps` training steps; stop when the smoothed loss exceeds 4x its minimum;
    suggest the lr at the steepest descent of the smoothed loss (skipping the first 10 points and
    the last). The module's parameters are restored afterwards."""
    parameters = [parameter for parameter in module.parameters() if parameter.requires_grad]
    if not parameters:
        raise ValueError(f"{settings.variant} has no trainable parameters: there is no lr to choose")
    saved = trainable_state(module)
    optimizer = make_optimizer(parameters, min_lr)
    set_mode(module, optimizer, training=True)
    lrs, losses, smoothed = [], [], 0.0
    samples, size, seed = len(features), settings.batch_size, settings.seed
    order = (index for epoch in range(1, steps + 1) for index in epoch_batches(samples, size, seed, epoch))
    for step, index in zip(range(steps), order):
        lr = min_lr * (max_lr / min_lr) ** (step / max(steps - 1, 1))
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = features.select(index.to(features.labels.device))
        loss = F.cross_entropy(classifier(module(batch)), batch.labels)
        if not math.isfinite(float(loss.detach())):
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        smoothed = 0.98 * smoothed + 0.02 * float(loss.detach())
        lrs.append(lr)
        losses.append(smoothed / (1 - 0.98 ** (step + 1)))
        if losses[-1] > 4 * min(losses):
            break
    set_mode(module, optimizer, training=False)
    load_parameters(module, saved)
    if len(losses) < 13:
        raise ValueError(
            f"{settings.variant}: the lr range test diverged after {len(losses)} steps "
            f"(lr {lrs[-1] if lrs else min_lr:g}); "
            "lower min_lr or raise steps"
        )
    slopes = np.gradient(np.array(losses[10:-1]))
    return lrs[10 + int(np.argmin(slopes))]


def _check_finite(features: Features, split: str, variant: str) -> None:
    for name in ("coords", "rest", "embedding"):
        # NaN and Inf survive a sum and float64 cannot overflow here; no n x K mask is allocated.
        if not math.isfinite(float(getattr(features, name).sum(dtype=torch.float64))):
            raise NonFiniteError(
                f"{variant}: the {split} features ({name}) hold NaN or Inf before training: "
                "the unit file or the PCA they come from is broken; rerun the rules that produce them"
            )


def _digest(
    module: nn.Module, classifier: ZeroShotClassifier, settings: TrainSettings, splits: tuple[Features, ...]
) -> str:
    """Hash of everything a run depends on except `epochs` (a run may be extended): the settings,
    the module's initial parameters and buffers, the classifier, and a fingerprint of each split
    (shapes, labels, float64 sums and position-weighted sums of every tensor, 10 digits)."""
    hasher = hashlib.sha256(json.dumps({**asdict(settings), "epochs": None}, sort_keys=True).encode())
    hasher.update(f"{type(module).__name__} {classifier.logits} {classifier.scale!r}".encode())
    hash_tensors(hasher, [*module.state_dict().items(), ("classifier", classifier.weights)])
    for features in splits:
        hasher.update(features.labels.cpu().numpy().astype(np.int64).tobytes())
        for tensor in (features.coords, features.rest, features.embedding):
            rows = tensor.sum(dim=1, dtype=torch.float64)
            weights = torch.arange(1, len(rows) + 1, dtype=torch.float64, device=rows.device)
            hasher.update(f"{tuple(tensor.shape)} {float(rows.sum()):.10e} {float(rows @ weights):.10e}".encode())
    return hasher.hexdigest()
