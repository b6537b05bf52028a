"""The fixed classifiers (METHOD section 9): zero-shot text weights for open_clip, class means of
the train embeddings for timm models, the stored classifier file and its two logit conventions."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_DINOV2, TINY_OPEN_CLIP, perturb
from safetensors.torch import save_file

from residual.alignment.classifier import DEFAULT_LOGIT_SCALE, ClassWeights, build_classifier, class_means_from_units, load_classifier
from residual.alignment.options import ClassifierSpec
from residual.config.params import model_params, source_params
from residual.data.classnames import openai_templates
from residual.models.loaded import load_model
from residual.models.text import zero_shot_classifier
from residual.units.store import read_units
from residual.units.unit_map import UnitMap

DIGITS = {"loader": "digits", "split": {"rule": "resplit", "val": 0.2, "test": 0.2, "subset": 60}}
CLASSES = [str(digit) for digit in range(10)]


@pytest.fixture(scope="module")
def dino_units(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Unit files (float32) of the perturbed tiny DINOv2 on 60 digits: 'train' (every class at
    least 3 times) and 'no_nine' (the same train rows without class 9)."""
    import polars as pl

    from residual.data.sources import load_source
    from residual.data.splits import split_table
    from residual.units.encode import EncodeSettings, encode_split

    folder = tmp_path_factory.mktemp("dino_units")
    model = load_model(TINY_DINOV2, name="dino_tiny", device="cpu")
    perturb(model.module)
    source = load_source("digits", DIGITS, 42)
    train = split_table(source, DIGITS["split"], 42, "digits").filter(pl.col("split") == "train")
    unit_map = folder / "unit_map.safetensors"
    UnitMap.from_tower(model.tower).save(unit_map)
    paths = {}
    for name, rows in (("train", train), ("no_nine", train.filter(pl.col("label") != 9))):
        paths[name] = folder / f"{name}.parquet"
        metadata = {"dataset": "digits", "split": "train"}
        encode_split(model, source, rows, paths[name], unit_map, EncodeSettings("float32", batch_size=32, rows_per_group=32), metadata)
    return paths


def test_open_clip_classifier_is_the_zero_shot_text_classifier() -> None:
    """An open_clip model gets text weights: OpenAI's MNIST template (borrowed by digits) over the
    class names '0'..'9', unit-norm rows, and the freshly loaded model's exp(logit_scale)."""
    built = build_classifier("clip_tiny", "digits", ClassifierSpec(source_params(DIGITS), model_params(TINY_OPEN_CLIP), None))
    weights, classes, source, scale = built.weights, built.classes, built.source, built.logit_scale
    assert (source, classes) == ("text", CLASSES)
    assert weights.shape == (10, 32) and weights.dtype == torch.float32
    torch.testing.assert_close(weights.norm(dim=-1), torch.ones(10))
    model = load_model(TINY_OPEN_CLIP, name="clip_tiny", device="cpu")
    assert openai_templates("mnist") == ['a photo of the number: "{}".']
    torch.testing.assert_close(weights, zero_shot_classifier(model, CLASSES, openai_templates("mnist")), rtol=0, atol=0)
    assert scale == pytest.approx(float(model.module.logit_scale.detach().exp()), rel=1e-7)
    assert scale != DEFAULT_LOGIT_SCALE  # the model's own scale (1 / 0.07 at random init), not the fallback


@pytest.mark.parametrize("class_means", ["plain", "normalized"])
def test_timm_classifier_is_the_class_means_of_the_train_file(dino_units: dict[str, Path], class_means: str) -> None:
    """A timm model gets the per-class mean of the train file's embeddings, L2-normalised only for
    'normalized'; the oracle loops over the classes of the file read back with read_units."""
    built = build_classifier("dino_tiny", "digits", ClassifierSpec(source_params(DIGITS), None, class_means), dino_units["train"])
    weights, classes, source, scale = built.weights, built.classes, built.source, built.logit_scale
    assert (source, classes, scale) == ("class_means", CLASSES, DEFAULT_LOGIT_SCALE)
    stored = read_units(dino_units["train"])
    embedding = stored.embedding.double()
    expected = torch.stack([embedding[stored.labels == label].mean(dim=0) for label in range(10)]).float()
    if class_means == "normalized":
        expected = expected / expected.norm(dim=-1, keepdim=True)
    assert weights.shape == (10, 48)
    torch.testing.assert_close(weights, expected, rtol=1e-6, atol=1e-6)
    if class_means == "plain":
        assert not torch.allclose(weights.norm(dim=-1), torch.ones(10))  # plain means are not rescaled


def test_timm_classifier_without_train_units_names_the_model() -> None:
    """A model without a text tower cannot build a classifier without its train unit file."""
    with pytest.raises(ValueError, match=r"model 'dino_tiny' has no text tower.*train unit file of 'digits'"):
        build_classifier("dino_tiny", "digits", ClassifierSpec(source_params(DIGITS), None, "plain"))


def test_class_means_of_a_file_missing_a_class_name_the_file(dino_units: dict[str, Path]) -> None:
    """A train file without some class cannot give that class a mean: the error names the file."""
    path = dino_units["no_nine"]
    with pytest.raises(ValueError, match=re.escape(f"unit file {path}")):
        class_means_from_units(path, 10, normalize=False)
    assert class_means_from_units(dino_units["train"], 10, normalize=False).shape == (10, 48)


def test_save_and_load_round_trip_and_logit_conventions(tmp_path: Path) -> None:
    """Weights come back bit for bit with their header; 'raw' logits are x @ W^T, 'normalized'
    ones are x / ||x|| @ W^T times the stored scale."""
    generator = torch.Generator().manual_seed(0)
    weights = F.normalize(torch.randn(10, 32, generator=generator), dim=-1)
    path = tmp_path / "classifier.safetensors"
    ClassWeights(weights, CLASSES, "text", 14.285714).save(path)
    x = 3.0 * torch.randn(7, 32, generator=generator)

    raw, header = load_classifier(path, "raw")
    assert header == {"classes": CLASSES, "source": "text", "logit_scale": 14.285714}
    assert torch.equal(raw.weights, weights)
    torch.testing.assert_close(raw(x), x @ weights.T, rtol=0, atol=0)

    normalized, header = load_classifier(path, "normalized")
    assert torch.equal(normalized.weights, weights) and normalized.scale == 14.285714
    expected = (x / x.norm(dim=-1, keepdim=True)) @ weights.T * 14.285714
    torch.testing.assert_close(normalized(x), expected, rtol=1e-6, atol=1e-5)
    assert not torch.allclose(normalized(x), raw(x))
    with pytest.raises(ValueError, match="logit convention 'softmax'"):
        load_classifier(path, "softmax")  # type: ignore[arg-type]


def test_broken_classifier_files_name_the_path(tmp_path: Path) -> None:
    """Truncated, non-safetensors and header-less classifier files raise ValueError naming the path."""
    good = tmp_path / "good.safetensors"
    ClassWeights(torch.eye(10, 32), CLASSES, "class_means", DEFAULT_LOGIT_SCALE).save(good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    headerless = tmp_path / "headerless.safetensors"
    save_file({"weights": torch.eye(10, 32)}, str(headerless))
    for path in (truncated, garbage, headerless, tmp_path / "missing.safetensors"):
        with pytest.raises(ValueError, match=re.escape(f"classifier file {path} is unreadable")):
            load_classifier(path, "raw")
