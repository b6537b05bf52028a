"""The normalised spectral cosine: known answers, an independent reference, degenerate input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from residual.spectral.similarity import spectral_cosine, unit_similarity


def _orthonormal(rows: int, dimension: int, seed: int) -> torch.Tensor:
    """[rows, dimension] with orthonormal rows."""
    generator = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(dimension, rows, generator=generator, dtype=torch.float64))[0].T


def _decaying(count: int, seed: int) -> torch.Tensor:
    """[count] positive weights sorted descending, like eigenvalues."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, generator=generator, dtype=torch.float64).sort(descending=True).values + 0.01


def _reference(x: np.ndarray, y: np.ndarray, x_weights: np.ndarray | None, y_weights: np.ndarray | None) -> float:
    """METHOD section 6 in numpy. The greedy loop is replaced by one scan of all entries in
    descending order (ties in row-major order), keeping an entry when its row and column are
    both unused: the same picks, found by a different algorithm."""
    weights = np.eye(len(x), len(y)) if x_weights is None else np.outer(x_weights, y_weights)
    scores = np.abs(x @ y.T) * weights / np.linalg.norm(np.diag(weights))
    rows: set[int] = set()
    columns: set[int] = set()
    picked: list[float] = []
    for flat in np.argsort(-scores.ravel(), kind="stable"):
        row, column = divmod(int(flat), scores.shape[1])
        if row not in rows and column not in columns:
            rows.add(row)
            columns.add(column)
            picked.append(scores[row, column])
    return float(np.linalg.norm(picked))


def test_identical_bases_give_one() -> None:
    basis = _orthonormal(6, 20, seed=0)
    assert spectral_cosine(basis, basis) == pytest.approx(1.0, abs=1e-12)
    weights = _decaying(6, seed=1)
    assert spectral_cosine(basis, basis, weights, weights) == pytest.approx(1.0, abs=1e-12)


def test_sign_flips_do_not_matter() -> None:
    # PCA fixes each direction only up to sign.
    basis = _orthonormal(5, 12, seed=2)
    flipped = basis * torch.tensor([1.0, -1.0, -1.0, 1.0, -1.0], dtype=torch.float64)[:, None]
    weights = _decaying(5, seed=3)
    assert spectral_cosine(basis, flipped) == pytest.approx(1.0, abs=1e-12)
    assert spectral_cosine(basis, flipped, weights, weights) == pytest.approx(1.0, abs=1e-12)


def test_rotation_within_the_span_is_not_invariant() -> None:
    # The score compares principal directions, not subspaces. Y = Q X with Q orthogonal spans the
    # same subspace, but |X Y^T| = |Q^T|, and the identity weights only look at its diagonal: the
    # unweighted score is sqrt(mean(diag(Q)^2)) < 1, not 1.
    basis = _orthonormal(4, 10, seed=4)
    rotation = _orthonormal(4, 4, seed=5)
    expected = math.sqrt(float((torch.diagonal(rotation) ** 2).mean()))
    assert expected < 0.99
    assert spectral_cosine(basis, rotation @ basis) == pytest.approx(expected, abs=1e-12)


def test_orthogonal_bases_give_zero() -> None:
    axes = torch.eye(6, dtype=torch.float64)
    assert spectral_cosine(axes[:3], axes[3:]) == 0.0
    assert spectral_cosine(axes[:3], axes[3:], _decaying(3, seed=6), _decaying(3, seed=7)) == 0.0


def test_partial_overlap_known_answers() -> None:
    axes = torch.eye(3, dtype=torch.float64)
    x, y = axes[[0, 1]], axes[[0, 2]]
    # |X Y^T| = [[1, 0], [0, 0]]. Unweighted: W = I / sqrt(2), so the picks are 1/sqrt(2) and 0.
    assert spectral_cosine(x, y) == pytest.approx(1 / math.sqrt(2), abs=1e-15)
    # Weighted (2, 1) x (3, 1): W = [[6, 2], [3, 1]] / sqrt(6^2 + 1^2); picks 6/sqrt(37) and 0.
    weighted = spectral_cosine(x, y, torch.tensor([2.0, 1.0]), torch.tensor([3.0, 1.0]))
    assert weighted == pytest.approx(6 / math.sqrt(37), abs=1e-15)


