"""Per-unit PCA in output space (METHOD section 4), fitted in one streaming pass over a unit file.

A unit's covariance is accumulated in float64 over batches (data shifted by the first batch's mean,
so that a constant unit accumulates exact zeros), then eigendecomposed. Heads are accumulated in
the dh + 2 coordinates the unit file stores and mapped to output space exactly (`_fit_heads`): at
ViT-L that is (768 / 66)^2 = 135x less to accumulate and a [66, 768] SVD instead of a [768, 768]
eigendecomposition. This equals the SVD of the
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
from residual.runtime.threads import per_matrix
from residual.spectral.intrinsic_dimension import linear_id
from residual.spectral.versions import PCA_FORMAT
from residual.units.guards import check_finite_values
from residual.units.layout import OUTPUT, is_head
from residual.units.store import UnitFile

# Its format, PCA_FORMAT, is in residual.spectral.versions: bump it there when the file layout or the fit changes.
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
        header = {"format": PCA_FORMAT, "names": self.names, "samples": self.samples, **self.metadata}
        save_tensors(path, {key: value.float() for key, value in tensors.items()}, header)

    @classmethod
    def load(cls, path: str | Path, units: Sequence[str] | None = None) -> UnitPCA:
        """Read the selected units (all if None); only their tensors are read from disk."""
        with open_tensors(path, "PCA file", "pca", format=PCA_FORMAT, error=PCAFileError) as (handle, header):
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
    eigenvalues, vectors = per_matrix(torch.linalg.eigh, covariance)
    total = torch.diagonal(covariance, dim1=-2, dim2=-1).sum(-1)
    # eigh is ascending; rows = components
    return _kept(means, total, eigenvalues.flip(-1), vectors.flip(-1).transpose(-1, -2))


def _mapped_spectra(means: Tensor, covariance: Tensor, maps: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """The spectra of y = c @ M from the covariance of the coordinates c.

    means [G, d] (of y); covariance [G, w, w] (of c); maps [G, w, d] -> as `_spectra`.
    With C = R^T R (R = sqrt(Lambda) Q^T from C's eigendecomposition), cov(y) = M^T C M = A^T A for
    A = R M [w, d]: the SVD of A gives cov(y)'s eigenvalues S^2 and components Vh exactly, at a
    cost of w^2 d instead of the d^3 of decomposing the [d, d] covariance.
    """
    total, eigenvalues, components = per_matrix(_mapped_decomposition, covariance, maps)
    return _kept(means, total, eigenvalues, components)


def _mapped_decomposition(covariance: Tensor, maps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """covariance [G, w, w], maps [G, w, d] -> trace [G], eigenvalues [G, w] descending and
    components [G, w, d] of M^T C M. The SVD of A = R M goes through the QR of A^T = Q T (w << d):
    A = T^T Q^T, so the SVD of the small T^T = U S V^T gives A's as U S (V^T Q^T), with the same
    backward stability at a third of the cost of decomposing the [w, d] matrix directly."""
    eigenvalues, vectors = torch.linalg.eigh(covariance)
    root = eigenvalues.clamp_min(0).sqrt()[:, :, None] * vectors.transpose(-1, -2)
    orthonormal, triangle = torch.linalg.qr((root @ maps).transpose(-1, -2))
    _, singular, right = torch.linalg.svd(triangle.transpose(-1, -2))
    return triangle.square().sum(dim=(-2, -1)), singular.square(), right @ orthonormal.transpose(-1, -2)


def _kept(
    means: Tensor, total: Tensor, eigenvalues: Tensor, vectors: Tensor
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """means [G, d], total [G], eigenvalues [G, r] descending, vectors [G, r, d] -> as `_spectra`."""
    eigenvalues = eigenvalues.clamp_min(0)  # tiny negatives are rounding
    # A deterministic sign per component, so that two runs (and two devices) store the same bases.
    peak = vectors.abs().argmax(dim=-1, keepdim=True)
    vectors = vectors * torch.gather(vectors, -1, peak).sign()
    total = total.clamp_min(0)
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


def _fit_heads(
    unit_file: UnitFile, names: list[str], batch_size: int, device: torch.device | str, source: str
) -> UnitPCA:
    """PCA of G heads in the coordinates c = [z / s, 1 / s, mu / s] (width dh + 2) the file stores.

    Output space is y = c @ M + a k0 with M = [W_h; b_h; -a k1] [dh + 2, d] and a the head's share
    of the constant terms (see `UnitMap`), so the covariance of y is M^T cov(c) M and its mean
    mean(c) @ M + a k0: the same PCA as in output space,
    accumulated on (dh + 2)^2 instead of d^2 entries per head.
    """
    unit_map = unit_file.unit_map([unit_file.layout.head_index(name) for name in names]).to(device)
    # Each head takes its share of the final LayerNorm's constant terms (`UnitMap.shares`).
    shares = unit_map.shares[[unit_file.layout.index(name) for name in names]].to(device, torch.float64)  # [G]
    maps = torch.cat(
        [unit_map.head_weight.double(), unit_map.head_bias[:, None].double(), -shares[:, None, None] * unit_map.k1.double()], dim=1
    )  # [G, dh + 2, d]
    moments = _Moments()
    for batch in unit_file.iter_stored_batches(batch_size, names):
        check_finite_values(batch.values, names, batch.sample_ids, f"{source}, step pca")
        inverse = 1.0 / batch.ln_std.to(device, torch.float64)  # [b]
        shift = batch.ln_mean.to(device, torch.float64) * inverse
        scales = torch.stack([inverse, shift], dim=1)[:, None].expand(-1, len(names), -1)  # [b, G, 2]
        moments.update(torch.cat([batch.values.to(device, torch.float64) * inverse[:, None, None], scales], dim=-1))
    coordinate_means, covariance = moments.finish()
    means = torch.einsum("gw,gwd->gd", coordinate_means, maps) + shares[:, None] * unit_map.k0.double()
    total, components, eigenvalues = _mapped_spectra(means, covariance, maps)
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
    `output` when include_output. Units are fitted `group_size` at a time, each group in one pass
    that reads only its columns: heads in their stored coordinates (`_fit_heads`; memory
    group_size x (dh + 2) x d float64 for their maps), emb, MLPs and `output` in output space
    (memory group_size x d^2 float64; `output` is read as one more unit of the last such group)."""
    unit_file = UnitFile(path)
    names = unit_file.names if units is None else list(units)
    source = f"unit file {unit_file.path}"

    def batches(group: list[str]) -> Iterable[tuple[Tensor, Tensor]]:
        units = [name for name in group if name != OUTPUT]
        for batch in unit_file.iter_batches(batch_size, units=units):
            values = torch.cat([batch.values, batch.embedding[:, None]], dim=1) if OUTPUT in group else batch.values
            yield values.to(device), batch.sample_ids

    heads = [name for name in names if is_head(name)]
    # The embedding rides with the last group of the others, read in the same pass.
    others = [name for name in names if not is_head(name)] + ([OUTPUT] if include_output else [])
    groups = [list(group[start : start + group_size]) for group in (heads, others) for start in range(0, len(group), group_size)]
    parts = [
        _fit_heads(unit_file, group, batch_size, device, source) if is_head(group[0]) else _fit(batches(group), group, source)
        for group in groups
    ]
    fitted = {name: (part, row) for part in parts for row, name in enumerate(part.names)}
    order = [fitted[name] for name in [*names, *([OUTPUT] if include_output else [])]]
    provenance = {key: unit_file.metadata[key] for key in ("model", "dataset", "split", "ln_constants") if key in unit_file.metadata}
    provenance["head_dim"] = unit_file.layout.head_dim  # residual_full's `head_rank: d_head`
    return UnitPCA(
        names=[part.names[row] for part, row in order],
        samples=parts[0].samples,
        means=torch.stack([part.means[row] for part, row in order]),
        total_variance=torch.stack([part.total_variance[row] for part, row in order]),
        components=[part.components[row] for part, row in order],
        eigenvalues=[part.eigenvalues[row] for part, row in order],
        metadata={"source": str(unit_file.path), **provenance},
    )
