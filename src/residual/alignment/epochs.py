"""The epoch loop shared by unit training (`residual.alignment.training`) and fine-tuning
(`residual.alignment.finetune`): resume from a checkpoint, train an epoch, check for divergence,
validate, keep the best epoch, stop early, and restore the best epoch's parameters at the end.

The optimizer is Schedule-Free AdamW (betas 0.9/0.999, no weight decay, no warmup), whose
train/eval mode is switched with the module's: in eval mode the parameters hold the averaged
iterate that is validated, checkpointed and kept as the best. The best epoch is the first one on
ties (as Lightning's ModelCheckpoint with `mode="max"`); training stops after `epochs` epochs or
after `patience` epochs without a better val accuracy.

The checkpoint (safetensors, written atomically after every epoch) holds the trainable parameters,
the optimizer state and the best parameters, plus a digest of whatever the caller says the run
depends on: a checkpoint of another digest or format is ignored with a warning, never resumed.
Epoch e's batch order comes from (seed, e) (`epoch_batches`), so when the caller's batches depend
on nothing else, a resumed run repeats the uninterrupted one's operations in the same order.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from schedulefree import AdamWScheduleFree
from torch import Tensor, nn

from residual.io.tensors import TensorFileError, open_tensors, save_tensors

log = logging.getLogger(__name__)

BETAS = (0.9, 0.999)

Batch = TypeVar("Batch")


class TrainingDivergedError(RuntimeError):
    """The loss, the gradient norm or a parameter became NaN or Inf during training. Not a
    `NonFiniteError`: that one means the stored data are broken, this one that the optimisation
    ran away (the lr is too high)."""


@dataclass(frozen=True)
class LoopSettings:
    """name: what is trained (messages, logs); lr: the optimizer's, quoted when training diverges;
    epochs: at most this many; patience: stop after this many epochs without a better val accuracy;
    clip_norm: the gradients' total norm is clipped to it (None: no clipping)."""

    name: str
    lr: float
    epochs: int
    patience: int
    clip_norm: float | None = None


@dataclass(frozen=True)
class Checkpoint:
    """Where the loop's state is written after every epoch and resumed from. digest: a hash of
    everything the run depends on; format: the file's kind (one per caller); rule: the rule
    named in messages about the file."""

    path: Path
    digest: str
    format: str
    rule: str


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


def run_epochs(
    module: nn.Module,
    optimizer: AdamWScheduleFree,
    batches: Callable[[int], Iterable[Batch]],
    loss: Callable[[Batch], tuple[Tensor, int]],
    validate: Callable[[], float],
    settings: LoopSettings,
    checkpoint: Checkpoint | None = None,
) -> tuple[Progress, dict[str, Tensor]]:
    """Train `module`'s parameters in `optimizer` epoch by epoch and leave it in eval mode holding
    the best epoch's parameters. batches(epoch) gives an epoch's batches (epochs count from 1);
    loss(batch) its mean loss (a scalar tensor) and sample count; validate() the val accuracy of
    the module as it is (called in eval mode). Returns the progress (history, best epoch) and the
    best parameters (`trainable_state`)."""
    if settings.epochs < 1:
        raise ValueError(f"{settings.name}: epochs must be at least 1, got {settings.epochs}")
    parameters = [parameter for group in optimizer.param_groups for parameter in group["params"]]
    progress, best_state = Progress(), trainable_state(module)
    if checkpoint is not None and checkpoint.path.is_file():
        restored = load_checkpoint(checkpoint, module, optimizer)
        if restored is not None:
            progress, best_state = restored
            log.info("%s: resumed from %s after epoch %d", settings.name, checkpoint.path, progress.epochs_done)
    while progress.epochs_done < settings.epochs and progress.bad_epochs < settings.patience:
        epoch = progress.epochs_done + 1
        set_mode(module, optimizer, training=True)
        total, seen = 0.0, 0
        for step, batch in enumerate(batches(epoch), 1):
            value, count = _step(loss(batch), parameters, optimizer, settings, epoch, step)
            total, seen = total + value * count, seen + count
        set_mode(module, optimizer, training=False)
        val = validate()
        if progress.end_epoch(epoch, total / seen, val):
            best_state = trainable_state(module)
        log.info("%s epoch %d: train loss %.4f, val accuracy %.4f", settings.name, epoch, total / seen, val)
        if checkpoint is not None:
            save_checkpoint(checkpoint, module, optimizer, best_state, progress)
    set_mode(module, optimizer, training=False)
    load_parameters(module, best_state)
    return progress, best_state


def _step(
    loss_and_count: tuple[Tensor, int],
    parameters: list[Tensor],
    optimizer: AdamWScheduleFree,
    settings: LoopSettings,
    epoch: int,
    step: int,
) -> tuple[float, int]:
    """One optimizer step; the loss's value and the batch's sample count."""
    loss, count = loss_and_count
    value = float(loss.detach())
    if not math.isfinite(value):
        raise diverged(settings, epoch, step, f"the loss is {value}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if settings.clip_norm is not None:
        norm = float(torch.nn.utils.clip_grad_norm_(parameters, settings.clip_norm))
        if not math.isfinite(norm):
            raise diverged(settings, epoch, step, f"the gradient norm is {norm}")
    optimizer.step()
    # One device synchronisation for all parameters, not one each.
    if not bool(torch.stack([torch.isfinite(parameter).all() for parameter in parameters]).all()):
        raise diverged(settings, epoch, step, "a parameter became NaN or Inf after the optimizer step")
    return value, count


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


def diverged(settings: LoopSettings, epoch: int, step: int, what: str) -> TrainingDivergedError:
    return TrainingDivergedError(
        f"{settings.name}: training diverged at epoch {epoch}, step {step} with lr {settings.lr:g}: {what}; "
        f"lower the learning rate (e.g. {settings.lr / 10:g}) or choose one with lr_range_test"
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


def hash_tensors(hasher: Any, tensors: list[tuple[str, Tensor]]) -> None:
    """Feed each tensor's name and bytes to `hasher` (a hashlib object)."""
    for name, tensor in tensors:
        hasher.update(name.encode())
        hasher.update(tensor.detach().cpu().contiguous().numpy().tobytes())


def save_checkpoint(
    checkpoint: Checkpoint, module: nn.Module, optimizer: AdamWScheduleFree, best_state: dict[str, Tensor], progress: Progress
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
        "format": checkpoint.format,
        "digest": checkpoint.digest,
        "progress": asdict(progress),
        "param_groups": state["param_groups"],
        "optimizer_scalars": scalars,
    }
    save_tensors(checkpoint.path, tensors, header)


def load_checkpoint(
    checkpoint: Checkpoint, module: nn.Module, optimizer: AdamWScheduleFree
) -> tuple[Progress, dict[str, Tensor]] | None:
    """Restore module and optimizer from a checkpoint of the same format and digest; None (with a
    warning) if it is unreadable or of other settings or inputs, and then nothing is changed."""
    path = checkpoint.path
    try:
        with open_tensors(path, "training checkpoint", checkpoint.rule) as (handle, header):
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except TensorFileError as error:
        log.warning("ignoring checkpoint %s: %s; training from scratch", path, error)
        return None
    if header.get("format") != checkpoint.format or header.get("digest") != checkpoint.digest:
        log.warning(
            "ignoring checkpoint %s: it was written with other settings or inputs (digest %s, this run %s); "
            "training from scratch and replacing it",
            path,
            header.get("digest"),
            checkpoint.digest,
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
