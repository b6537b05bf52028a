"""Training of the ResiDual variants on precomputed features (METHOD section 9).

Cross-entropy through a fixed zero-shot classifier; Schedule-Free AdamW (betas 0.9/0.999, no
weight decay, no warmup), whose train/eval mode is switched with the module's (in eval mode the
parameters hold the averaged iterate x that is evaluated and saved); batch 64; at most `epochs`
epochs; early stopping on val accuracy with `patience`; the best epoch (first one on ties, as
Lightning's ModelCheckpoint with `mode="max"`) is evaluated on test. `base` trains nothing.

With raw logits the spectral variants train through `residual.alignment.logits.FoldedLogits`:
the classifier folded into their basis, the same loss up to float rounding at a fraction of the
cost per step.

Determinism: epoch e's batch order comes from a generator seeded with (seed, e), so a run resumed
from its checkpoint equals an uninterrupted one bit for bit on the CPU. The checkpoint
(safetensors, written atomically after every epoch) holds the parameters, the optimizer state and
the best parameters, plus a digest of the settings and inputs: a checkpoint of other settings or
inputs is ignored with a warning, never resumed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from schedulefree import AdamWScheduleFree
from torch import Tensor, nn

from residual.alignment.classifier import ZeroShotClassifier
from residual.alignment.features import Features
from residual.alignment.logits import LogitPath, logit_path
from residual.alignment.variants import trainable_parameters
from residual.io.tensors import TensorFileError, open_tensors, save_tensors
from residual.units.guards import NonFiniteError

log = logging.getLogger(__name__)

FORMAT = "residual-train/1"
BETAS = (0.9, 0.999)


class TrainingDivergedError(RuntimeError):
    """The loss or a parameter became NaN or Inf during training. Not a `NonFiniteError`: that one
    means the stored data are broken, this one that the optimisation ran away (the lr is too high)."""


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


@dataclass
class Progress:
    """What a checkpoint restores besides tensors."""

    epochs_done: int = 0
    best_val: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, float | int]] = field(default_factory=list)

    def end_epoch(self, epoch: int, train_loss: float, val_accuracy: float) -> bool:
        """Record a finished epoch; True when its val accuracy is the best so far (the first one on
        ties), which resets the patience count."""
        self.history.append({"epoch": epoch, "train_loss": train_loss, "val_accuracy": val_accuracy})
        self.epochs_done = epoch
        if val_accuracy > self.best_val:
            self.best_val, self.best_epoch, self.bad_epochs = val_accuracy, epoch, 0
            return True
        self.bad_epochs += 1
        return False


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
    if settings.epochs < 1:
        raise ValueError(f"{settings.variant}: epochs must be at least 1, got {settings.epochs}")
    optimizer = make_optimizer(parameters, settings.lr)
    path = logit_path(module, classifier)
    train_split, val_split = path.prepare(features_train), path.prepare(features_val)
    digest = _digest(module, classifier, settings, (features_train, features_val, features_test))
    progress, best_state = Progress(), trainable_state(module)
    if checkpoint is not None and Path(checkpoint).is_file():
        restored = load_checkpoint(Path(checkpoint), digest, module, optimizer)
        if restored is not None:
            progress, best_state = restored
            log.info("%s: resumed from %s after epoch %d", settings.variant, checkpoint, progress.epochs_done)
    while progress.epochs_done < settings.epochs and progress.bad_epochs < settings.patience:
        epoch = progress.epochs_done + 1
        set_mode(module, optimizer, training=True)
        total, seen = 0.0, 0
        for step, index in enumerate(epoch_batches(len(features_train), settings.batch_size, settings.seed, epoch), 1):
            batch = train_split.select(index.to(train_split.labels.device))
            loss = F.cross_entropy(path(batch), batch.labels)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise diverged(settings, epoch, step, f"the loss is {value}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if not all(bool(torch.isfinite(parameter).all()) for parameter in parameters):
                raise diverged(settings, epoch, step, "a parameter became NaN or Inf after the optimizer step")
            total, seen = total + value * len(index), seen + len(index)
        set_mode(module, optimizer, training=False)
        val = _accuracy(path, val_split, settings.eval_batch_size)
        if progress.end_epoch(epoch, total / seen, val):
            best_state = trainable_state(module)
        log.info("%s epoch %d: train loss %.4f, val accuracy %.4f", settings.variant, epoch, total / seen, val)
        if checkpoint is not None:
            save_checkpoint(Path(checkpoint), digest, module, optimizer, best_state, progress)
    set_mode(module, optimizer, training=False)
    load_parameters(module, best_state)
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


def make_optimizer(parameters: list[nn.Parameter], lr: float) -> AdamWScheduleFree:
    return AdamWScheduleFree(parameters, lr=lr, betas=BETAS, weight_decay=0.0, warmup_steps=0)


def set_mode(module: nn.Module, optimizer: AdamWScheduleFree, training: bool) -> None:
    """Schedule-free keeps two iterates: train mode puts y in the parameters, eval mode x."""
    module.train(training)
    if training:
        optimizer.train()
    else:
        optimizer.eval()


def epoch_batches(samples: int, batch_size: int, seed: int, epoch: int) -> Iterator[Tensor]:
    """Index batches [<= batch_size] of one epoch, in an order fixed by (seed, epoch)."""
    state = np.random.SeedSequence((seed, epoch)).generate_state(1, np.uint64)[0]
    generator = torch.Generator().manual_seed(int(state))
    order = torch.randperm(samples, generator=generator)
    yield from order.split(batch_size)


def diverged(settings: TrainSettings, epoch: int, step: int, what: str) -> TrainingDivergedError:
    return TrainingDivergedError(
        f"{settings.variant}: training diverged at epoch {epoch}, step {step} with lr {settings.lr:g}: {what}; "
        f"lower the learning rate (e.g. {settings.lr / 10:g}) or choose one with lr_range_test"
    )


def _check_finite(features: Features, split: str, variant: str) -> None:
    for name in ("coords", "rest", "embedding"):
        # NaN and Inf survive a sum and float64 cannot overflow here; no n x K mask is allocated.
        if not math.isfinite(float(getattr(features, name).sum(dtype=torch.float64))):
            raise NonFiniteError(
                f"{variant}: the {split} features ({name}) hold NaN or Inf before training: "
                "the unit file or the PCA they come from is broken; rerun the rules that produce them"
            )


def trainable_state(module: nn.Module) -> dict[str, Tensor]:
    """The trainable parameters by name, as CPU copies (frozen ones are fixed by the inputs)."""
    return {name: parameter.detach().cpu().clone() for name, parameter in module.named_parameters() if parameter.requires_grad}


@torch.no_grad()
def load_parameters(module: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy `state` (a `trainable_state`) into the module's parameters of the same names."""
    for name, parameter in module.named_parameters():
        if name in state:
            parameter.copy_(state[name])


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


