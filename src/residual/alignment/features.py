"""Spectral coordinates of stored units, computed once per split (METHOD section 9).

Every ResiDual variant is linear in its units, so training never needs the raw units: a fixed
`FeaturePlan` maps each sample to

- coords [n, K]: concat over adapted units u of (x_u - mu_u) @ Phi_u[:k_u]^T,
- rest [n, d]: the units that are not adapted, by ablation mode (`sum`: their raw sum; `mean`:
  the sum of their means, a constant; `zero`: zeros),
- embedding [n, d]: the model's own output (for `base` and the output adapters),

with basis B = the stacked rows Phi_u[:k_u] [K, d], so that for any lambda [K]

    sum_u Phi_u[:k_u]^T diag(lambda_u) Phi_u[:k_u] (x_u - mu_u) = (coords * lambda) @ B.

Phi_u and mu_u come from the reference PCA (ImageNet train in the paper). At paper scale a split
is 80,000 samples x 409 units x 768 dims (100 GB in float32); coords of `residual_full` are about
80,000 x 44,000 floats (14 GB), of `residual_fine` about 80,000 x 10,000.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor

from residual.spectral.pca import OUTPUT, UnitPCA
from residual.units.guards import check_finite_values
from residual.units.store import StoredUnits, UnitFile

Ablation = Literal["sum", "mean", "zero"]
ABLATIONS: tuple[Ablation, ...] = ("sum", "mean", "zero")


@dataclass(frozen=True)
class Features:
    """Per-sample inputs of the variants, n samples, K coordinates, width d.

    coords [n, K] float32; rest [n, d]; embedding [n, d]; labels [n] int64.
    centred_energy, kept_energy: sums over the samples and adapted units of ||x_u - mu_u||^2 and of
    ||coords_u||^2, measured when the features were made (see `outside`).
    """

    coords: Tensor
    rest: Tensor
    embedding: Tensor
    labels: Tensor
    centred_energy: float = 0.0
    kept_energy: float = 0.0

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def outside(self) -> float:
        """The fraction of the adapted units' centred energy outside the plan's components: about 0
        when the plan keeps every component of the reference (the spectral form then reproduces the
        raw units), larger by design for truncated plans (residual_fine)."""
        if self.centred_energy <= 0:
            return 0.0
        return max(1.0 - self.kept_energy / self.centred_energy, 0.0)  # rounding can give -1e-8

    def select(self, index: Tensor) -> Features:
        """The samples at index [b] (long, on the features' device); the energies are kept as they are."""
        return Features(
            self.coords[index],
            self.rest[index],
            self.embedding[index],
            self.labels[index],
            self.centred_energy,
            self.kept_energy,
        )


@dataclass(frozen=True)
class FeaturePlan:
    """Which stored columns make the features, and how.

    adapted [A]: unit names, or [OUTPUT] to adapt the model's embedding; components A x [k_u, d]
    (rows of the reference PCA, k_u may be 0); means [A, d] the reference means of the adapted
    units; others: the units that are not adapted; ablation: what `rest` holds of them;
    constant [d]: the sum of the others' reference means (`mean` mode); model: the reference's
    model name (None if unknown), checked against every unit file read.
    """

    adapted: list[str]
    components: list[Tensor]
    means: Tensor
    others: list[str]
    ablation: Ablation
    constant: Tensor
    model: str | None

    @property
    def width(self) -> int:
        return int(self.constant.shape[0])

    @property
    def basis(self) -> Tensor:
        """[K, d] the stacked components."""
        return torch.cat([*self.components, self.constant.new_zeros(0, self.width)])

    @property
    def unit_of(self) -> Tensor:
        """[K] long: the position in `adapted` of each coordinate's unit."""
        sizes = torch.tensor([len(c) for c in self.components], dtype=torch.long)
        return torch.repeat_interleave(torch.arange(len(self.components)), sizes)

    @property
    def reads(self) -> list[str]:
        """Unit columns the features need: adapted units (not the embedding) and, in `sum` mode, the others."""
        units = [name for name in self.adapted if name != OUTPUT]
        return units + (self.others if self.ablation == "sum" else [])

    def to(self, device: torch.device | str) -> FeaturePlan:
        return replace(
            self,
            components=[c.to(device) for c in self.components],
            means=self.means.to(device),
            constant=self.constant.to(device),
        )

    def features(self, stored: StoredUnits, device: torch.device | str) -> Features:
        """Features of stored units whose names include `reads` (values [n, U, d]), on `device`."""
        plan = self.to(device)  # a no-op when the plan is already there
        values, embedding = stored.values.to(device), stored.embedding.to(device)
        position = {name: index for index, name in enumerate(stored.names)}
        coords, centred_energy, kept_energy = [], 0.0, 0.0
        for name, components, mean in zip(plan.adapted, plan.components, plan.means):
            unit = embedding if name == OUTPUT else values[:, position[name]]
            centred = unit - mean
            coords.append(centred @ components.T)
            centred_energy += float(centred.double().square().sum())
            kept_energy += float(coords[-1].double().square().sum())
        rest = torch.zeros_like(embedding)
        if self.ablation == "sum" and self.others:
            rest = values[:, [position[name] for name in self.others]].sum(dim=1)
        elif self.ablation == "mean":
            rest = rest + plan.constant
        return Features(
            coords=torch.cat([*coords, embedding.new_zeros(len(embedding), 0)], dim=1),
            rest=rest,
            embedding=embedding,
            labels=stored.labels.to(device),
            centred_energy=centred_energy,
            kept_energy=kept_energy,
        )


def make_plan(
    reference: UnitPCA, adapted: Sequence[str], widths: Sequence[int], ablation: Ablation
) -> FeaturePlan:
    """Plan adapting `adapted` (unit names of the reference, or [OUTPUT]) with the first widths[a]
    components of each; every other unit of the reference (except OUTPUT) is handled by `ablation`.
    Adapting OUTPUT leaves no others: the embedding is the sum of all units."""
    if ablation not in ABLATIONS:
        raise ValueError(f"ablation {ablation!r} is not one of {ABLATIONS}")
    adapted = list(adapted)
    if len(widths) != len(adapted):
        raise ValueError(f"{len(adapted)} adapted units but {len(widths)} widths")
    others = [] if OUTPUT in adapted else [name for name in reference.names if name not in adapted and name != OUTPUT]
    rows = [reference.index(name) for name in adapted]
    for name, row, width in zip(adapted, rows, widths):
        if not 0 <= width <= len(reference.components[row]):
            raise ValueError(f"unit {name!r} keeps {len(reference.components[row])} components, {width} were asked for")
    others_rows = [reference.index(name) for name in others]
    return FeaturePlan(
        adapted=adapted,
        components=[reference.components[row][:width].float() for row, width in zip(rows, widths)],
        means=reference.means[rows].float(),
        others=others,
        ablation=ablation,
        constant=reference.means[others_rows].float().sum(dim=0),
        model=reference.metadata.get("model"),
    )


def spectral_features(unit_file: UnitFile, plan: FeaturePlan, batch_size: int, device: torch.device | str) -> Features:
    """Features of every sample of a unit file, streamed `batch_size` samples at a time; only the
    plan's unit columns (and the embedding) are read. Tensors end on `device`. Memory per batch:
    batch_size x len(plan.reads) x d floats (all units in `sum` mode of residual_fine/coarse)."""
    model = unit_file.metadata.get("model")
    if plan.model is not None and model is not None and model != plan.model:
        raise ValueError(
            f"unit file {unit_file.path} holds model {model!r}, the plan's reference PCA is of model {plan.model!r}"
        )
    if unit_file.layout.out_dim != plan.width:
        raise ValueError(f"unit file {unit_file.path} has width {unit_file.layout.out_dim}, the plan {plan.width}")
    plan = plan.to(device)
    samples, size = len(unit_file), sum(len(c) for c in plan.components)
    # Filled in place: concatenating per-batch parts would hold every split twice at its peak.
    coords = torch.empty(samples, size, device=device)
    rest, embedding = torch.empty(samples, plan.width, device=device), torch.empty(samples, plan.width, device=device)
    labels = torch.empty(samples, dtype=torch.long, device=device)
    start, centred_energy, kept_energy = 0, 0.0, 0.0
    context = f"unit file {unit_file.path}, step spectral features"
    for batch in unit_file.iter_batches(batch_size, units=plan.reads):
        check_finite_values(torch.cat([batch.values, batch.embedding[:, None]], dim=1), [*batch.names, "embedding"], batch.sample_ids, context)
        part = plan.features(batch, device)
        stop = start + len(part)
        coords[start:stop], rest[start:stop], embedding[start:stop], labels[start:stop] = (
            part.coords,
            part.rest,
            part.embedding,
            part.labels,
        )
        start, centred_energy, kept_energy = stop, centred_energy + part.centred_energy, kept_energy + part.kept_energy
    if start != samples:
        raise ValueError(f"unit file {unit_file.path} yielded {start} samples, its metadata says {samples}")
    return Features(coords, rest, embedding, labels, centred_energy, kept_energy)