def test_swapped_components() -> None:
    axes = torch.eye(2, dtype=torch.float64)
    swapped = axes[[1, 0]]
    # |X Y^T| = [[0, 1], [1, 0]]. The identity weights keep only its zero diagonal.
    assert spectral_cosine(axes, swapped) == 0.0
    # Equal weights: C = [[0, 1], [1, 0]] / sqrt(2); the greedy picks both off-diagonal entries.
    ones = torch.ones(2, dtype=torch.float64)
    assert spectral_cosine(axes, swapped, ones, ones) == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize(("x_count", "y_count"), [(5, 5), (7, 4), (3, 9), (1, 6)])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_reference(x_count: int, y_count: int, weighted: bool) -> None:
    # Random bases of one 10-dimensional space overlap substantially, so the picks are non-trivial.
    space = _orthonormal(10, 30, seed=8)
    x = _orthonormal(x_count, 10, seed=9) @ space
    y = _orthonormal(y_count, 10, seed=10) @ space
    x_weights = _decaying(x_count, seed=11) if weighted else None
    y_weights = _decaying(y_count, seed=12) if weighted else None
    expected = _reference(
        x.numpy(),
        y.numpy(),
        None if x_weights is None else x_weights.numpy(),
        None if y_weights is None else y_weights.numpy(),
    )
    assert spectral_cosine(x, y, x_weights, y_weights) == pytest.approx(expected, abs=1e-12)


def _tied_pair() -> torch.Tensor:
    """[2, 4] orthonormal rows whose |cosines| with e1, e2 are [[1/2, 1/2], [1/2, 1/4]]."""
    third = -0.125 / math.sqrt(0.5)
    return torch.tensor(
        [[0.5, 0.5, math.sqrt(0.5), 0.0], [0.5, -0.25, third, math.sqrt(1 - 0.3125 - third**2)]],
        dtype=torch.float64,
    )


def test_ties_break_to_the_first_entry_in_row_major_order() -> None:
    # With unit weights the greedy first meets the tie (0, 0) = (0, 1) = (1, 0) = 1/2. The
    # authors' argmax takes (0, 0), leaving (1, 1) = 1/4: sqrt((1/4 + 1/16) / 2). Taking (0, 1)
    # would leave (1, 0) = 1/2 and give 1/2.
    y = _tied_pair()
    assert torch.allclose(y @ y.T, torch.eye(2, dtype=torch.float64), atol=1e-15)
    ones = torch.ones(2, dtype=torch.float64)
    result = spectral_cosine(torch.eye(4, dtype=torch.float64)[:2], y, ones, ones)
    assert result == pytest.approx(math.sqrt(0.3125 / 2), abs=1e-15)


@pytest.mark.parametrize("seed", range(6))
def test_matches_reference_with_many_ties(seed: int) -> None:
    # Three shuffled copies of the tied pair, weights 1 or 2: few distinct scores, and for half the
    # seeds (0, 3 and 5 here) breaking ties by the last entry instead gives a different value.
    generator = torch.Generator().manual_seed(seed)
    x = torch.block_diag(*[torch.eye(4, dtype=torch.float64)[:2]] * 3)[torch.randperm(6, generator=generator)]
    y = torch.block_diag(*[_tied_pair()] * 3)[torch.randperm(6, generator=generator)]
    x_weights = torch.randint(1, 3, (6,), generator=generator).double()
    y_weights = torch.randint(1, 3, (6,), generator=generator).double()
    expected = _reference(x.numpy(), y.numpy(), x_weights.numpy(), y_weights.numpy())
    assert spectral_cosine(x, y, x_weights, y_weights) == pytest.approx(expected, abs=1e-12)


def test_symmetric_and_scale_free() -> None:
    x, y = _orthonormal(6, 15, seed=13), _orthonormal(4, 15, seed=14)
    x_weights, y_weights = _decaying(6, seed=15), _decaying(4, seed=16)
    forward = spectral_cosine(x, y, x_weights, y_weights)
    assert spectral_cosine(y, x, y_weights, x_weights) == pytest.approx(forward, abs=1e-12)
    assert spectral_cosine(y, x) == pytest.approx(spectral_cosine(x, y), abs=1e-12)
    # Eigenvalues S^2 / (n-1) and the authors' S^2 differ by a constant, which cancels.
    assert spectral_cosine(x, y, 7.0 * x_weights, y_weights) == pytest.approx(forward, abs=1e-12)


