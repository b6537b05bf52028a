"""A small CLIP trained from scratch on the planted-attribute world, so that the pipeline has a model
with learned structure whose truth it knows (no pretrained weights can be fetched offline).

open_clip builds the model from the entry's `arch` and `kwargs` (e.g. a 6-layer, 8-head ViT on
32 px images and a small text tower), seeded like every random init (`load_model`). It is trained
with open_clip's contrastive loss (`ClipLoss`) on the image-caption pairs of the world's
pretraining stream (`residual.data.world.pretrain_pairs`), which no task dataset contains. AdamW
(no weight decay on gains, biases, embeddings and the logit scale, as open_clip's trainer), linear
warmup then cosine decay, a seeded batch order; images go through the model's own normalisation.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from open_clip.loss import ClipLoss
from torch import Tensor, nn

from residual.config.params import RuleParams
from residual.data.world import ATTRIBUTES, NAMES, pretrain_pairs
from residual.io.tensors import save_tensors
from residual.models.loaded import LoadedModel, load_model
from residual.models.versions import PRETRAIN_VERSION

log = logging.getLogger(__name__)

# Its version, PRETRAIN_VERSION, is in residual.models.versions: bump it there when a change to this module changes the weights it writes.


@dataclass(frozen=True)
class PretrainOptions(RuleParams):
    """The settings the weights depend on: a model entry's `pretrain` (see the schema) and its seed."""

    seed: int
    images: int = 20000
    epochs: int = 6
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 50
    group_by: tuple[str, ...] = ("colour", "background")
    group_size: int = 16

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> PretrainOptions:
        settings = dict(spec["pretrain"])
        return cls(seed=int(spec["seed"]), **{**settings, "group_by": tuple(settings.get("group_by", cls.group_by))})

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.images // self.batch_size)


@dataclass(frozen=True)
class PretrainResult:
    """history: one row per epoch (epoch, mean loss, seconds, samples/s); samples_per_second over the run."""

    history: list[dict[str, float]]
    samples_per_second: float


def world_batches(model: LoadedModel, options: PretrainOptions) -> tuple[Tensor, Tensor, Tensor]:
    """The pretraining pairs as model inputs: images [n, 3, 32, 32] normalised as the model's eval
    transform does, tokens [n, context_length], and each pair's group key [n] (its values of
    `options.group_by`, as one integer)."""
    images, captions, attributes = pretrain_pairs(options.images, options.seed)
    keys = np.zeros(len(attributes), dtype=np.int64)
    for name in options.group_by:
        keys = keys * len(ATTRIBUTES[name]) + attributes[:, NAMES.index(name)]
    config = model.module.visual.preprocess_cfg
    mean = torch.tensor(config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(config["std"]).view(1, 3, 1, 1)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    if tuple(pixels.shape[-2:]) != tuple(model.input_size):
        raise ValueError(
            f"model {model.name!r} takes {model.input_size[0]} px images, the world renders {pixels.shape[-1]} px: "
            f"set its `kwargs.vision_cfg.image_size` to {pixels.shape[-1]}"
        )
    tokens = model.extras["tokenizer"](captions, context_length=model.module.context_length)
    return (pixels - mean) / std, tokens, torch.from_numpy(keys)


def epoch_order(keys: Tensor, group_size: int, generator: torch.Generator) -> Tensor:
    """A seeded permutation [n] of the pairs in which runs of `group_size` consecutive pairs share
    their key (hard negatives: pairs the loss can tell apart only by the other attributes).

    A small ViT reads colour and background first; when every negative differs from a pair in
    them, the contrastive loss is nearly minimised by those alone and both towers learn to ignore
    shape and position (measured: text embeddings of every shape name at cosine 1.000, shape and
    position at chance, after 750 steps of plain random batches). Grouping keeps each pair once per
    epoch and the groups in random order."""
    order = torch.randperm(len(keys), generator=generator)
    if group_size <= 1:
        return order
    grouped = order[torch.sort(keys[order], stable=True).indices]
    groups = grouped.split(group_size)
    return torch.cat([groups[index] for index in torch.randperm(len(groups), generator=generator).tolist()])


def _parameter_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """open_clip's split: no decay on 1-d parameters (gains, biases, the logit scale) and embeddings."""
    decay, plain = [], []
    for name, parameter in module.named_parameters():
        exempt = parameter.ndim < 2 or "embedding" in name or "logit_scale" in name or name.endswith("class_embedding")
        (plain if exempt else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def learning_rate(step: int, options: PretrainOptions) -> float:
    """Linear warmup to `lr`, then cosine decay to zero at the last step."""
    total = options.epochs * options.steps_per_epoch
    if step < options.warmup:
        return options.lr * (step + 1) / options.warmup
    progress = (step - options.warmup) / max(1, total - options.warmup)
    return 0.5 * options.lr * (1 + math.cos(math.pi * min(1.0, progress)))


def pretrain(spec: Mapping[str, Any], name: str, device: str = "auto") -> tuple[LoadedModel, PretrainResult]:
    """Train model entry `spec` (with a `pretrain` block) from its seeded random init; returns the
    trained model (eval mode) and its history."""
    options = PretrainOptions.from_spec(spec)
    model = load_model({**spec, "pretrained": None}, name=name, device=device)
    images, tokens, keys = world_batches(model, options)
    module = model.module.train()
    optimizer = torch.optim.AdamW(_parameter_groups(module, options.weight_decay), lr=options.lr, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = ClipLoss()
    generator = torch.Generator().manual_seed(options.seed)
    history, step, started = [], 0, time.perf_counter()
    log.info("pretraining %s on %d world pairs: %d epochs x %d steps of %d (%s)", name, len(images), options.epochs,
             options.steps_per_epoch, options.batch_size, model.device)
    for epoch in range(options.epochs):
        order = epoch_order(keys, options.group_size if options.group_by else 1, generator)
        losses, epoch_start = [], time.perf_counter()
        for batch in range(options.steps_per_epoch):
            rows = order[batch * options.batch_size : (batch + 1) * options.batch_size]
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, options)
            image_features, text_features, scale = module(images[rows].to(model.device), tokens[rows].to(model.device))[:3]
            loss = loss_fn(image_features, text_features, scale)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"pretraining {name}: the loss is {loss.item()} at step {step}; lower `pretrain.lr`")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():  # CLIP's clamp: a temperature below 1/100 destabilises training
                module.logit_scale.clamp_(0, math.log(100))
            losses.append(loss.item())
            step += 1
        seconds = time.perf_counter() - epoch_start
        row = {"epoch": epoch, "loss": float(np.mean(losses)), "seconds": seconds,
               "samples_per_second": options.steps_per_epoch * options.batch_size / seconds}
        history.append(row)
        log.info("epoch %d/%d: loss %.4f, %.0f samples/s", epoch + 1, options.epochs, row["loss"], row["samples_per_second"])
    total = time.perf_counter() - started
    module.eval()
    return model, PretrainResult(history, options.epochs * options.steps_per_epoch * options.batch_size / total)


def save_pretrained(model: LoadedModel, result: PretrainResult, options: PretrainOptions, path: str | Path) -> None:
    """The weights as the state dict `load_model` reads back (`pretrained: <path>`), with the
    options and the loss of every epoch in the header."""
    # Losses only: timings would make two identical runs' files differ (they are in the log).
    history = [{"epoch": row["epoch"], "loss": row["loss"]} for row in result.history]
    header = {"format": PRETRAIN_VERSION, "options": options.params(), "history": history}
    save_tensors(path, model.module.state_dict(), header)
