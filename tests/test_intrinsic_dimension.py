"""Linear ID against scikit-learn's PCA, TwoNN against scikit-dimension and an independent reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import skdim
import torch
from scipy.spatial import cKDTree
from sklearn.decomposition import PCA

from residual.spectral.intrinsic_dimension import linear_id, two_nn


def _neighbours(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """r1, r2 and the index of the first neighbour, for duplicate-free `points` [n, d]."""
    distances, indices = cKDTree(points).query(points, k=3)
    return distances[:, 1], distances[:, 2], indices[:, 1]


def _reference_fit(mu: np.ndarray, fraction: float = 0.9) -> float:
    """DADApy's base 2NN on ratios mu = r2 / r1 (> 1), written from the algorithm, not its code."""
    count = len(mu)
    kept = int(np.floor(count * fraction))
    x = np.log(np.sort(mu))[:kept]
    y = -np.log(1 - np.arange(1, kept + 1) / count)
    return float(x @ y / (x @ x))


def _reference_two_nn(points: np.ndarray, fraction: float = 0.9) -> float:
    r1, r2, _ = _neighbours(points)
    return _reference_fit(r2 / r1, fraction)


def _subspace_sample(count: int, dimension: int, ambient: int, seed: int) -> np.ndarray:
    """Points uniform in a unit d-cube lying on a random d-dimensional linear subspace."""
    generator = np.random.default_rng(seed)
    basis = np.linalg.qr(generator.standard_normal((ambient, dimension)))[0].T
    return generator.uniform(size=(count, dimension)) @ basis


# --- linear_id ---------------------------------------------------------------------------------


def _spectrum(seed: int = 0) -> tuple[np.ndarray, torch.Tensor, float]:
    """Random data with a decaying spectrum, its eigenvalues S^2/(n-1) and their total."""
    generator = np.random.default_rng(seed)
    data = generator.standard_normal((300, 40)) * np.geomspace(5.0, 0.05, 40)
    centred = torch.from_numpy(data - data.mean(axis=0))
    eigenvalues = torch.linalg.svdvals(centred) ** 2 / (data.shape[0] - 1)
    return data, eigenvalues, float(eigenvalues.sum())


@pytest.mark.parametrize("threshold", [0.5, 0.8, 0.9, 0.99])
def test_linear_id_matches_sklearn(threshold: float) -> None:
    data, eigenvalues, total = _spectrum()
    # PCA(n_components=t) keeps the first index where the cumulative ratio exceeds t, plus one.
    expected = PCA(n_components=threshold, svd_solver="full").fit(data).n_components_
    cumulative = np.cumsum(PCA(svd_solver="full").fit(data).explained_variance_ratio_)
    assert expected == np.argmax(cumulative > threshold) + 1
    assert linear_id(eigenvalues, total, threshold) == expected
    # A truncated list gives the same k as long as it reaches past it.
    assert linear_id(eigenvalues[: expected + 2], torch.tensor(total), threshold) == expected


def test_linear_id_never_exceeded_returns_length() -> None:
    _, eigenvalues, total = _spectrum()
    assert linear_id(eigenvalues[:3], total, 0.99) == 3
    assert linear_id(eigenvalues, total, 1.0) == eigenvalues.numel()


def test_linear_id_zero_variance_is_zero() -> None:
    assert linear_id(torch.zeros(5), 0.0) == 0
    assert linear_id(torch.empty(0), 0.0) == 0
    assert linear_id(torch.empty(0), torch.tensor(0.0)) == 0


def test_linear_id_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="NaN"):
        linear_id(torch.tensor([1.0, float("nan")]), 2.0)
    with pytest.raises(ValueError, match="total_variance"):
        linear_id(torch.tensor([1.0]), -1.0)
    with pytest.raises(ValueError, match="1-D"):
        linear_id(torch.ones(2, 2), 4.0)


# --- two_nn: oracles ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_two_nn_equals_skdim_on_continuous_data(seed: int) -> None:
    # skdim's linear TwoNN keeps int(N * (1 - discard)) ratios against F_i = i / N, like DADApy,
    # but keeps ties (mu = 1) instead of dropping them. Continuous random data has no ties or
    # duplicates, so both compute the same sums; 10 features keep skdim on its exact k-d tree
    # search (above 25 it switches to dot-product distances).
    points = np.random.default_rng(seed).standard_normal((800, 10))
    expected = skdim.id.TwoNN(discard_fraction=0.1).fit(points).dimension_
    result = two_nn(torch.from_numpy(points))
    assert result.id == pytest.approx(expected, rel=1e-10)
    assert (result.points, result.duplicates, result.ties) == (math.floor(800 * 0.9), 0, 0)


@pytest.mark.parametrize(("dtype", "fraction"), [(torch.float64, 0.9), (torch.float32, 0.9), (torch.float64, 0.5)])
def test_two_nn_equals_reference(dtype: torch.dtype, fraction: float) -> None:
    points = torch.randn(600, 50, generator=torch.Generator().manual_seed(3), dtype=dtype)
    expected = _reference_two_nn(points.double().numpy(), fraction)
    assert two_nn(points, fraction).id == pytest.approx(expected, rel=1e-12)


