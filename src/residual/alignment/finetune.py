"""The fine-tuning baseline (METHOD section 9): the whole vision tower trained end to end on the
images, through the same fixed classifier as the ResiDual variants.

Cross-entropy; Schedule-Free AdamW (betas 0.9/0.999, no weight decay, no warmup) at lr 1e-5 with
gradient clipping at norm 1.0; batch 128; at most 30 epochs, early stopping on val accuracy with
patience 5; the best epoch is tested. Train images go through the model's own train-time transform
(`LoadedModel.preprocess_train`), val and test through its eval transform. The tower is every
parameter the model's embedding depends on (`tower_parameters`): open_clip's `visual`, a timm ViT
without its unused classifier head, BLIP's vision model and `vision_proj`; the rest stays frozen.

The epoch loop is unit training's (`residual.alignment.epochs`): optimizer, train/eval mode
switching, the (seed, epoch) batch order, divergence check, early stopping, best-epoch restore and
the checkpoint (resumed only when its digest matches). Each train image's augmentation is drawn from a generator
seeded with (seed, epoch, row), so the images do not depend on the order, the DataLoader workers
or an interruption: on the CPU a resumed run equals an uninterrupted one bit for bit. On CUDA the
forward runs under bf16 autocast where the device supports it (`bf16`, float rounding only).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from residual.alignment.classifier import ZeroShotClassifier, load_classifier
from residual.alignment.epochs import Checkpoint, LoopSettings, epoch_batches, hash_tensors, make_optimizer, run_epochs
from residual.alignment.names import FINETUNE, LABEL
from residual.alignment.options import FinetuneOptions
from residual.alignment.training import TrainResult
from residual.config.errors import ConfigError
from residual.data.sequences import DatasetError, Source
from residual.data.splits import read_split, stratified_subset
from residual.models.loaded import LoadedModel
from residual.units.encode import SplitImages

FORMAT = "residual-finetune/1"
# Its version, FINETUNE_VERSION, is in residual.alignment.options: bump it with a change that changes the results it writes.


@dataclass(frozen=True)
class FinetuneRuntime:
    """How a run executes, which changes float rounding only (not rule params): bf16 autocast on
    CUDA devices that support it; images per evaluation forward; DataLoader worker processes."""

    bf16: bool = True
    eval_batch_size: int = 256
    workers: int = 0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FinetuneRuntime:
        finetune = config["finetune"]
        return cls(finetune["bf16"], finetune["eval_batch_size"], finetune["workers"])


@dataclass(frozen=True)
class FinetuneData:
    """A task dataset's images: train (train-time transform), val and test (eval transform); `key`
    names where they come from (dataset and source settings) for the checkpoint's digest."""

    train: SplitImages
    val: SplitImages
    test: SplitImages
    key: Mapping[str, Any]

    @classmethod
    def from_split(
        cls, model: LoadedModel, source: Source, split_path: str | Path, max_train_images: int | None, seed: int, key: Mapping[str, Any]
    ) -> FinetuneData:
        """The split table's rows as images; the train rows cut to a stratified, seeded subset of
        `max_train_images` (the demo's image budget)."""
        dataset = str(key.get("dataset", split_path))
        train = read_split(split_path, "train")
        try:
            train_rows = stratified_subset(train, max_train_images, seed, dataset)
        except DatasetError as error:  # the subset is this key's, not the split rule's
            classes = train["label"].n_unique()
            raise ConfigError(
                f"config: at `finetune.max_train_images`: a stratified draw of {max_train_images} of the {train.height} train "
                f"images of {dataset!r} must hold at least one image of each of its {classes} classes and leave one of each "
                f"out: give between {classes} and {train.height - classes}, or null for all of them"
            ) from error
        return cls(
            train=SplitImages(source, train_rows, model, train=True),
            val=SplitImages(source, read_split(split_path, "val"), model),
            test=SplitImages(source, read_split(split_path, "test"), model),
            key=dict(key),
        )


def tower_parameters(model: LoadedModel) -> list[str]:
    """Names of the parameters the model's embedding depends on (one probe forward and backward
    through `tower.encode`): the vision tower, whatever the library calls it."""
    named = list(model.module.named_parameters())
    probe = torch.zeros(1, 3, *model.input_size, device=model.device)
    with torch.enable_grad():
        for _, parameter in named:
            parameter.requires_grad_(True)
        grads = torch.autograd.grad(model.tower.encode(probe).sum(), [parameter for _, parameter in named], allow_unused=True)
    return [name for (name, _), grad in zip(named, grads) if grad is not None]