def hash_tensors(hasher: Any, tensors: list[tuple[str, Tensor]]) -> None:
    """Feed each tensor's name and bytes to `hasher` (a hashlib object)."""
    for name, tensor in tensors:
        hasher.update(name.encode())
        hasher.update(tensor.detach().cpu().contiguous().numpy().tobytes())


def save_checkpoint(
    path: Path,
    digest: str,
    module: nn.Module,
    optimizer: AdamWScheduleFree,
    best_state: dict[str, Tensor],
    progress: Progress,
    format: str = FORMAT,
) -> None:
    """Trainable parameters, optimizer state and best parameters as safetensors; everything else
    as JSON in its header. Called in eval mode, as schedule-free requires for saving."""
    state = optimizer.state_dict()
    tensors = {f"module/{name}": value for name, value in trainable_state(module).items()}
    tensors.update({f"best/{name}": value for name, value in best_state.items()})
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"optimizer/{index}/{key}"] = value.detach().cpu()
            else:
                scalars.setdefault(str(index), {})[key] = value
    header = {
        "format": format,
        "digest": digest,
        "progress": asdict(progress),
        "param_groups": state["param_groups"],
        "optimizer_scalars": scalars,
    }
    save_tensors(path, tensors, header)


def load_checkpoint(
    path: Path, digest: str, module: nn.Module, optimizer: AdamWScheduleFree, format: str = FORMAT, rule: str = "train"
) -> tuple[Progress, dict[str, Tensor]] | None:
    """Restore module and optimizer from a matching checkpoint of `format`; None (with a warning)
    if it is unreadable or of other settings or inputs, and then nothing is changed."""
    try:
        with open_tensors(path, "training checkpoint", rule) as (handle, header):
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except TensorFileError as error:
        log.warning("ignoring checkpoint %s: %s; training from scratch", path, error)
        return None
    if header.get("format") != format or header.get("digest") != digest:
        log.warning(
            "ignoring checkpoint %s: it was written with other settings or inputs (digest %s, this run %s); "
            "training from scratch and replacing it",
            path,
            header.get("digest"),
            digest,
        )
        return None
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, index, name = key.split("/", 2)
            state.setdefault(int(index), {})[name] = value
    for index, entry in header["optimizer_scalars"].items():
        state.setdefault(int(index), {}).update(entry)
    optimizer.load_state_dict({"state": state, "param_groups": header["param_groups"]})
    load_parameters(module, _prefixed(tensors, "module/"))
    return Progress(**header["progress"]), _prefixed(tensors, "best/")


def _prefixed(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}