def test_float32_inputs_are_computed_in_float64() -> None:
    x, y = _orthonormal(5, 12, seed=17), _orthonormal(5, 12, seed=18)
    assert spectral_cosine(x.float(), y.float()) == pytest.approx(
        spectral_cosine(x.float().double(), y.float().double()), abs=1e-15
    )


def test_degenerate_cases_are_nan() -> None:
    basis = _orthonormal(3, 8, seed=19)
    assert math.isnan(spectral_cosine(basis[:0], basis))
    assert math.isnan(spectral_cosine(basis, basis[:0], torch.ones(3), torch.ones(0)))
    assert math.isnan(spectral_cosine(basis, basis, torch.zeros(3), torch.ones(3)))


@pytest.mark.parametrize("argument", ["x_basis", "y_basis", "x_weights", "y_weights"])
def test_non_finite_input_names_the_argument(argument: str) -> None:
    values = {
        "x_basis": _orthonormal(3, 8, seed=20),
        "y_basis": _orthonormal(2, 8, seed=21),
        "x_weights": torch.ones(3),
        "y_weights": torch.ones(2),
    }
    values[argument] = values[argument].clone()
    values[argument][0] = float("nan")
    with pytest.raises(ValueError, match=f"{argument} holds NaN or Inf"):
        spectral_cosine(**values)


def test_bad_shapes_and_weights_are_rejected() -> None:
    x, y = _orthonormal(3, 8, seed=22), _orthonormal(2, 7, seed=23)
    with pytest.raises(ValueError, match=r"x_basis \(3, 8\) and y_basis \(2, 7\)"):
        spectral_cosine(x, y)
    y = _orthonormal(2, 8, seed=23)
    with pytest.raises(ValueError, match=r"y_weights \(3,\) must be \[2\]"):
        spectral_cosine(x, y, torch.ones(3), torch.ones(3))
    with pytest.raises(ValueError, match="both"):
        spectral_cosine(x, y, torch.ones(3), None)
    with pytest.raises(ValueError, match="negative"):
        spectral_cosine(x, y, torch.tensor([1.0, -1.0, 0.5]), torch.ones(2))


def _pca(data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Components [d, d], eigenvalues S^2/(n-1) [d] and their total, for data [n, d]."""
    centred = data - data.mean(dim=0)
    _, singular, components = torch.linalg.svd(centred, full_matrices=False)
    eigenvalues = singular**2 / (data.shape[0] - 1)
    return components, eigenvalues, float(eigenvalues.sum())


def test_unit_similarity_keeps_k_components_per_side() -> None:
    generator = torch.Generator().manual_seed(24)
    x_scales = torch.logspace(1, -2, 16, dtype=torch.float64)
    y_scales = torch.logspace(1, -0.5, 16, dtype=torch.float64).flip(0)
    x_pca = _pca(torch.randn(400, 16, generator=generator, dtype=torch.float64) * x_scales)
    y_pca = _pca(torch.randn(300, 16, generator=generator, dtype=torch.float64) * y_scales)
    counts = [int(np.argmax(np.cumsum(pca[1].numpy()) / pca[2] > 0.9)) + 1 for pca in (x_pca, y_pca)]
    assert counts[0] != counts[1]
    x_basis, y_basis = x_pca[0][: counts[0]], y_pca[0][: counts[1]]
    weighted, unweighted = unit_similarity(*x_pca, *y_pca, threshold=0.9)
    assert weighted == spectral_cosine(x_basis, y_basis, x_pca[1][: counts[0]], y_pca[1][: counts[1]])
    assert unweighted == spectral_cosine(x_basis, y_basis)
    assert unit_similarity(*x_pca, *x_pca) == pytest.approx((1.0, 1.0), abs=1e-12)


def test_unit_similarity_zero_variance_is_nan() -> None:
    x_pca = _pca(torch.randn(50, 6, generator=torch.Generator().manual_seed(25), dtype=torch.float64))
    constant = (torch.eye(6, dtype=torch.float64), torch.zeros(6, dtype=torch.float64), 0.0)
    for pair in (unit_similarity(*x_pca, *constant), unit_similarity(*constant, *x_pca)):
        assert all(math.isnan(value) for value in pair)
