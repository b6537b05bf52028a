"""Per-token decomposition of heads (residual.units.tokens), the head maps of a task dataset
(residual.heads.maps) and their pictures (residual.report.map_charts)."""

from __future__ import annotations

import base64
import dataclasses
import io
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from chart_tables import synthetic_maps
from conftest import TINY_DINOV2, TINY_OPEN_CLIP, TINY_TIMM, perturb
from PIL import Image
from snakemake_runs import tiny_config
from test_blip import SPEC as TINY_BLIP
from test_transformers import FAMILIES, SHAPES
from test_transformers import spec as transformers_spec

from residual import decompose, decompose_tokens, load_model, read_units
from residual.alignment.classifier import ClassWeights, class_means_from_units
from residual.config.errors import ConfigError
from residual.config.validate import validate_config
from residual.data.sources import load_source
from residual.data.splits import split_table
from residual.heads.maps import HeadMaps, MapFiles, head_maps, pick_images
from residual.heads.options import MapOptions, ScoreOptions
from residual.heads.scores import score_heads, scores_table
from residual.models.tower import UnsupportedModelError
from residual.report.map_cells import map_cells, overlay
from residual.report.map_charts import DISPLAY, textspan_texts
from residual.spectral.pca import fit_unit_file
from residual.units.guards import TOLERANCE
from residual.units.layout import is_head
from residual.units.unit_map import layout_of

LIBRARIES = [
    pytest.param(TINY_OPEN_CLIP, id="open_clip"),
    pytest.param(TINY_TIMM, id="timm"),
    pytest.param(TINY_DINOV2, id="timm-dinov2-registers"),
    pytest.param({**TINY_TIMM, "kwargs": {**TINY_TIMM["kwargs"], "qk_norm": True}}, id="timm-qk-norm"),
    pytest.param(TINY_BLIP, id="transformers-blip"),
    *(pytest.param(transformers_spec(arch, FAMILIES[arch](SHAPES[1])), id=f"transformers-{arch}") for arch in ("CLIPModel", "ViTModel", "Dinov2Model")),
]


@pytest.mark.parametrize("spec", LIBRARIES)
def test_token_parts_sum_to_each_heads_unit(spec: dict) -> None:
    model = load_model(spec, device="cpu")
    perturb(model.module)
    images = torch.randn(2, 3, *model.input_size, generator=torch.Generator().manual_seed(0))
    parts = decompose_tokens(model, images)
    heads = [name for name in layout_of(model.tower).names if is_head(name)]
    rows, columns = parts.grid
    assert parts.names == heads and parts.tokens.shape == (2, len(heads), len(parts.prefix) + rows * columns, layout_of(model.tower).out_dim)
    assert parts.error <= TOLERANCE
    # The units are decompose's own, bit for bit: the token split runs in the same forward.
    positions = [layout_of(model.tower).index(name) for name in heads]
    # The same forward pass: agreement to float32 rounding, whatever the CPU's kernels.
    torch.testing.assert_close(parts.units, decompose(model, images).values[:, positions], rtol=0, atol=1e-6)
    assert parts.patches.shape == (2, len(heads), rows, columns, layout_of(model.tower).out_dim)
    # The CLS token and the registers are kept apart from the patch grid.
    expected = ("cls", "register_0", "register_1", "register_2", "register_3") if spec is TINY_DINOV2 else ("cls",)
    assert parts.prefix == expected


def test_a_head_that_attends_to_one_patch_has_its_whole_map_there() -> None:
    """Synthetic weights: head 0 of layer 0 queries a constant, and its keys read one channel, which
    only the patch at (1, 2) carries strongly (its position embedding), so it attends to that patch alone."""
    model = load_model(TINY_TIMM, device="cpu")
    module, (row, column) = model.module, (1, 2)
    columns, width, head_dim = model.tower.grid[1], layout_of(model.tower).heads * layout_of(model.tower).head_dim, layout_of(model.tower).head_dim
    with torch.no_grad():
        module.pos_embed[0, 1 + row * columns + column, 0] += 1000.0  # one prefix token, the CLS
        qkv = module.blocks[0].attn.qkv
        qkv.weight[:head_dim] = 0
        qkv.bias[:head_dim] = 0
        qkv.bias[0] = 50.0
        qkv.weight[width : width + head_dim] = 0
        qkv.weight[width, 0] = 1.0
    images = torch.randn(3, 3, *model.input_size, generator=torch.Generator().manual_seed(2))
    parts = decompose_tokens(model, images, ["head_0_0", "head_1_2"])
    assert parts.error <= TOLERANCE
    direction = torch.randn(layout_of(model.tower).out_dim, generator=torch.Generator().manual_seed(3))
    focused = parts.patches[:, 0] @ direction  # [B, rows, columns]
    elsewhere = focused.clone()
    elsewhere[:, row, column] = 0
    assert bool((focused[:, row, column].abs() > 0).all())
    assert float(elsewhere.abs().max()) <= 1e-6 * float(focused.abs().amax())
    assert float(parts.tokens[:, 0, 0].abs().max()) <= 1e-6 * float(parts.tokens[:, 0].abs().max()), "nothing from the CLS token"
    assert float((parts.patches[:, 1] @ direction).abs().flatten(1).amax(dim=1).min()) > 0, "the other head still looks around"


