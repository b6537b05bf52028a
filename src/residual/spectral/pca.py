"""Per-unit PCA in output space (METHOD section 4), fitted in one streaming pass over a unit file.

A unit's covariance is accumulated in float64 over batches (data shifted by the first batch's mean,
so that a constant unit accumulates exact zeros), then eigendecomposed. This equals the SVD of the
centred data (eigenvalues S^2 / (n - 1), components Vt) without ever holding a split in memory:
at paper scale one split is 80,000 samples x 409 units x 768 dims.

Only directions that carry more than `RANK_TOLERANCE` of a unit's variance are kept. A head's
output-space contribution lies in a space of dimension about d_head + 2 (its value projection plus
the final LayerNorm's per-sample shift and scale), so the other eigenvalues are float rounding;
keeping them would store 768 x 768 floats per head instead of about 66 x 768. `total_variance`
keeps the sum of all eigenvalues, so explained-variance ratios are those of the full PCA.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from residual.io.tensors import TensorFileError, open_tensors, save_tensors
from residual.spectral.intrinsic_dimension import linear_id
from residual.units.guards import check_finite_values
from residual.units.layout import OUTPUT
from residual.units.store import UnitFile

FORMAT = "residual-pca/1"  # bump when the file layout or the fit changes
RANK_TOLERANCE = 1e-9


class PCAFileError(TensorFileError):
    """A PCA file is missing, corrupt, or lacks a requested unit."""


@dataclass(frozen=True)
class UnitPCA:
    """Per-unit PCA of one split. U units of width d, n samples.

    - means [U, d]; total_variance [U]: the sum of all d eigenvalues
    - components[u] [r_u, d]: orthonormal rows by decreasing eigenvalue (sign: largest entry positive)
    - eigenvalues[u] [r_u]: S^2 / (n - 1); r_u = 0 for a unit of zero variance
    """

    names: list[str]
    samples: int
    means: Tensor
    total_variance: Tensor
    components: list[Tensor]
    eigenvalues: list[Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"unit {name!r} is not in this PCA ({len(self.names)} units: {self.names[:3]}...)") from None

    def explained_variance_ratio(self, unit: int) -> Tensor:
        """[r_u] the fraction of the unit's total variance each kept component explains."""
        total = float(self.total_variance[unit])
        return self.eigenvalues[unit] / total if total > 0 else self.eigenvalues[unit]

    def k(self, threshold: float) -> Tensor:
        """[U] long: METHOD's k(t) per unit (see `linear_id`); 0 for a unit of zero variance."""
        return torch.tensor(
            [linear_id(eigenvalues, total, threshold) for eigenvalues, total in zip(self.eigenvalues, self.total_variance)],
            dtype=torch.long,
        )

    def subset(self, names: Sequence[str]) -> UnitPCA:
        rows = [self.index(name) for name in names]
        return UnitPCA(
            names=list(names),
            samples=self.samples,
            means=self.means[rows],
            total_variance=self.total_variance[rows],
            components=[self.components[row] for row in rows],
            eigenvalues=[self.eigenvalues[row] for row in rows],
            metadata=self.metadata,
        )

    def save(self, path: str | Path) -> None:
        tensors = {"means": self.means, "total_variance": self.total_variance}
        for name, components, eigenvalues in zip(self.names, self.components, self.eigenvalues):
            tensors[f"components/{name}"] = components
            tensors[f"eigenvalues/{name}"] = eigenvalues
        header = {"format": FORMAT, "names": self.names, "samples": self.samples, **self.metadata}
        save_tensors(path, {key: value.float() for key, value in tensors.items()}, header)

    @classmethod
    def load(cls, path: str | Path, units: Sequence[str] | None = None) -> UnitPCA:
        """Read the selected units (all if None); only their tensors are read from disk."""
        with open_tensors(path, "PCA file", "pca", format=FORMAT, error=PCAFileError) as (handle, header):
            names = header.pop("names")
            selected = names if units is None else list(units)
            missing = sorted(set(selected) - set(names))
            if missing:
                raise PCAFileError(f"PCA file {path} has no unit {missing[0]!r} (it holds {len(names)} units)")
            rows = [names.index(name) for name in selected]
            return cls(
                names=selected,
                samples=header.pop("samples"),
                means=handle.get_slice("means")[:][rows],
                total_variance=handle.get_tensor("total_variance")[rows],
                components=[handle.get_tensor(f"components/{name}") for name in selected],
                eigenvalues=[handle.get_tensor(f"eigenvalues/{name}") for name in selected],
                metadata={key: value for key, value in header.items() if key != "format"},
            )


