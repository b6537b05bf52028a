"""Shared fixtures: tiny model specs and a way to make random-init models sensitive to every term."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from snakemake_runs import REPO as REPO  # the checkout, for the tests that import it from here
from snakemake_runs import TINY, snakemake
from torch import nn

TINY_OPEN_CLIP = {
    "library": "open_clip",
    "arch": "ViT-B-32",
    "pretrained": None,
    "kwargs": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    },
}
TINY_TIMM = {
    "library": "timm",
    "arch": "vit_small_patch16_224",
    "pretrained": None,
    "kwargs": {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 48, "num_heads": 3},
}
TINY_DINOV2 = {
    "library": "timm",
    "arch": "vit_small_patch14_reg4_dinov2",
    "pretrained": None,
    "kwargs": {"img_size": 28, "depth": 2, "embed_dim": 48, "num_heads": 3},
}


def perturb(module: nn.Module, seed: int = 0) -> None:
    """Random-init models have LayerNorm gamma = 1, beta = 0, zero biases and 1e-5 layer scales,
    which would let a decomposition that ignores those terms pass. Give every 1-D parameter
    (norm affines, biases, layer scales, class/position tokens) a random O(1) value."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if parameter.ndim == 1 or "token" in name or "embedding" in name or "pos_embed" in name:
                noise = torch.randn(parameter.shape, generator=generator).to(parameter)
                parameter.copy_(0.5 * noise + (1.0 if name.endswith(("weight", "gamma")) and parameter.ndim == 1 else 0.0))


@pytest.fixture
def images() -> torch.Tensor:
    """A fixed batch of 3 preprocessed-looking images at 32x32 (tiny models)."""
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def digit_units(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Train/val/test unit files (float32) of the perturbed tiny open_clip model on 150 of
    scikit-learn's digits, 10 classes, beside their unit map: {'train': path, 'val': ..., 'test': ...}."""
    import polars as pl

    from residual import load_model
    from residual.data.sources import load_source
    from residual.data.splits import split_table
    from residual.units.encode import EncodeSettings, encode_split
    from residual.units.unit_map import UnitMap

    folder = tmp_path_factory.mktemp("digit_units")
    model = load_model(TINY_OPEN_CLIP, name="clip_tiny", device="cpu")
    perturb(model.module)
    source = load_source("digits", {"loader": "digits"}, 42)
    rows = split_table(source, {"rule": "resplit", "val": 0.2, "test": 0.2, "subset": 150}, 42, "digits")
    unit_map = folder / "unit_map.safetensors"
    UnitMap.from_tower(model.tower).save(unit_map)
    paths = {}
    for split in ("train", "val", "test"):
        paths[split] = folder / "digits" / f"{split}.parquet"
        selected = rows.filter(pl.col("split") == split)
        metadata = {"dataset": "digits", "split": split}
        encode_split(model, source, selected, paths[split], unit_map, EncodeSettings("float32", batch_size=32, rows_per_group=32), metadata)
    return paths


@pytest.fixture(scope="session", autouse=True)
def slurm_controller() -> Iterator[None]:
    """The test SLURM cluster (scripts/slurm-cluster.sh) up for the whole session where SLURM is
    installed (`make test` installs it for test_cluster.py): Snakemake's SLURM plugin runs
    `scontrol show config` whenever Snakemake starts, which waits ~9 s for a controller that is
    down, and the suite starts Snakemake about a hundred times. Stopped afterwards only if started
    here; where it cannot start (not root), the suite runs as before, only slower."""
    if shutil.which("scontrol") is None:
        yield
        return
    cluster = ["bash", str(REPO / "scripts/slurm-cluster.sh")]
    was_running = subprocess.run([*cluster, "status"], capture_output=True).returncode == 0
    started = was_running or subprocess.run([*cluster, "start"], capture_output=True, timeout=900).returncode == 0
    yield
    if started and not was_running:
        subprocess.run([*cluster, "stop"], capture_output=True, timeout=120)


@pytest.fixture(scope="session", autouse=True)
def preflight_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One machine cache (preflight passes, the charts' Vega script) for the session's Snakemake runs,
    whose run folders are all new; none in the user's home."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RESIDUAL_CACHE", str(tmp_path_factory.mktemp("residual_cache")))
        yield


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The tiny config run end to end from scratch (folder, Snakemake's output). Read-only for the
    tests that share it: they may plan (dry runs) in it, and run jobs in a `copy_run` of it."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    run = snakemake(workdir, "--cores", "2", configfiles=[TINY])
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return workdir, run.stdout + run.stderr


@pytest.fixture(scope="session")
def paper_plan(tmp_path_factory: pytest.TempPathFactory) -> str:
    """What `snakemake -n` prints for config.yaml (the paper's DAG, every job with its wildcards and
    resources, then the job-count table), built once for the tests that read it."""
    run = snakemake(tmp_path_factory.mktemp("paper_plan"), "-n", configfiles=[REPO / "config.yaml"], timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def digest(path: Path) -> str:
    """sha256 of the file's bytes; of its metadata and tensors for safetensors files, whose header
    lists the metadata in hash-map order (it differs between processes)."""
    if path.suffix != ".safetensors":
        return hashlib.sha256(path.read_bytes()).hexdigest()
    with safe_open(str(path), framework="pt") as handle:
        hasher = hashlib.sha256(repr(sorted((handle.metadata() or {}).items())).encode())
        for key in sorted(handle.keys()):
            hasher.update(key.encode() + handle.get_tensor(key).numpy().tobytes())
    return hasher.hexdigest()


def results(workdir: Path) -> dict[str, str]:
    """Digests of every file under results/ (temporaries included, so leftovers show up)."""
    return {str(path.relative_to(workdir)): digest(path) for path in sorted((workdir / "results").rglob("*")) if path.is_file()}