def test_models_whose_tokens_are_not_a_patch_grid_are_refused() -> None:
    with pytest.raises(UnsupportedModelError, match="CLS-token"):  # a pooling model never loads
        load_model({**TINY_TIMM, "kwargs": {**TINY_TIMM["kwargs"], "global_pool": "avg"}}, device="cpu")
    model = load_model(TINY_OPEN_CLIP, name="tiny", device="cpu")
    images = torch.randn(1, 3, *model.input_size)
    model.tower = dataclasses.replace(model.tower, grid=None)
    with pytest.raises(UnsupportedModelError, match="model 'tiny': its adapter gives no patch grid"):
        decompose_tokens(model, images)
    model.tower = dataclasses.replace(model.tower, grid=(3, 3))
    with pytest.raises(UnsupportedModelError, match=r"attends over 17 tokens, but its prefix \['cls'\] and 3 x 3 patch grid make 10"):
        decompose_tokens(model, images)
    with pytest.raises(ValueError, match="'mlp_0' is not an attention head"):
        decompose_tokens(load_model(TINY_OPEN_CLIP, device="cpu"), images, ["mlp_0"])


@pytest.fixture(scope="module")
def map_files(digit_units: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> MapFiles:
    """The files a maps job reads, for the tiny open_clip model of `digit_units` on its digits."""
    folder = tmp_path_factory.mktemp("maps")
    source = load_source("digits", {"loader": "digits"}, 42)
    split_table(source, {"rule": "resplit", "val": 0.2, "test": 0.2, "subset": 150}, 42, "digits").write_parquet(folder / "split.parquet")
    means = class_means_from_units(digit_units["train"], 10, normalize=False)
    ClassWeights(means, [str(digit) for digit in range(10)], "class_means", 100.0).save(folder / "classifier.safetensors")
    scores = score_heads(digit_units["val"], folder / "classifier.safetensors", ScoreOptions(["task_conditioned"], []), 64, "cpu")
    scores_table(scores).write_parquet(folder / "scores.parquet")
    fit_unit_file(digit_units["train"]).save(folder / "pca.safetensors")
    unit_map = digit_units["train"].parent.parent / "unit_map.safetensors"
    return MapFiles(folder / "split.parquet", folder / "scores.parquet", folder / "classifier.safetensors", folder / "pca.safetensors", unit_map)


def digits_maps(files: MapFiles, options: MapOptions) -> HeadMaps:
    model = load_model(TINY_OPEN_CLIP, name="clip_tiny", device="cpu")
    perturb(model.module)  # the weights `digit_units` encoded with
    return head_maps(model, "digits", load_source("digits", {"loader": "digits"}, 42), files, options, batch_size=2)


def test_maps_of_the_top_heads_are_their_projected_units_and_seeded(digit_units: dict[str, Path], map_files: MapFiles, tmp_path: Path) -> None:
    options = MapOptions(images_per_class=2, classes=3, heads=2, components=2, fraction=0.5, seed=7)
    maps = digits_maps(map_files, options)
    ranked = pl.read_parquet(map_files.scores).sort("rank")["unit"].to_list()
    assert maps.heads == ranked[:2] and maps.maps == ["class", "pc1", "pc2"]
    assert maps.values.shape == (6, 2, 3, 1 + 16) and maps.images.shape == (6, 32, 32, 3) and maps.images.dtype == torch.uint8
    assert len(set(maps.labels.tolist())) == 3 and maps.labels.tolist() == sorted(maps.labels.tolist())

    # Tokens plus offset: the stored unit projected on the class direction and on the components.
    stored = read_units(digit_units["test"], units=maps.heads)
    rows = [stored.sample_ids.tolist().index(sample) for sample in maps.sample_ids.tolist()]
    means = class_means_from_units(digit_units["train"], 10, normalize=False)
    directions = means[maps.labels] - means.mean(dim=0)  # [I, d]
    expected = torch.einsum("ikd,id->ik", stored.values[rows], directions)
    projected = maps.values.sum(dim=-1) + maps.offsets  # [I, K, M]
    assert torch.allclose(projected[:, :, 0], expected, rtol=0, atol=1e-4 * float(expected.abs().max()))
    assert torch.equal(maps.predictions, (stored.embedding[rows] @ means.T).argmax(dim=-1))

    maps.save(tmp_path / "maps.safetensors")
    again = HeadMaps.load(tmp_path / "maps.safetensors")
    assert torch.equal(again.values, maps.values) and again.heads == maps.heads and again.grid == maps.grid
    assert again.metadata["options"] == options.params() and again.metadata["dataset"] == "digits"
    repeated = digits_maps(map_files, options)
    assert torch.equal(repeated.values, maps.values) and torch.equal(repeated.sample_ids, maps.sample_ids)
    other = digits_maps(map_files, dataclasses.replace(options, seed=8))
    assert not torch.equal(other.sample_ids, maps.sample_ids)


def test_images_are_picked_per_class_with_the_seed() -> None:
    rows = pl.DataFrame({"sample_id": list(range(40)), "label": [index % 5 for index in range(40)]})
    picked = pick_images(rows, MapOptions(images_per_class=3, classes=4, seed=1))
    assert picked.height == 12 and picked["label"].n_unique() == 4 and picked.equals(picked.sort("label", "sample_id"))
    assert picked.equals(pick_images(rows, MapOptions(images_per_class=3, classes=4, seed=1)))
    assert not picked.equals(pick_images(rows, MapOptions(images_per_class=3, classes=4, seed=2)))
    assert pick_images(rows, MapOptions(images_per_class=20, classes=None)).height == 40, "a class with fewer gives all it has"


def test_map_options_come_from_the_config() -> None:
    config = tiny_config()
    config.update(maps={"classes": None, "heads": 3}, heads={"table_fraction": 0.1})
    validate_config(config, source="test")
    options = MapOptions.from_config(config)
    assert (options.classes, options.heads, options.fraction, options.seed) == (None, 3, 0.1, 42)
    config["heads"]["scores"] = ["supervised"]
    with pytest.raises(ConfigError, match="`maps.score`: 'task_conditioned' is not one of `heads.scores`"):
        MapOptions.from_config(config)
    with pytest.raises(ValueError, match="`maps.images_per_class` is 0"):
        MapOptions(images_per_class=0)


def decoded(url: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(url.removeprefix("data:image/png;base64,")))).convert("RGB")


