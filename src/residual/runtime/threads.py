"""Batched matrix decompositions on the CPU's threads, one matrix per thread.

LAPACK's own threading of one eigendecomposition synchronises its threads many times per matrix:
on a machine whose cores other jobs share (a Snakemake run, a cluster node), every barrier waits
for a descheduled thread, and the same [32, 512, 512] `eigh` that takes 0.3 s on one thread took
2 to 15 s on two. Splitting the batch across single-threaded calls keeps the speed of every core
on a quiet machine and degrades to one core's speed, never worse, on a busy one.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor


def per_matrix(function: Callable[..., tuple[Tensor, ...]], *batches: Tensor) -> tuple[Tensor, ...]:
    """`function(*batches)` for batches [G, ...] sharing G, computed in `torch.get_num_threads()`
    slices of G on single-threaded workers and concatenated back along G.

    `function` must treat the G matrices independently (a batched `torch.linalg` call does) and
    return a tuple of tensors [G, ...]. Off the CPU it is a plain call. On the CPU each matrix is
    computed by one thread whatever the thread count, so results do not depend on it.
    """
    if batches[0].device.type != "cpu":
        return function(*batches)
    threads = torch.get_num_threads()
    workers = max(1, min(threads, len(batches[0])))

    def single_threaded(arguments: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        torch.set_num_threads(1)
        return function(*arguments)

    slices = zip(*(batch.tensor_split(workers) for batch in batches))
    try:
        with ThreadPoolExecutor(workers) as pool:
            parts = list(pool.map(single_threaded, slices))
    finally:
        torch.set_num_threads(threads)
    return tuple(torch.cat(outputs) for outputs in zip(*parts))