def finetune(
    model: LoadedModel,
    data: FinetuneData,
    classifier: ZeroShotClassifier,
    options: FinetuneOptions,
    runtime: FinetuneRuntime = FinetuneRuntime(),
    checkpoint: Path | None = None,
) -> TrainResult:
    """Fine-tune a freshly loaded model's tower (classifier on the model's device) and test its best
    epoch; every parameter outside the tower is frozen. checkpoint: resumed when it exists and
    matches, rewritten after every epoch. best_state holds the tower's parameters by name."""
    for split, images in (("train", data.train), ("val", data.val), ("test", data.test)):
        if not len(images):
            raise ValueError(f"{FINETUNE}: the {split} split has no images")
    module, device = model.module, model.device
    classifier.eval()
    tower = set(tower_parameters(model))
    for name, parameter in module.named_parameters():
        parameter.requires_grad_(name in tower)
    parameters = [parameter for parameter in module.parameters() if parameter.requires_grad]
    digest = _digest(model, classifier, options, data)
    optimizer = make_optimizer(parameters, options.lr)
    augmented = _Augmented(data.train, options.seed)

    def batches(epoch: int) -> DataLoader:
        augmented.epoch = epoch  # before the DataLoader is made: its workers copy the dataset
        order = [index.tolist() for index in epoch_batches(len(augmented), options.batch_size, options.seed, epoch)]
        return DataLoader(augmented, batch_sampler=order, num_workers=runtime.workers)

    def loss(batch: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, int]:
        images, labels, _ = batch
        with _autocast(device, runtime.bf16):
            embedding = model.tower.encode(images.to(device))
        return F.cross_entropy(classifier(embedding.float()), labels.to(device)), len(labels)

    progress, best_state = run_epochs(
        module,
        optimizer,
        batches,
        loss,
        lambda: image_accuracy(model, classifier, data.val, runtime),
        LoopSettings(FINETUNE, options.lr, options.epochs, options.patience, options.clip_norm),
        None if checkpoint is None else Checkpoint(Path(checkpoint), digest, FORMAT, FINETUNE),
    )
    return TrainResult(
        val_accuracy=progress.best_val,
        test_accuracy=image_accuracy(model, classifier, data.test, runtime),
        best_epoch=progress.best_epoch,
        epochs_run=progress.epochs_done,
        trainable_parameters=sum(parameter.numel() for parameter in parameters),
        history=progress.history,
        best_state=best_state,
    )


@torch.no_grad()
def image_accuracy(model: LoadedModel, classifier: ZeroShotClassifier, images: SplitImages, runtime: FinetuneRuntime) -> float:
    """Fraction of images whose largest logit is their label (model in its current mode)."""
    correct = 0
    for batch, labels, _ in DataLoader(images, batch_size=runtime.eval_batch_size, num_workers=runtime.workers):
        with _autocast(model.device, runtime.bf16):
            embedding = model.tower.encode(batch.to(model.device))
        correct += int((classifier(embedding.float()).argmax(dim=-1) == labels.to(model.device)).sum())
    return correct / len(images)


def run_finetune(
    model: LoadedModel,
    data: FinetuneData,
    classifier_path: str | Path,
    options: FinetuneOptions,
    runtime: FinetuneRuntime = FinetuneRuntime(),
    checkpoint: str | Path | None = None,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Fine-tune and test; the table row (the columns of a variant's row, plus `train_images`) and
    the best tower's parameters (CPU tensors, by their names in the library's model)."""
    classifier, header = load_classifier(classifier_path, options.logits)
    result = finetune(model, data, classifier.to(model.device), options, runtime, Path(checkpoint) if checkpoint else None)
    row = {
        "variant": FINETUNE,
        "label": LABEL,
        "classifier": header["source"],
        "logits": options.logits,
        "lambda_init": None,
        "lr": options.lr,
        "trainable_parameters": result.trainable_parameters,
        "val_accuracy": result.val_accuracy,
        "test_accuracy": result.test_accuracy,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "energy_outside_basis": None,
        "train_images": len(data.train),
    }
    return row, result.best_state


class _Augmented(Dataset):
    """The train images with each augmentation drawn from (seed, epoch, row); set `epoch` before
    each epoch's DataLoader is made (workers copy the dataset then)."""

    def __init__(self, images: SplitImages, seed: int) -> None:
        self.images, self.seed, self.epoch = images, seed, 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, row: int) -> tuple[Tensor, int, int]:
        with _seeded(self.seed, self.epoch, row):
            return self.images[row]


@contextmanager
def _seeded(*key: int) -> Iterator[None]:
    """torch's and Python's global generators (torchvision and timm transforms draw from them)
    seeded from `key`, and restored afterwards."""
    seed = int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0])
    state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            random.setstate(state)


def _autocast(device: torch.device, bf16: bool) -> torch.autocast:
    enabled = bf16 and device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def _digest(model: LoadedModel, classifier: ZeroShotClassifier, options: FinetuneOptions, data: FinetuneData) -> str:
    """Hash of everything a run depends on except `epochs` (a run may be extended): the options,
    the data's source and rows (sample ids and labels of each split), the model's initial state and
    the classifier. Images are named by their source and rows, not hashed."""
    hasher = hashlib.sha256(json.dumps({**asdict(options), "epochs": None}, sort_keys=True).encode())
    hasher.update(json.dumps(data.key, sort_keys=True, default=str).encode())
    hasher.update(f"{model.spec!r} {classifier.logits} {classifier.scale!r}".encode())
    for images in (data.train, data.val, data.test):
        hasher.update(np.asarray(images.sample_ids, dtype=np.int64).tobytes())
        hasher.update(np.asarray(images.labels, dtype=np.int64).tobytes())
    hash_tensors(hasher, [*model.module.state_dict().items(), ("classifier", classifier.weights)])
    return hasher.hexdigest()
