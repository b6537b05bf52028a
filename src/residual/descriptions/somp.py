"""Simultaneous orthogonal matching pursuit (Tropp, Gilbert and Strauss 2006) of a unit over a
text dictionary (METHOD section 7).

On the unit's centred outputs X [n, d] (float64), k rounds of: pick the atom d_j maximising
sum_n |<R_n, d_j>| for the residual R, refit all chosen atoms jointly by least squares
(min_W ||X - W D_S||), and update R = X (I - Pi_S), Pi_S the projector on the chosen atoms' span.

The samples enter only through their coordinates Z = X V^T [n, r] in the unit's kept principal
components V (`UnitPCA`): a head's outputs span about d_head + 2 of the d output dimensions, so
<R_n, d_j> = z_n V (I - Pi_S) d_j costs n x r x m per round instead of n x d x m. The residual's
norm follows from Z^T Z alone.
"""

from __future__ import annotations

import torch
from torch import Tensor

from residual.descriptions.textspan import SPENT, Decomposition


def somp(
    coordinates: Tensor, basis: Tensor, dictionary: Tensor, total_variance: float, k: int = 10, chunk: int = 4096
) -> Decomposition:
    """SOMP of a unit given its centred coordinates [n, r] in `basis` [r, d] (orthonormal rows)
    over dictionary [m, d] (rows L2-normalised); `total_variance` (the unit's, n - 1 denominator)
    scales `explained`. Scores are summed over `chunk` samples at a time (memory: chunk x m)."""
    samples = len(coordinates)
    if samples < 2 or total_variance <= 0 or len(basis) == 0:
        return Decomposition([], [], [])
    z = coordinates.double()
    basis = basis.double().to(z.device)
    atoms = dictionary.double().to(z.device)
    inner = basis @ atoms.T  # [r, m]: V d_j
    moments = z.T @ z  # [r, r]
    scale = (samples - 1) * total_variance
    lengths = (atoms * atoms).sum(dim=1)
    floor = SPENT * float(lengths.max())
    chosen: list[int] = []
    explained: list[float] = []
    remaining: list[float] = []
    left = float(torch.trace(moments))
    for _ in range(k):
        if chosen:
            picked = atoms[chosen]  # [s, d]
            inverse = torch.linalg.pinv(picked @ picked.T, hermitian=True)  # duplicates make it singular
            cross = picked @ atoms.T  # [s, m]
            correlations = inner - (basis @ picked.T) @ inverse @ cross  # [r, m]: V (I - Pi_S) d_j
            outside = lengths - (cross * (inverse @ cross)).sum(dim=0)  # |(I - Pi_S) d_j|^2
        else:
            correlations, outside = inner, lengths
        scores = torch.zeros(len(atoms), dtype=torch.float64, device=z.device)
        for start in range(0, samples, chunk):
            scores += (z[start : start + chunk] @ correlations).abs().sum(dim=0)
        scores[outside <= floor] = -torch.inf
        scores[chosen] = -torch.inf
        pick = int(scores.argmax())
        if not scores[pick] > 0:
            break
        chosen.append(pick)
        picked = atoms[chosen]
        within = basis @ picked.T  # [r, s]
        projector = within @ torch.linalg.pinv(picked @ picked.T, hermitian=True) @ within.T  # V Pi_S V^T
        now = float(torch.trace(moments) - torch.trace(moments @ projector))
        explained.append((left - now) / scale)
        remaining.append(max(now, 0.0) / scale)
        left = now
    return Decomposition(chosen, explained, remaining)
