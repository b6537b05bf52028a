"""Head scores on the val split (METHOD section 8), streamed from the unit file.

- `task_conditioned` ("U|T"): P = the QR-orthonormalised class directions of the classifier (text
  centroids, or class means for ViT/DINOv2), one row per direction, min(C, d) rows;
  score_h = mean over k of corr(P_k . x_h, P_k . sum over heads of x) across samples.
- `unsupervised` ("U"): the same with P = the identity: every output coordinate, no labels.
- `supervised` ("S"): the head's own zero-shot val accuracy (its output alone through the classifier).
- `random`: one standard-normal score per head for each seed (the authors' seeded `randn`), so its
  top-k are the first k heads of a seeded random order.

A correlation with a series that is constant (its standard deviation below 1e-12 of its magnitude,
float rounding included) is 0: a constant carries nothing about the samples. Pearson correlation is
accumulated in float64 with Chan's pairwise update of centred co-moments, batch by batch, so the
split is never in memory: at paper scale 20,000 samples x 384 heads x 768 dims.
The val mean of every unit (for the `mean` ablation of the selections) comes out of the same pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch
from torch import Tensor

from residual.heads.inputs import device_batches, task_classifier
from residual.heads.options import SCORES, ScoreOptions
from residual.io.tensors import open_tensors, save_tensors
from residual.units.layout import is_head, unit_coordinates
from residual.units.store import UnitFile

# Its version, SCORES_VERSION, is in residual.heads.options: bump it with a change that changes the scores or means it writes.
CONSTANT = 1e-12  # relative standard deviation below which a series counts as constant


class StreamingCorrelation:
    """Pearson correlation of series a [n, K] (n heads, K directions) with series s [K], over
    samples that arrive in batches (float64, Chan et al.'s pairwise merge of centred co-moments)."""

    def __init__(self, heads: int, directions: int, device: torch.device | str) -> None:
        self.count = 0
        self.mean_a = torch.zeros(heads, directions, dtype=torch.float64, device=device)
        self.m2_a = torch.zeros_like(self.mean_a)
        self.co = torch.zeros_like(self.mean_a)
        self.mean_s = torch.zeros(directions, dtype=torch.float64, device=device)
        self.m2_s = torch.zeros_like(self.mean_s)

    def update(self, a: Tensor, s: Tensor) -> None:
        """a: [b, n, K], s: [b, K], one batch of b samples."""
        a, s, size = a.double(), s.double(), len(a)
        if size == 0:
            return
        mean_a, mean_s = a.mean(dim=0), s.mean(dim=0)
        centred_a, centred_s = a - mean_a, s - mean_s
        delta_a, delta_s = mean_a - self.mean_a, mean_s - self.mean_s
        total = self.count + size
        weight = self.count * size / total
        self.m2_a += centred_a.square().sum(dim=0) + delta_a.square() * weight
        self.m2_s += centred_s.square().sum(dim=0) + delta_s.square() * weight
        self.co += torch.einsum("bnk,bk->nk", centred_a, centred_s) + delta_a * delta_s * weight
        self.mean_a += delta_a * (size / total)
        self.mean_s += delta_s * (size / total)
        self.count = total

    def value(self) -> Tensor:
        """[n, K] correlations, 0 where either series is constant."""
        var_a, var_s = self.m2_a / self.count, self.m2_s / self.count
        constant_a = var_a.sqrt() <= CONSTANT * (var_a + self.mean_a.square()).sqrt()
        constant_s = var_s.sqrt() <= CONSTANT * (var_s + self.mean_s.square()).sqrt()
        constant = constant_a | constant_s | (var_a == 0) | (var_s == 0)
        correlation = self.co / (self.m2_a * self.m2_s).sqrt().where(~constant, torch.ones_like(self.co))
        return correlation.where(~constant, torch.zeros_like(correlation))


def class_basis(weights: Tensor) -> Tensor:
    """[C, d] class directions -> [min(C, d), d] orthonormal rows spanning them, in class order
    (QR of weights^T; with C >= d they span the whole output space)."""
    return torch.linalg.qr(weights.double().T).Q.T


@dataclass(frozen=True)
class HeadScores:
    """Scores of the n heads of one model on one dataset's val split.

    heads [n]: head names in layout order; scores: (score name, seed or None) -> [n] float64;
    unit_names [U] and means [U, d]: the val mean of every unit; samples: val samples seen.
    """

    heads: list[str]
    scores: dict[tuple[str, int | None], Tensor]
    unit_names: list[str]
    means: Tensor
    samples: int


@torch.no_grad()
def score_heads(
    unit_path: str | Path,
    classifier_path: str | Path,
    options: ScoreOptions,
    batch_size: int,
    device: torch.device | str,
    keep: Tensor | None = None,
) -> HeadScores:
    """Every score of `options` for every head of the val unit file, and every unit's val mean, in
    one streamed pass (memory per batch: batch_size x U x d floats, plus batch_size x n x d float64
    for each correlation score). keep: [samples of the file] bool, the rows to score (all if None),
    e.g. one half of the split (`residual.heads.halves`)."""
    unit_file = UnitFile(unit_path)
    if keep is not None and (keep.dtype != torch.bool or keep.shape != (len(unit_file),)):
        raise ValueError(
            f"unit file {unit_path} holds {len(unit_file)} samples: the rows to keep must be a bool mask of that length, "
            f"not {keep.dtype} of shape {tuple(keep.shape)}"
        )
    classifier = task_classifier(classifier_path, options.logits, unit_file).to(device)
    classes, width = classifier.weights.shape
    names = unit_file.names
    head_index = torch.tensor([i for i, name in enumerate(names) if is_head(name)], device=device)
    heads = len(head_index)
    bases = {"task_conditioned": class_basis(classifier.weights), "unsupervised": None}  # None: the identity
    correlations = {
        name: StreamingCorrelation(heads, width if bases[name] is None else len(bases[name]), device)
        for name in options.scores
        if name in bases
    }
    correct = torch.zeros(heads, dtype=torch.long, device=device)
    sums = torch.zeros(len(names), width, dtype=torch.float64, device=device)
    samples = offset = 0  # samples scored, rows read
    for batch in device_batches(unit_file, batch_size, device, "head scores", classes):
        units, labels = batch.values, batch.labels
        if keep is not None:
            kept = keep[offset : offset + len(labels)].to(device)
            offset += len(labels)
            units, labels = units[kept], labels[kept]
        values = units[:, head_index]  # [b, n, d]
        total = values.sum(dim=1)  # [b, d], the sum of all heads
        for name, correlation in correlations.items():
            basis = bases[name]
            if basis is None:
                correlation.update(values, total)
            else:
                correlation.update(values.double() @ basis.T, total.double() @ basis.T)
        if "supervised" in options.scores:
            correct += (classifier(values).argmax(-1) == labels[:, None]).sum(dim=0)
        sums += units.sum(dim=0, dtype=torch.float64)
        samples += len(labels)
    if samples == 0:
        kept_note = " among the rows kept" if keep is not None else ""
        raise ValueError(f"unit file {unit_path} holds no samples{kept_note}: head scores are undefined")
    scores: dict[tuple[str, int | None], Tensor] = {}
    for name in options.scores:
        if name in correlations:
            scores[name, None] = correlations[name].value().mean(dim=1).cpu()
        elif name == "supervised":
            scores[name, None] = (correct.double() / samples).cpu()
        else:
            for seed in options.random_seeds:
                scores[name, seed] = torch.randn(heads, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    for (name, seed), value in scores.items():
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"unit file {unit_path}: score {name!r} (seed {seed}) is not finite for some heads")
    head_names = [names[i] for i in head_index.tolist()]
    return HeadScores(head_names, scores, names, (sums / samples).float().cpu(), samples)


def ranks(values: Tensor) -> Tensor:
    """[n] scores -> [n] ranks, 1 for the highest; ties go to the earlier head (layout order)."""
    order = torch.sort(values, descending=True, stable=True).indices
    ranked = torch.empty_like(order)
    ranked[order] = torch.arange(1, len(values) + 1)
    return ranked


def scores_table(result: HeadScores) -> pl.DataFrame:
    """One row per score x seed x head: score, label, seed, unit, kind, layer, head, value, rank."""
    coordinates = [unit_coordinates(name) for name in result.heads]
    parts = []
    for (name, seed), value in result.scores.items():
        parts.append(
            pl.DataFrame(
                {
                    "score": [name] * len(result.heads),
                    "label": [SCORES[name]] * len(result.heads),
                    "seed": pl.Series([seed] * len(result.heads), dtype=pl.Int64),
                    "unit": result.heads,
                    "layer": [c["layer"] for c in coordinates],
                    "head": [c["head"] for c in coordinates],
                    "value": value.tolist(),
                    "rank": ranks(value).tolist(),
                }
            )
        )
    return pl.concat(parts) if parts else pl.DataFrame()


def save_means(path: str | Path, result: HeadScores) -> None:
    """The val mean of every unit [U, d], with the unit names and the sample count."""
    save_tensors(path, {"means": result.means}, {"units": result.unit_names, "samples": result.samples})


def load_means(path: str | Path) -> tuple[list[str], Tensor]:
    """(unit names [U], val means [U, d]) as written by `save_means`."""
    with open_tensors(path, "val means file", "head_scores") as (handle, header):
        return list(header["units"]), handle.get_tensor("means")


def ranking(table: pl.DataFrame, score: str, seed: int | None) -> list[str]:
    """The head names of one score (and seed) of a scores table, best first."""
    rows = table.filter((pl.col("score") == score) & (pl.col("seed").is_null() if seed is None else pl.col("seed") == seed))
    return rows.sort("rank")["unit"].to_list()


def score_keys(table: pl.DataFrame) -> list[tuple[str, int | None]]:
    """The (score, seed) pairs of a scores table, in its order."""
    keys = table.select("score", "seed").unique(maintain_order=True)
    return [(score, seed) for score, seed in keys.iter_rows()]

