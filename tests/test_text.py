"""Text embeddings and zero-shot classifiers (open_clip and timm; BLIP's are in test_blip.py)."""

from __future__ import annotations

import pytest
import torch
from open_clip import build_zero_shot_classifier

from residual.models.loaded import LoadedModel, load_model
from residual.models.text import NoTextTowerError, encode_text, zero_shot_classifier

EMBED = 32
CLASSNAMES = ["dog", "cat", "traffic light"]
TEMPLATES = ["a photo of a {}.", "a drawing of the {}.", "itap of a {}."]


@pytest.fixture(scope="module")
def clip() -> LoadedModel:
    """Tiny random CLIP whose text context (16) is shorter than its tokenizer's default (77)."""
    return load_model(
        {
            "library": "open_clip",
            "arch": "ViT-B-32",
            "pretrained": None,
            "kwargs": {
                "embed_dim": EMBED,
                "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 16},
                "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
            },
        },
        device="cpu",
    )


def test_encode_text_shapes_and_batching(clip: LoadedModel) -> None:
    texts = [template.format(name) for name in CLASSNAMES for template in TEMPLATES]
    embeddings = encode_text(clip, texts)
    assert embeddings.shape == (len(texts), EMBED) and embeddings.dtype == torch.float32
    assert not torch.allclose(embeddings.norm(dim=-1), torch.ones(len(texts)))  # not normalised
    torch.testing.assert_close(encode_text(clip, texts, batch_size=2), embeddings, rtol=0, atol=1e-6)
    assert encode_text(clip, []).shape == (0, EMBED)


def test_zero_shot_classifier_matches_open_clip(clip: LoadedModel) -> None:
    classifier = zero_shot_classifier(clip, CLASSNAMES, TEMPLATES)
    assert classifier.shape == (len(CLASSNAMES), EMBED)
    torch.testing.assert_close(classifier.norm(dim=-1), torch.ones(len(CLASSNAMES)))

    def tokenizer(texts: list[str]) -> torch.Tensor:
        return clip.extras["tokenizer"](texts, context_length=clip.module.context_length)

    expected = build_zero_shot_classifier(clip.module, tokenizer, CLASSNAMES, TEMPLATES, num_classes_per_batch=2)
    torch.testing.assert_close(classifier, expected.T, rtol=0, atol=1e-5)


def test_callable_templates_equal_format_strings(clip: LoadedModel) -> None:
    callables = [lambda name, template=template: template.format(name) for template in TEMPLATES]
    torch.testing.assert_close(
        zero_shot_classifier(clip, CLASSNAMES, callables), zero_shot_classifier(clip, CLASSNAMES, TEMPLATES)
    )
    with pytest.raises(ValueError, match="at least one"):
        zero_shot_classifier(clip, CLASSNAMES, [])


def test_timm_has_no_text_tower() -> None:
    model = load_model(
        {"library": "timm", "arch": "vit_tiny_patch16_224", "pretrained": None, "kwargs": {"img_size": 32, "depth": 1}},
        device="cpu",
    )
    with pytest.raises(NoTextTowerError, match="class means"):
        encode_text(model, ["a dog"])
