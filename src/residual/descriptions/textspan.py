"""TextSpan (Gandelsman et al., ICLR 2024) as their reference code runs it (METHOD section 7).

The reference works on a unit's outputs X [n, d]: SVD of X uncentred, the dictionary projected on
the span of the top `rank` right singular vectors, X centred, then `k` rounds of: pick the text t
whose projections X t have the largest standard deviation (t as projected and deflated, not
renormalised), remove X's component along t, Gram-Schmidt every text against t.

Every quantity those rounds read is a second moment of X, so here they run on the unit's PCA
(`UnitPCA`: mean, kept components, eigenvalues; one streaming pass over the split) instead of
the samples: the uncentred Gram matrix is (n - 1) C + n mu mu^T, Var(X t) = t^T C t, and removing
t from X turns C into P C P with P = I - t t^T / |t|^2. All of it happens in coordinates of the
kept span ([rank, rank] matrices), so a round costs m x rank^2 for m texts, independent of n.

Directions with no singular value (eigenvalue <= RANK_TOLERANCE of the largest) are not kept: an
SVD returns them in an arbitrary basis, which would make the picks depend on rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from residual.spectral.pca import RANK_TOLERANCE, UnitPCA

# A text whose (projected, deflated) squared norm falls below this fraction of the largest one is
# spent: a zero row, or a duplicate or combination of texts already picked. It is never picked.
SPENT = 1e-12


@dataclass(frozen=True)
class Decomposition:
    """A unit described by k texts. indices [k]: dictionary rows in the order picked; explained [k]:
    the fraction of the unit's variance each pick removes; remaining [k]: the fraction left after
    each round. Fewer than k rounds when the unit or the dictionary runs out of variance."""

    indices: list[int]
    explained: list[float]
    remaining: list[float]

    @property
    def total(self) -> float:
        """The fraction of the unit's variance all picks explain together."""
        return float(sum(self.explained))


def uncentred_span(pca: UnitPCA, unit: int, rank: int) -> Tensor:
    """[s, d] float64, s <= rank: the top right singular vectors of the unit's uncentred outputs X,
    from its PCA. X^T X = (n - 1) C + n mu mu^T lies in the span of the kept components and mu."""
    mean = pca.means[unit].double()
    components = pca.components[unit].double()
    eigenvalues = pca.eigenvalues[unit].double()
    basis, _ = torch.linalg.qr(torch.cat([components, mean[None]]).T)  # [d, b], b <= r + 1
    inside = components @ basis  # [r, b]
    centre = mean @ basis  # [b]
    gram = (pca.samples - 1) * inside.T @ (eigenvalues[:, None] * inside) + pca.samples * torch.outer(centre, centre)
    values, vectors = torch.linalg.eigh(gram)
    values, vectors = values.flip(0), vectors.flip(1)
    kept = int((values > RANK_TOLERANCE * values[0].clamp_min(0)).sum()) if len(values) and values[0] > 0 else 0
    return (basis @ vectors[:, : min(rank, kept)]).T


def text_span(pca: UnitPCA, unit: int, dictionary: Tensor, rank: int = 80, k: int = 10) -> Decomposition:
    """TextSpan of unit `unit` of `pca` over dictionary [m, d] (rows L2-normalised)."""
    total = float(pca.total_variance[unit])
    span = uncentred_span(pca, unit, rank)  # [s, d]
    if total <= 0 or len(span) == 0:
        return Decomposition([], [], [])
    texts = dictionary.double() @ span.T  # [m, s]: the texts projected on the span, in its coordinates
    inside = span @ pca.components[unit].double().T  # [s, r]
    covariance = inside @ (pca.eigenvalues[unit].double()[:, None] * inside.T)  # [s, s]: span C span^T
    norms = (texts * texts).sum(dim=1)
    floor = SPENT * float(norms.max())
    chosen: list[int] = []
    explained: list[float] = []
    remaining: list[float] = []
    left = total
    for _ in range(k):
        norms = (texts * texts).sum(dim=1)
        variances = ((texts @ covariance) * texts).sum(dim=1)  # unbiased Var(X t_j), as the reference's std
        variances[norms <= floor] = -torch.inf
        variances[chosen] = -torch.inf
        pick = int(variances.argmax())
        if not variances[pick] > 0:
            break
        direction, length = texts[pick], norms[pick]
        removed = float(variances[pick] / length)
        deflate = torch.eye(len(direction), dtype=torch.float64) - torch.outer(direction, direction) / length
        covariance = deflate @ covariance @ deflate
        texts = texts - (texts @ direction / length)[:, None] * direction
        left -= removed
        chosen.append(pick)
        explained.append(removed / total)
        remaining.append(max(left, 0.0) / total)
    return Decomposition(chosen, explained, remaining)
