"""Every result file gets one mode, the one the umask gives a new file, whichever library wrote it:
a shared cluster folder whose umask lets the group read must be able to read them all."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
import torch

from residual.io.atomic import atomic_path
from residual.io.tensors import save_tensors


@pytest.fixture(params=[0o002, 0o022, 0o077])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_safetensors_and_parquet_results_get_the_umask_mode(tmp_path: Path, umask: int) -> None:
    tensors, table = tmp_path / "results/pca.safetensors", tmp_path / "results/table.parquet"
    save_tensors(tensors, {"values": torch.zeros(2)}, {"format": "test"})
    with atomic_path(table) as tmp:
        pl.DataFrame({"value": [1]}).write_parquet(tmp)
    assert mode(tensors) == mode(table) == 0o666 & ~umask
    assert os.umask(umask) == umask  # reading the mode left the umask as it was
