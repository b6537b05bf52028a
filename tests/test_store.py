"""The Parquet unit store: exact round trip, compact float16, column-selective reads."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import torch
from conftest import TINY_DINOV2, TINY_OPEN_CLIP, perturb

from residual import decompose, load_model, read_units
from residual.data.sequences import ArrayImages, Source
from residual.data.splits import split_table
from residual.units.encode import EncodeSettings, encode_split
from residual.units.store import UnitFile, UnitFileError
from residual.units.unit_map import UnitMap, layout_of


def _source(count: int = 24) -> Source:
    generator = np.random.default_rng(0)
    images = generator.integers(0, 256, size=(count, 12, 12, 3), dtype=np.uint8)
    return Source({"all": ArrayImages(images, np.arange(count) % 3)}, ["a", "b", "c"])


def _encode(tmp_path, spec: dict, dtype: str, count: int = 24):
    model = load_model(spec, device="cpu")
    perturb(model.module)
    source = _source(count)
    rows = split_table(source, {"rule": "resplit", "val": 0.25, "test": 0.25}, seed=0).filter(pl.col("split") == "train")
    map_path = tmp_path / "model" / "unit_map.safetensors"
    UnitMap.from_tower(model.tower).save(map_path)
    output = tmp_path / "model" / "data" / f"train-{dtype}.parquet"
    result = encode_split(model, source, rows, output, map_path, EncodeSettings(dtype, batch_size=5, rows_per_group=7))
    images = torch.stack([model.preprocess(source.parts["all"][i][0]) for i in rows["index"].to_list()])
    return model, rows, output, result, decompose(model, images)


@pytest.mark.parametrize("spec", [TINY_OPEN_CLIP, TINY_DINOV2], ids=["open_clip", "dinov2"])
def test_float32_round_trip_is_exact(tmp_path, spec: dict) -> None:
    model, rows, output, result, expected = _encode(tmp_path, spec, "float32")
    stored = read_units(output)
    assert stored.names == expected.names
    assert torch.allclose(stored.values, expected.values, rtol=1e-5, atol=1e-6 * expected.values.abs().max())
    # Encoded in batches of 5, expected from one batch of all: on some CPUs a matmul's rounding
    # depends on the batch shape, so the embeddings agree to float32 rounding, not bit for bit.
    torch.testing.assert_close(stored.embedding, expected.embedding, rtol=1e-5, atol=1e-6 * float(expected.embedding.abs().max()))
    assert stored.labels.tolist() == rows["label"].to_list()
    assert stored.sample_ids.tolist() == rows["sample_id"].to_list()
    assert result.readback_error == 0.0
    assert result.decomposition_error <= 1e-4


@pytest.mark.parametrize("spec", [TINY_OPEN_CLIP, TINY_DINOV2], ids=["open_clip", "dinov2"])
def test_float16_keeps_output_space_within_1e_3(tmp_path, spec: dict) -> None:
    model, rows, output, result, expected = _encode(tmp_path, spec, "float16")
    stored = read_units(output)
    error = (stored.values - expected.values).abs().amax(dim=(0, 2)) / expected.values.abs().amax(dim=(0, 2))
    assert float(error.max()) <= 1e-3
    assert result.readback_error <= 1e-3
    total = (stored.values.sum(dim=1) - expected.embedding).abs().max() / expected.embedding.abs().max()
    assert float(total) <= 2e-3


def test_tiny_layer_scales_survive_float16(tmp_path) -> None:
    """Random-init DINOv2 scales its units by 1e-5: power-of-two storage scales keep their precision."""
    model = load_model(TINY_DINOV2, device="cpu")  # not perturbed: layer scales stay at 1e-5
    source = _source(15)
    rows = split_table(source, {"rule": "resplit", "val": 0.2, "test": 0.2}, seed=0)
    UnitMap.from_tower(model.tower).save(tmp_path / "m" / "unit_map.safetensors")
    result = encode_split(model, source, rows, tmp_path / "m" / "d" / "all.parquet", tmp_path / "m" / "unit_map.safetensors")
    assert result.readback_error <= 1e-3


def test_one_unit_reads_one_column(tmp_path, monkeypatch) -> None:
    model, rows, output, _, expected = _encode(tmp_path, TINY_OPEN_CLIP, "float32")
    requested = []
    original = pq.ParquetFile.read

    def spy(self, columns=None, **kwargs):
        requested.append(columns)
        return original(self, columns=columns, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read", spy)
    names = ["head_1_2", "mlp_0"]
    stored = read_units(output, names)
    assert requested == [["sample_id", "label", "ln_mean", "ln_std", "embedding", *names]]
    indices = [layout_of(model.tower).index(name) for name in names]
    assert torch.allclose(stored.values, expected.values[:, indices], rtol=1e-5, atol=1e-6)


def test_batches_equal_whole_reads(tmp_path) -> None:
    _, _, output, _, _ = _encode(tmp_path, TINY_OPEN_CLIP, "float16")
    unit_file = UnitFile(output)
    whole = unit_file.read()
    batches = list(unit_file.iter_batches(batch_size=4))
    assert [len(b.labels) for b in batches][:-1] == [4] * (len(batches) - 1)
    # Heads are mapped to output space by a matmul per batch, whose rounding may depend on the
    # batch shape on some CPUs: float32 rounding apart. Ids are integers: equal.
    scale = float(whole.values.abs().max())
    torch.testing.assert_close(torch.cat([b.values for b in batches]), whole.values, rtol=1e-5, atol=1e-6 * scale)
    assert torch.equal(torch.cat([b.sample_ids for b in batches]), whole.sample_ids)


def test_metadata_describes_the_file(tmp_path) -> None:
    model, rows, output, result, _ = _encode(tmp_path, TINY_OPEN_CLIP, "float16")
    metadata = json.loads(pq.ParquetFile(output).metadata.metadata[b"residual"])
    assert metadata["units"] == layout_of(model.tower).names
    assert metadata["dtype"] == "float16"
    assert metadata["samples"] == rows.height
    assert metadata["decomposition_error"] == result.decomposition_error
    assert metadata["model_spec"]["arch"] == "ViT-B-32"
    assert {"torch", "open_clip_torch", "timm"} <= set(metadata["versions"])
    assert (output.parent / metadata["unit_map"]["path"]).resolve() == (tmp_path / "model" / "unit_map.safetensors").resolve()


def test_stale_unit_map_is_refused(tmp_path) -> None:
    model, _, output, _, _ = _encode(tmp_path, TINY_OPEN_CLIP, "float16")
    perturb(model.module, seed=7)  # other weights, same layout
    UnitMap.from_tower(model.tower).save(tmp_path / "model" / "unit_map.safetensors")
    with pytest.raises(ValueError, match="does not match the unit file"):
        read_units(output)


def test_not_a_unit_file(tmp_path) -> None:
    plain = tmp_path / "plain.parquet"
    pl.DataFrame({"a": [1, 2]}).write_parquet(plain)
    with pytest.raises(UnitFileError, match="without residual unit metadata"):
        read_units(plain)
    with pytest.raises(UnitFileError, match="does not exist"):
        read_units(tmp_path / "missing.parquet")
