"""BLIP (transformers) adapter: exact decomposition, checkpoints, preprocessing and ITC text path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import BertTokenizer, BlipImageProcessor
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

from residual.models.loaded import LoadedModel, ModelSpecError, load_model
from residual.models.text import NoTextTowerError, encode_text
from residual.units.decompose import decompose
from residual.units.guards import TOLERANCE

LAYERS, HEADS, OUT, SIZE = 2, 4, 24, 32
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "the", "dog", "cat", "car", "an", "image"]
KWARGS = {
    # Large init so that attention is far from uniform: a wrong q/k/v layout then breaks the sum.
    "initializer_range": 0.3,
    "image_text_hidden_size": OUT,
    "vision_config": {
        "hidden_size": 32,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": 64,
        "image_size": SIZE,
        "patch_size": 8,
        "initializer_range": 1.0,
    },
    "text_config": {
        "vocab_size": len(WORDS),
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 32,
        "pad_token_id": 0,
        "bos_token_id": 2,
        "sep_token_id": 3,
        "eos_token_id": 3,
    },
}
SPEC = {"library": "transformers", "arch": "BlipForImageTextRetrieval", "pretrained": None, "kwargs": KWARGS}


@pytest.fixture(scope="module")
def blip() -> LoadedModel:
    """Tiny random BLIP with a non-trivial final norm and projection bias."""
    model = load_model(SPEC, device="cpu")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in (model.module.vision_model.post_layernorm.weight, model.module.vision_model.post_layernorm.bias):
            parameter.copy_(1 + torch.randn(parameter.shape, generator=generator) * 0.5)
        model.module.vision_proj.bias.copy_(torch.randn(OUT, generator=generator))
    return model


@pytest.fixture(scope="module")
def checkpoint(blip: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`blip` saved as a checkpoint directory (safetensors) with its tokenizer and image processor."""
    directory = tmp_path_factory.mktemp("blip")
    blip.module.save_pretrained(directory)
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(WORDS) + "\n")
    BertTokenizer(str(vocab)).save_pretrained(directory)
    BlipImageProcessor(size={"height": SIZE, "width": SIZE}).save_pretrained(directory)
    return directory


def test_decomposition_is_exact(blip: LoadedModel) -> None:
    images = torch.randn(3, 3, SIZE, SIZE)
    decomposition = decompose(blip, images)
    assert decomposition.error <= TOLERANCE
    assert decomposition.values.shape == (3, 1 + LAYERS + LAYERS * HEADS, OUT)
    assert len(decomposition.names) == 1 + LAYERS + LAYERS * HEADS
    assert blip.tower.out_dim == OUT == blip.module.config.image_text_hidden_size


def test_embedding_is_the_itc_image_feature(blip: LoadedModel) -> None:
    """vision_proj of the CLS token of `last_hidden_state` (one post_layernorm), as the ITC path uses."""
    images = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = blip.module.vision_proj(blip.module.vision_model(pixel_values=images).last_hidden_state[:, 0])
        torch.testing.assert_close(blip.tower.encode(images), expected, rtol=0, atol=0)


def test_checkpoint_directory_and_file_give_identical_embeddings(blip: LoadedModel, checkpoint: Path) -> None:
    images = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = blip.tower.encode(images)
    from_directory = load_model({"library": "transformers", "arch": str(checkpoint), "pretrained": str(checkpoint)}, device="cpu")
    from_file = load_model({**SPEC, "pretrained": str(checkpoint / "model.safetensors")}, device="cpu")
    for model in (from_directory, from_file):
        with torch.no_grad():
            assert torch.equal(model.tower.encode(images), expected)
        assert decompose(model, images).error <= TOLERANCE
    assert from_directory.extras["tokenizer"] is not None


def test_preprocess_matches_blip_image_processor(blip: LoadedModel) -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 40, 3), dtype=np.uint8))
    expected = BlipImageProcessorPil(size={"height": SIZE, "width": SIZE})(image, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(blip.preprocess(image), expected, rtol=0, atol=1e-5)
    assert blip.input_size == (SIZE, SIZE)


def test_text_matches_itc_scores(checkpoint: Path) -> None:
    """Normalised image and text embeddings reproduce the model's own ITC similarity."""
    model = load_model({"library": "transformers", "arch": str(checkpoint), "pretrained": str(checkpoint)}, device="cpu")
    texts = ["a photo of a dog", "cat", "an image of the car"]
    images = torch.randn(2, 3, SIZE, SIZE)
    tokens = model.extras["tokenizer"](texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model.module(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=images, use_itm_head=False
        ).itm_score
        image_features = F.normalize(model.tower.encode(images), dim=-1)
    text_features = encode_text(model, texts)
    assert text_features.shape == (3, OUT) and text_features.dtype == torch.float32
    torch.testing.assert_close(image_features @ F.normalize(text_features, dim=-1).T, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(encode_text(model, texts, batch_size=1), text_features, rtol=0, atol=1e-5)


def test_random_blip_has_no_tokenizer(blip: LoadedModel) -> None:
    with pytest.raises(NoTextTowerError, match="without a tokenizer"):
        encode_text(blip, ["a dog"])


def test_errors_say_what_to_do(checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="hf download"):
        load_model({"library": "transformers", "arch": "no-such-org/no-such-blip", "pretrained": None}, device="cpu")
    with pytest.raises(ValueError, match="drop `kwargs`"):
        load_model({**SPEC, "arch": str(checkpoint)}, device="cpu")
    resized = {**KWARGS, "image_text_hidden_size": OUT // 2}
    with pytest.raises(ModelSpecError, match="does not fit"):
        load_model({**SPEC, "kwargs": resized, "pretrained": str(checkpoint / "model.safetensors")}, device="cpu")