class _Moments:
    """Streaming mean and covariance of G units at once, in float64. Batches: [b, G, d]."""

    def __init__(self) -> None:
        self.count = 0
        self.shift: Tensor | None = None
        self.total: Tensor | None = None  # [G, d] sum of shifted values
        self.gram: Tensor | None = None  # [G, d, d] sum of shifted outer products

    def update(self, values: Tensor) -> None:
        values = values.double()
        if self.shift is None:
            self.shift = values.mean(dim=0)
            self.total = torch.zeros_like(self.shift)
            self.gram = torch.zeros(*self.shift.shape, self.shift.shape[-1], dtype=torch.float64, device=values.device)
        shifted = values - self.shift
        self.count += len(values)
        self.total += shifted.sum(dim=0)
        self.gram += torch.einsum("bgi,bgj->gij", shifted, shifted)

    def finish(self) -> tuple[Tensor, Tensor]:
        """means [G, d] and covariances [G, d, d] with the n - 1 denominator."""
        if self.count < 2:
            raise ValueError(f"a PCA needs at least 2 samples, got {self.count}")
        offset = self.total / self.count
        covariance = (self.gram - self.count * offset[:, :, None] * offset[:, None, :]) / (self.count - 1)
        return self.shift + offset, covariance


def _spectra(means: Tensor, covariance: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """means [G, d], covariance [G, d, d] -> total variance [G], components G x [r, d], eigenvalues G x [r]."""
    eigenvalues, vectors = torch.linalg.eigh(covariance)
    eigenvalues = eigenvalues.flip(-1).clamp_min(0)  # eigh is ascending; tiny negatives are rounding
    vectors = vectors.flip(-1).transpose(-1, -2)  # rows = components
    # A deterministic sign per component, so that two runs (and two devices) store the same bases.
    peak = vectors.abs().argmax(dim=-1, keepdim=True)
    vectors = vectors * torch.gather(vectors, -1, peak).sign()
    total = torch.diagonal(covariance, dim1=-2, dim2=-1).sum(-1).clamp_min(0)
    # Float32 values cannot vary by less than their rounding step: such a unit is constant.
    resolution = means.shape[-1] * (torch.finfo(torch.float32).eps * means.abs().amax(dim=-1)) ** 2
    total = torch.where(total > resolution, total, torch.zeros_like(total))
    kept = eigenvalues > RANK_TOLERANCE * total[:, None]
    components = [vectors[g, kept[g]].float().cpu() for g in range(len(total))]
    return total.float().cpu(), components, [eigenvalues[g, kept[g]].float().cpu() for g in range(len(total))]


def _fit(batches: Iterable[tuple[Tensor, Tensor]], names: Sequence[str], source: str) -> UnitPCA:
    """PCA of batches of (values [b, G, d], sample ids [b]); names [G]."""
    moments = _Moments()
    for values, sample_ids in batches:
        check_finite_values(values, names, sample_ids, f"{source}, step pca")
        moments.update(values)
    means, covariance = moments.finish()
    total, components, eigenvalues = _spectra(means, covariance)
    return UnitPCA(list(names), moments.count, means.float().cpu(), total, components, eigenvalues)


def fit_pca(values: Tensor, names: Sequence[str], source: str = "in-memory values") -> UnitPCA:
    """PCA of every unit of values [n, U, d] (float32, any device); names [U]."""
    return _fit([(values, torch.arange(len(values)))], names, source)


def fit_unit_file(
    path: str | Path,
    units: Sequence[str] | None = None,
    include_output: bool = True,
    batch_size: int = 4096,
    group_size: int = 32,
    device: torch.device | str = "cpu",
) -> UnitPCA:
    """PCA of the selected units (all if None) of a unit file, plus the model's embedding as unit
    `output` when include_output. Units are fitted `group_size` at a time (memory: group_size x d^2
    float64), each group in one pass that reads only its columns."""
    unit_file = UnitFile(path)
    names = unit_file.names if units is None else list(units)
    source = f"unit file {unit_file.path}"

    def batches(group: list[str]) -> Iterable[tuple[Tensor, Tensor]]:
        for batch in unit_file.iter_batches(batch_size, units=group):
            values = batch.values if group else batch.embedding[:, None]  # no units: the embedding alone
            yield values.to(device), batch.sample_ids

    groups = [names[start : start + group_size] for start in range(0, len(names), group_size)]
    parts = [_fit(batches(group), group, source) for group in groups]
    if include_output:
        parts.append(_fit(batches([]), [OUTPUT], source))
    provenance = {key: unit_file.metadata[key] for key in ("model", "dataset", "split", "ln_constants") if key in unit_file.metadata}
    provenance["head_dim"] = unit_file.layout.head_dim  # residual_full's `head_rank: d_head`
    return UnitPCA(
        names=[name for part in parts for name in part.names],
        samples=parts[0].samples,
        means=torch.cat([part.means for part in parts]),
        total_variance=torch.cat([part.total_variance for part in parts]),
        components=[c for part in parts for c in part.components],
        eigenvalues=[e for part in parts for e in part.eigenvalues],
        metadata={"source": str(unit_file.path), **provenance},
    )
