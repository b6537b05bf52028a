"""Normalised spectral cosine between two units' principal bases (METHOD section 6).

    C = |X_basis @ Y_basis^T| * W / ||diag(W)||_2,   W = outer(w_x, w_y)
    repeat min(k_x, k_y) times: take the largest entry of C, record it, blank its row and column
    similarity = ||recorded values||_2

The unweighted variant uses the identity weight matrix W = eye(k_x, k_y), as the authors' code
does: component i of X is compared only with component i of Y, so the score is the RMS of
|<x_i, y_i>|. Like the weighted score it compares principal directions, not subspaces: a
rotation of a basis within its span changes it (a sign flip does not).
"""

from __future__ import annotations

import torch
from torch import Tensor

from residual.spectral.intrinsic_dimension import linear_id

# Its version, SIMILARITY_VERSION, is in residual.spectral.versions: bump it there when a change to the score or its table changes results.


def spectral_cosine(
    x_basis: Tensor,
    y_basis: Tensor,
    x_weights: Tensor | None = None,
    y_weights: Tensor | None = None,
) -> float:
    """Normalised spectral cosine of `x_basis` [kx, d] and `y_basis` [ky, d] (orthonormal rows).

    `x_weights` [kx], `y_weights` [ky]: non-negative per-component weights (e.g. eigenvalues
    S^2 / (n-1); any common scale cancels), both or neither; neither means the identity weight
    matrix. Computed in float64 on the device of `x_basis`. Identical bases give 1, orthogonal
    ones 0; swapping (x, y) together with their weights gives the same value up to ties.
    The greedy pick breaks ties by the first maximum in row-major order, as the authors'
    max-then-argmax does.

    Undefined cases return NaN rather than raising: kx == 0 or ky == 0 (a zero-variance unit
    keeps no component), and weights whose leading diagonal of outer(x_weights, y_weights) has
    norm 0. Raises ValueError for NaN/Inf (naming the argument), negative weights, only one
    weight vector, or mismatched shapes (naming them).
    """
    _check_inputs(x_basis, y_basis, x_weights, y_weights)
    if x_basis.shape[0] == 0 or y_basis.shape[0] == 0:
        return float("nan")
    x = x_basis.to(torch.float64)
    y = y_basis.to(device=x.device, dtype=torch.float64)
    weights = _weight_matrix(x.shape[0], y.shape[0], x_weights, y_weights, x.device)
    scale = torch.linalg.vector_norm(torch.diagonal(weights))
    if scale == 0:
        return float("nan")
    return _greedy_norm((x @ y.T).abs() * (weights / scale))


def unit_similarity(
    x_components: Tensor,
    x_eigenvalues: Tensor,
    x_total: Tensor | float,
    y_components: Tensor,
    y_eigenvalues: Tensor,
    y_total: Tensor | float,
    threshold: float = 0.9,
) -> tuple[float, float]:
    """(weighted, unweighted) spectral cosine of one unit's PCA on two data sets.

    `*_components` [r, d] principal directions sorted by `*_eigenvalues` [r] (descending);
    `*_total` the sum of all eigenvalues. Each side keeps its first k(threshold) components
    (`linear_id`), weighted by their eigenvalues. A zero-variance side keeps none: (NaN, NaN).
    """
    x_count = linear_id(x_eigenvalues, x_total, threshold)
    y_count = linear_id(y_eigenvalues, y_total, threshold)
    x_basis, y_basis = x_components[:x_count], y_components[:y_count]
    weighted = spectral_cosine(x_basis, y_basis, x_eigenvalues[:x_count], y_eigenvalues[:y_count])
    return weighted, spectral_cosine(x_basis, y_basis)


def _check_inputs(x_basis: Tensor, y_basis: Tensor, x_weights: Tensor | None, y_weights: Tensor | None) -> None:
    """Shapes, finiteness and sign of `spectral_cosine`'s arguments."""
    if x_basis.ndim != 2 or y_basis.ndim != 2 or x_basis.shape[1] != y_basis.shape[1]:
        raise ValueError(
            "bases must be [kx, d] and [ky, d], "
            f"got x_basis {tuple(x_basis.shape)} and y_basis {tuple(y_basis.shape)}"
        )
    _check_finite("x_basis", x_basis)
    _check_finite("y_basis", y_basis)
    if (x_weights is None) != (y_weights is None):
        raise ValueError("give both x_weights and y_weights, or neither")
    if x_weights is not None and y_weights is not None:
        _check_weights("x_weights", x_weights, x_basis)
        _check_weights("y_weights", y_weights, y_basis)


def _check_weights(name: str, weights: Tensor, basis: Tensor) -> None:
    """`weights` must be [k], one finite non-negative value per row of `basis` [k, d]."""
    if tuple(weights.shape) != (basis.shape[0],):
        raise ValueError(
            f"{name} {tuple(weights.shape)} must be [{basis.shape[0]}], one per row of its basis {tuple(basis.shape)}"
        )
    _check_finite(name, weights)
    if bool((weights < 0).any()):
        raise ValueError(f"{name} holds negative values")


def _check_finite(name: str, tensor: Tensor) -> None:
    """Raise a ValueError naming `name` if `tensor` holds NaN or Inf."""
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} holds NaN or Inf")


def _weight_matrix(
    x_count: int, y_count: int, x_weights: Tensor | None, y_weights: Tensor | None, device: torch.device
) -> Tensor:
    """W [kx, ky] float64: outer(x_weights, y_weights), or the identity when unweighted."""
    if x_weights is None or y_weights is None:
        return torch.eye(x_count, y_count, dtype=torch.float64, device=device)
    return torch.outer(
        x_weights.to(device=device, dtype=torch.float64), y_weights.to(device=device, dtype=torch.float64)
    )


def _greedy_norm(scores: Tensor) -> float:
    """L2 norm of the min(kx, ky) entries greedily picked from `scores` [kx, ky] (non-negative).

    Each step takes the largest remaining entry and blanks its row and column. Every row's best
    remaining entry is cached, so a step only rescans the rows whose best column was just blanked:
    min(kx, ky) Python steps of O(kx) tensor work plus those rescans, instead of a full O(kx * ky)
    pass per step.
    """
    remaining = scores.clone()
    best_column = remaining.argmax(dim=1)
    best_value = remaining.gather(1, best_column[:, None]).squeeze(1)
    active = torch.ones_like(best_value, dtype=torch.bool)
    picked = remaining.new_empty(min(remaining.shape))
    for step in range(picked.numel()):
        # argmax returns the first maximum: the lowest row, and (cached) its lowest column, the
        # same tie-break as the authors' max-then-argmax over the whole matrix.
        row = int(torch.argmax(best_value))
        column = int(best_column[row])
        picked[step] = best_value[row]
        active[row] = False
        best_value[row] = -torch.inf
        remaining[:, column] = -torch.inf
        stale = torch.nonzero(active & (best_column == column)).squeeze(1)
        if stale.numel():
            best_column[stale] = remaining[stale].argmax(dim=1)
            best_value[stale] = remaining[stale, best_column[stale]]
    return float(torch.linalg.vector_norm(picked))
