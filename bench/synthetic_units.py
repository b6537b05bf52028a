"""Synthetic unit files through a real model's unit map: the layout and map of the architecture,
random stored values. PCA and training cost depends only on the shapes, so these stand in for
paper-scale files that would take hours of CPU to encode."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from residual.models.loaded import LoadedModel
from residual.units.decompose import RawUnits
from residual.units.store import UnitWriter
from residual.units.unit_map import UnitMap, layout_of

BATCH = 500


def synthetic_unit_file(model: LoadedModel, samples: int, folder: Path, seed: int = 0, classes: int = 10) -> Path:
    """Write <folder>/unit_map.safetensors and <folder>/units.parquet (float16, `samples` rows):
    heads and MLPs of random low-rank structure, LayerNorm statistics in the ranges real towers
    show (ln_std 1-3), labels uniform in [0, classes). Returns the unit file's path."""
    folder.mkdir(parents=True, exist_ok=True)
    map_path, path = folder / "unit_map.safetensors", folder / "units.parquet"
    digest = UnitMap.from_tower(model.tower).save(map_path)
    layout = layout_of(model.tower)
    generator = torch.Generator().manual_seed(seed)
    rank = max(2, layout.head_dim // 4)
    head_mix = torch.randn(layout.layers, layout.heads, rank, layout.head_dim, generator=generator)
    mlp_mix = torch.randn(layout.layers + 1, 4 * rank, layout.out_dim, generator=generator) / rank
    metadata = {"unit_map": {"path": os.path.relpath(map_path, folder), "digest": digest}}
    writer = UnitWriter(path, layout, "float16", metadata)
    for start in range(0, samples, BATCH):
        size = min(BATCH, samples - start)
        heads = torch.einsum("blhr,lhrk->blhk", torch.randn(size, layout.layers, layout.heads, rank, generator=generator), head_mix)
        mlp = torch.einsum("bur,urd->bud", torch.randn(size, layout.layers + 1, 4 * rank, generator=generator), mlp_mix)
        raw = RawUnits(
            emb=mlp[:, 0] + 5.0,  # emb carries a large constant offset, as real ones do
            mlp=mlp[:, 1:],
            heads=heads,
            ln_mean=0.1 * torch.randn(size, generator=generator),
            ln_std=1.0 + 2.0 * torch.rand(size, generator=generator),
            embedding=torch.randn(size, layout.out_dim, generator=generator),
        )
        labels = torch.randint(0, classes, (size,), generator=generator)
        writer.write(raw, labels, torch.arange(start, start + size))
    writer.close()
    return path