def test_overlays_colour_only_the_patches_that_carry_the_map() -> None:
    pixels = torch.randint(0, 256, (12, 18, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    plain = decoded(overlay(pixels, torch.zeros(2, 3), 1.0))
    assert plain.size == (DISPLAY, round(12 * DISPLAY / 18))
    grey = np.asarray(plain)
    assert (grey == grey[..., :1]).all(), "no map: the image in grey"
    patches = torch.zeros(2, 3)
    patches[1, 2] = 5.0
    marked = decoded(overlay(pixels, patches, 5.0))
    rows, columns = (np.asarray(marked) != np.asarray(marked)[..., :1]).any(axis=-1).nonzero()
    assert len(rows) and rows.min() >= marked.height // 2 and columns.min() >= 2 * DISPLAY // 3, "only the bottom right patch"


def test_cells_carry_every_drawn_map_and_the_texts() -> None:
    maps = synthetic_maps()
    cells = map_cells(maps, {"head_2_1": ["TextSpan on digits:", "a zero"]})
    assert cells.height == 3 * (3 + 2), "head_1_0 has no second component"
    first = cells.row(0, named=True)
    assert first["image"] == "1. zero / zero" and first["texts"] == ["TextSpan on digits:", "a zero"]
    assert cells.filter(pl.col("map") != "class")["texts"].list.len().max() == 0
    assert cells["row"].unique(maintain_order=True).to_list()[:2] == ["head_2_1: true class", "head_2_1: PC1 (50% of its variance)"]
    totals = (maps.values.sum(dim=-1) + maps.offsets)[:, 0, 0]
    assert cells.filter((pl.col("unit") == "head_2_1") & (pl.col("map") == "class"))["total"].to_list() == pytest.approx(totals.tolist())
    assert float(cells["peak"].abs().max()) == pytest.approx(1.0)


def test_textspan_texts_prefer_the_task_and_skip_models_without_them() -> None:
    rows = [
        {"model": "m", "dataset": dataset, "unit": "head_0_0", "method": method, "rank": rank, "text": f"{dataset} {method} {rank}"}
        for dataset in ("reference", "task") for method in ("textspan", "somp") for rank in (2, 1)
    ]  # fmt: skip
    table = pl.DataFrame(rows)
    assert textspan_texts(table, "m", "task", ["head_0_0", "head_0_1"]) == {"head_0_0": ["TextSpan on task:", "task textspan 1", "task textspan 2"]}
    assert textspan_texts(table, "m", "other", ["head_0_0"])["head_0_0"][0] == "TextSpan on reference:"
    assert textspan_texts(pl.DataFrame({"model": ["m"], "note": ["no text tower"]}), "m", "task", ["head_0_0"]) == {}
