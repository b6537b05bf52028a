"""`per_matrix`: batched decompositions split across single-threaded workers."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from residual.runtime.threads import per_matrix


def covariances(count: int, width: int = 24) -> torch.Tensor:
    values = torch.randn(count, 3 * width, width, generator=torch.Generator().manual_seed(count), dtype=torch.float64)
    return values.transpose(1, 2) @ values


@pytest.mark.parametrize(("threads", "count"), [(1, 5), (2, 5), (3, 2), (2, 1), (2, 0)])
def test_equals_one_batched_call_and_restores_the_thread_count(threads: int, count: int) -> None:
    batch = covariances(count)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        values, vectors = per_matrix(torch.linalg.eigh, batch)
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(previous)
    expected_values, expected_vectors = torch.linalg.eigh(batch)
    assert values.shape == expected_values.shape and vectors.shape == expected_vectors.shape
    # Same matrices, possibly another LAPACK thread count: equal to rounding, vectors up to sign.
    torch.testing.assert_close(values, expected_values, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close((vectors * expected_vectors).sum(dim=1).abs(), torch.ones(count, 24, dtype=torch.float64))


def test_several_batches_and_keyword_arguments() -> None:
    factors = torch.randn(4, 6, 30, dtype=torch.float64)
    scales = torch.rand(4, 6, 1, dtype=torch.float64)
    _, singular, _ = per_matrix(lambda a, b: torch.linalg.svd(a * b, full_matrices=False), factors, scales)
    torch.testing.assert_close(singular, torch.linalg.svdvals(factors * scales))
    _, direct, _ = per_matrix(partial(torch.linalg.svd, full_matrices=False), factors)
    torch.testing.assert_close(direct, torch.linalg.svdvals(factors))
