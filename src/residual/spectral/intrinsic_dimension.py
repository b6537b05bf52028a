"""Linear and nonlinear intrinsic dimension of a residual unit (METHOD sections 4 and 5).

- `linear_id`: k(t) of METHOD section 4 from a unit's PCA eigenvalues; the paper's linear ID is
  k(0.99).
- `two_nn`: the TwoNN estimator (Facco et al. 2017) as the authors ran it, which is DADApy's
  `compute_id_2NN(algorithm="base", mu_fraction=0.9)` after dropping duplicates and ties.

Both work on plain tensors so that callers can feed them stored eigenvalues or unit values
without going through the PCA module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

# Candidates kept per row by the fast distance search before the exact re-ranking picks two.
# Six spares absorb the rounding of the matmul-based distances, which can swap near-equal ranks.
CANDIDATES = 8
# Bytes of one square distance block: bounds the search's memory whatever n is. 16 MB (2,048 rows
# of float32) stays near the cache, where transposing a block costs an eighth of its matrix product.
BLOCK_BYTES = 16 * 2**20
# Its version, ID_VERSION, is in residual.spectral.versions: bump it there when a change to the estimators or their table changes results.


def linear_id(eigenvalues: Tensor, total_variance: Tensor | float, threshold: float = 0.99) -> int:
    """k(t): the first index where the cumulative explained variance ratio exceeds `threshold`, plus one.

    `eigenvalues` [k] sorted descending, possibly truncated to the numerically non-zero
    directions; `total_variance` is the sum of ALL eigenvalues, so the ratio is
    cumsum(eigenvalues) / total_variance (computed in float64).

    - Never exceeded (threshold >= 1, or a truncated list that stops short): returns
      len(eigenvalues), the most directions known to carry variance. (The authors' code silently
      returned 1 there.)
    - Zero-variance unit (total_variance == 0 or no eigenvalues): returns 0, since no direction
      carries variance; callers treat that unit's downstream quantities as undefined.

    Raises ValueError for a non-1-D `eigenvalues`, NaN/Inf anywhere, or a negative total.
    """
    if eigenvalues.ndim != 1:
        raise ValueError(f"eigenvalues must be 1-D, got shape {tuple(eigenvalues.shape)}")
    total = float(total_variance)
    if not math.isfinite(total) or total < 0:
        raise ValueError(f"total_variance must be finite and non-negative, got {total}")
    if not bool(torch.isfinite(eigenvalues).all()):
        raise ValueError("eigenvalues hold NaN or Inf")
    if total == 0 or eigenvalues.numel() == 0:
        return 0
    ratio = torch.cumsum(eigenvalues.to(torch.float64), dim=0) / total
    above = torch.nonzero(ratio > threshold)
    return int(above[0, 0]) + 1 if above.numel() else eigenvalues.numel()


@dataclass(frozen=True)
class TwoNN:
    """A TwoNN estimate.

    - id: the intrinsic dimension, NaN when too few usable points remain
    - points: how many ratios entered the regression (0 when id is NaN)
    - duplicates: points dropped because their nearest other point is identical (r1 == 0)
    - ties: points dropped, among the rest, because r1 == r2 exactly
    """

    id: float
    points: int
    duplicates: int
    ties: int


def two_nn(points: Tensor, fraction: float = 0.9, chunk_size: int | None = None) -> TwoNN:
    """TwoNN intrinsic dimension of `points` [n, d], on the device of `points`.

    Estimator (METHOD section 5; the authors' `twoNN` and DADApy's base algorithm):

    1. r1, r2: exact float64 distances from each point to its two nearest OTHER points
       (other by index, so an identical copy counts as a neighbour at distance 0).
    2. Drop points with r1 == 0 (`duplicates`), then points with r1 == r2 (`ties`); N remain.
    3. mu = r2 / r1 sorted ascending; F_i = i / N for i = 1..N.
    4. Keep the first min(floor(fraction * N), N - 1) pairs (log mu_i, -log(1 - F_i)).
       This is exactly the authors' `log(mu[:-1])[:floor(fraction * N)]`: the last point, where
       1 - F = 0, is dropped before truncating. For fraction < 1 the cap never binds, so it also
       equals DADApy's `np.sort(log_mus)[:int(N * mu_fraction)]` against
       `-log(1 - arange(1, n_eff + 1) / N)` (DADApy switches to its ML estimator at fraction 1).
    5. id = least-squares slope through the origin: sum(x * y) / sum(x * x), in float64.

    Neighbour search: square blocks of the [n, n] distance matrix, `chunk_size` rows a side (None:
    as many as fit `BLOCK_BYTES`), only those on and above the diagonal since it is symmetric. One
    matrix product per block on a centred copy (float32 or wider) gives the squared distances
    ||x_i||^2 + ||x_j||^2 - 2 x_i . x_j, and each row keeps the `CANDIDATES` nearest; their
    distances are then recomputed exactly as ||x_i - x_j|| in float64 from the original values and
    re-sorted. So duplicates give r1 == 0 and symmetric configurations give r1 == r2 bit-exactly.
    Memory beyond the input: one centred copy, two blocks and O(n * CANDIDATES); the n x n matrix
    is never built. A true second neighbour is missed only if the search's rounding pushes it
    beyond the candidates, i.e. never in practice.

    Degenerate input never raises: fewer than 3 points, fewer than 3 usable points after dropping
    (e.g. a zero-variance unit where every point is a duplicate), or an empty fit gives
    id = NaN with the dropped counts. Deterministic: same input, same bits on CPU.

    Raises ValueError for a non-2-D input, NaN/Inf rows (with their count), fraction outside
    (0, 1] or chunk_size < 1.
    """
    _check_points(points)
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if points.shape[0] < 3:
        return TwoNN(id=float("nan"), points=0, duplicates=0, ties=0)
    r1, r2 = _two_nearest(points, chunk_size)
    return _fit(r1, r2, fraction)


def _check_points(points: Tensor) -> None:
    """Reject anything but a finite [n, d] matrix, saying how many rows are non-finite."""
    if points.ndim != 2:
        raise ValueError(f"points must be [n, d], got shape {tuple(points.shape)}")
    bad = int((~torch.isfinite(points)).any(dim=1).sum())
    if bad:
        raise ValueError(f"{bad} of {points.shape[0]} rows hold NaN or Inf")


def _two_nearest(points: Tensor, chunk_size: int | None) -> tuple[Tensor, Tensor]:
    """r1, r2 [n] float64: exact distances from each row of `points` [n, d] to its two nearest other rows.

    The squared distances are symmetric, so only the blocks on and above the diagonal of the
    [n, n] matrix are computed: each block [a, b] proposes candidates both for its `a` rows (along
    its rows) and for its `b` rows (along its columns), which halves the matrix products. Every
    row keeps a running list of its `CANDIDATES` nearest proposals, merged block by block.
    """
    count, device = points.shape[0], points.device
    search = points.to(torch.promote_types(points.dtype, torch.float32))
    # The product's rounding grows with the points' norm, not their spread: centring keeps a unit
    # with a large mean offset (like emb) from scrambling its neighbour ranks.
    search = search - search.mean(dim=0)
    norms = torch.linalg.vector_norm(search, dim=1).square_()  # no [n, d] temporary
    size = chunk_size or max(1, math.isqrt(BLOCK_BYTES // search.element_size()))
    candidates = min(CANDIDATES, count - 1)
    best = torch.full((count, candidates), torch.inf, dtype=search.dtype, device=device)
    best_index = torch.zeros((count, candidates), dtype=torch.long, device=device)

    def propose(rows: slice, block: Tensor, first_column: int) -> None:
        """Merge the nearest columns of block [rows, columns] into the rows' running candidates."""
        values, indices = block.topk(min(candidates, block.shape[1]), dim=1, largest=False)
        merged = torch.cat([best[rows], values], dim=1)
        order = merged.topk(candidates, dim=1, largest=False).indices
        best[rows] = merged.gather(1, order)
        best_index[rows] = torch.cat([best_index[rows], indices + first_column], dim=1).gather(1, order)

    # Two buffers reused by every block: fresh ones of changing shapes fragment the heap, and the
    # process's resident size would grow with n instead of staying bounded by the block size.
    buffer = torch.empty(size * min(size, count), dtype=search.dtype, device=device)
    flipped = torch.empty_like(buffer)
    starts = range(0, count, size)
    for start in starts:
        rows = slice(start, min(start + size, count))
        for other in starts[start // size :]:
            columns = slice(other, min(other + size, count))
            shape = (rows.stop - rows.start, columns.stop - columns.start)
            block = buffer[: shape[0] * shape[1]].view(shape)
            torch.addmm(norms[columns][None, :], search[rows], search[columns].T, alpha=-2, out=block)
            block += norms[rows][:, None]
            if other == start:
                # Exclude self by index, not by distance: an identical copy must remain a neighbour.
                block.fill_diagonal_(torch.inf)
            propose(rows, block, other)
            if other != start:
                # topk along a transposed view is 3x slower than a contiguous copy plus topk.
                transposed = flipped[: shape[0] * shape[1]].view(shape[1], shape[0])
                propose(columns, transposed.copy_(block.T), start)
    return _exact_two_nearest(points, best_index)


def _exact_two_nearest(points: Tensor, candidates: Tensor) -> tuple[Tensor, Tensor]:
    """r1, r2 [n] float64: the two smallest exact distances ||x_i - x_j|| over the candidates [n, c] of each row.

    Rows go in chunks through two buffers allocated once, for the same reason as the search's.
    """
    count, width = candidates.shape
    rows_per_chunk = min(count, max(1, BLOCK_BYTES // (8 * width * points.shape[1])))
    gathered = torch.empty(rows_per_chunk * width, points.shape[1], dtype=points.dtype, device=points.device)
    differences = torch.empty(rows_per_chunk * width, points.shape[1], dtype=torch.float64, device=points.device)
    nearest = torch.empty(count, 2, dtype=torch.float64, device=points.device)
    for start in range(0, count, rows_per_chunk):
        rows = slice(start, min(start + rows_per_chunk, count))
        size = (rows.stop - rows.start) * width
        torch.index_select(points, 0, candidates[rows].reshape(-1), out=gathered[:size])
        work = differences[:size].copy_(gathered[:size]).view(-1, width, points.shape[1])
        work -= points[rows, None, :]  # promoted to float64 inside the kernel, no copy
        nearest[rows] = torch.linalg.vector_norm(work, dim=-1).sort(dim=1).values[:, :2]
    return nearest[:, 0], nearest[:, 1]


def _fit(r1: Tensor, r2: Tensor, fraction: float) -> TwoNN:
    """Steps 2-5 of `two_nn` on the neighbour distances r1, r2 [n]."""
    duplicate = r1 == 0
    tie = ~duplicate & (r1 == r2)
    usable = ~(duplicate | tie)
    duplicates, ties, remaining = int(duplicate.sum()), int(tie.sum()), int(usable.sum())
    fitted = min(math.floor(remaining * fraction), remaining - 1)
    if remaining < 3 or fitted < 1:
        return TwoNN(id=float("nan"), points=0, duplicates=duplicates, ties=ties)
    x = torch.log(r2[usable] / r1[usable]).sort().values[:fitted]
    ranks = torch.arange(1, fitted + 1, dtype=torch.float64, device=x.device)
    y = -torch.log1p(-ranks / remaining)
    denominator = float(x @ x)
    # All kept ratios can round to exactly 1 only in contrived data; the slope is then undefined.
    estimate = float(x @ y) / denominator if denominator > 0 else float("nan")
    return TwoNN(id=estimate, points=fitted, duplicates=duplicates, ties=ties)