def test_two_nn_fraction_one_drops_the_last_point() -> None:
    points = np.random.default_rng(4).standard_normal((300, 6))
    r1, r2, _ = _neighbours(points)
    x = np.log(np.sort(r2 / r1))[:-1]
    y = -np.log(1 - np.arange(1, 300) / 300)
    result = two_nn(torch.from_numpy(points), fraction=1.0)
    assert result.points == 299
    assert result.id == pytest.approx(float(x @ y / (x @ x)), rel=1e-12)


@pytest.mark.parametrize("dimension", [2, 5])
def test_two_nn_known_dimension(dimension: int) -> None:
    # Over 20 seeds at n = 2000 the estimate spreads by about 2.5% of d (std 0.05 at d = 2, 0.12
    # at d = 5) and the cube's boundary biases it low by about 5% at d = 5 (mean 4.73). 15% of d
    # covers the bias plus four standard deviations.
    points = torch.from_numpy(_subspace_sample(2000, dimension, 50, seed=dimension)).float()
    assert two_nn(points).id == pytest.approx(dimension, rel=0.15)


def test_two_nn_exact_despite_large_offset() -> None:
    # Neighbour gaps of ~1e-2 under a common offset of 1e3: float32 matmul distances on the raw
    # values would be noise; the centred search plus exact re-ranking must still be exact.
    generator = torch.Generator().manual_seed(5)
    points = (1000.0 + 1e-2 * torch.randn(500, 50, generator=generator)).float()
    expected = _reference_two_nn(points.double().numpy())
    assert two_nn(points).id == pytest.approx(expected, rel=1e-12)


# --- two_nn: duplicates, ties, degenerate input ------------------------------------------------


def test_two_nn_duplicates_and_ties() -> None:
    base = np.random.default_rng(6).standard_normal((300, 8))
    copied = np.arange(10)
    points = np.concatenate([base, base[copied]])
    # Both copies of a duplicated point have r1 == 0. Any other point whose nearest neighbour is
    # a duplicated point now sees it twice at the same distance, so r1 == r2: a tie. Every other
    # point keeps its deduplicated (r1, r2). So the estimate is the deduplicated data's, fitted
    # only on the points that are neither duplicated nor nearest-neighboured by a duplicate.
    r1, r2, first = _neighbours(base)
    duplicated = np.isin(np.arange(300), copied)
    tied = ~duplicated & np.isin(first, copied)
    assert tied.sum() > 0
    kept = ~(duplicated | tied)
    result = two_nn(torch.from_numpy(points))
    assert (result.duplicates, result.ties) == (20, int(tied.sum()))
    assert result.points == math.floor(kept.sum() * 0.9)
    assert result.id == pytest.approx(_reference_fit(r2[kept] / r1[kept]), rel=1e-12)


def test_two_nn_all_identical_points_is_nan() -> None:
    result = two_nn(torch.full((50, 16), 3.25))
    assert math.isnan(result.id)
    assert (result.points, result.duplicates, result.ties) == (0, 50, 0)


def test_two_nn_lattice_is_all_ties() -> None:
    # On an integer grid every point has at least two neighbours at distance exactly 1.
    grid = torch.cartesian_prod(torch.arange(10.0), torch.arange(10.0))
    result = two_nn(grid)
    assert math.isnan(result.id)
    assert (result.points, result.duplicates, result.ties) == (0, 0, 100)


def test_two_nn_too_few_points_is_nan() -> None:
    pair = two_nn(torch.randn(2, 4))
    assert math.isnan(pair.id)
    assert (pair.points, pair.duplicates, pair.ties) == (0, 0, 0)
    # Two duplicates, and (1, 0) sees both copies at distance 1: one usable point is left.
    result = two_nn(torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [3.0, 0.0]]))
    assert math.isnan(result.id)
    assert (result.points, result.duplicates, result.ties) == (0, 2, 1)


def test_two_nn_chunking_and_repeats_are_bit_identical() -> None:
    points = torch.randn(400, 30, generator=torch.Generator().manual_seed(7))
    whole = two_nn(points, chunk_size=4096)
    assert two_nn(points, chunk_size=7) == whole
    assert two_nn(points, chunk_size=4096) == whole


def test_two_nn_rejects_non_finite_rows() -> None:
    points = torch.randn(20, 3)
    points[4, 1] = float("nan")
    points[9] = float("inf")
    with pytest.raises(ValueError, match="2 of 20 rows"):
        two_nn(points)


def test_two_nn_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        two_nn(torch.randn(10))
    with pytest.raises(ValueError, match="fraction"):
        two_nn(torch.randn(10, 2), fraction=0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        two_nn(torch.randn(10, 2), chunk_size=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_two_nn_cuda_matches_cpu() -> None:
    points = torch.randn(3000, 64, generator=torch.Generator().manual_seed(8))
    cpu = two_nn(points, chunk_size=1000)
    cuda = two_nn(points.cuda(), chunk_size=1000)
    assert (cuda.points, cuda.duplicates, cuda.ties) == (cpu.points, cpu.duplicates, cpu.ties)
    assert cuda.id == pytest.approx(cpu.id, rel=1e-12)
