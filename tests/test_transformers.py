"""transformers CLIP, ViT and DINOv2 towers: exact decomposition, checkpoints as saved on disk, image
processors, the CLIP text path, refusals, and the same weights through two libraries giving the same units."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import Tensor, nn
from transformers import (
    BertTokenizer,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    Dinov2Config,
    Dinov2Model,
    SiglipConfig,
    SiglipModel,
    ViTConfig,
    ViTImageProcessor,
    ViTModel,
)

from residual.config.preflight import PreflightError, check_config
from residual.config.validate import validate_config
from residual.libraries import has_text_tower
from residual.models.loaded import LoadedModel, load_model
from residual.models.text import encode_text
from residual.models.tower import UnsupportedModelError
from residual.units.decompose import decompose
from residual.units.guards import TOLERANCE

EQUIVALENCE = 1e-5  # relative, units of the same weights through two libraries (float32, other kernels)
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "the", "dog", "cat"]
# (layers, heads, width, image size, patch size)
SHAPES = [(1, 2, 16, 16, 8), (2, 4, 32, 32, 8), (3, 3, 24, 28, 7)]


def vision_kwargs(layers: int, heads: int, width: int, size: int, patch: int) -> dict:
    # A large init keeps attention far from uniform: a wrong q/k/v layout then breaks the sum.
    return {"hidden_size": width, "num_hidden_layers": layers, "num_attention_heads": heads, "intermediate_size": 2 * width,
            "image_size": size, "patch_size": patch, "initializer_range": 1.0}  # fmt: skip


def spec(arch: str, kwargs: dict, pretrained: str | None = None) -> dict:
    return {"library": "transformers", "arch": arch, "pretrained": pretrained, "kwargs": kwargs}


def clip_kwargs(shape: tuple[int, ...]) -> dict:
    text = {"vocab_size": len(WORDS), "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
            "max_position_embeddings": 16, "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3}  # fmt: skip
    return {"projection_dim": 24, "vision_config": vision_kwargs(*shape), "text_config": text}


FAMILIES = {
    "CLIPModel": clip_kwargs,
    "CLIPVisionModelWithProjection": lambda shape: {**vision_kwargs(*shape), "projection_dim": 24},
    "ViTModel": lambda shape: vision_kwargs(*shape),
    "ViTForImageClassification": lambda shape: {**vision_kwargs(*shape), "num_labels": 3},
    "Dinov2Model": lambda shape: {**vision_kwargs(*shape), "layerscale_value": 0.5},
}


def perturb_final_norm(model: LoadedModel) -> None:
    """A non-trivial final norm (random init leaves it at gamma 1, beta 0), so its scale must be in the units."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.tower.final_norm.parameters():
            parameter.copy_(1 + torch.randn(parameter.shape, generator=generator) * 0.5)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: "x".join(map(str, shape)))
@pytest.mark.parametrize("arch", FAMILIES)
def test_decomposition_is_exact(arch: str, shape: tuple[int, ...]) -> None:
    layers, heads, _, size, _ = shape
    model = load_model(spec(arch, FAMILIES[arch](shape)), device="cpu")
    perturb_final_norm(model)
    decomposition = decompose(model, torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0)))
    assert decomposition.error <= TOLERANCE
    assert len(decomposition.names) == 1 + layers + layers * heads


def test_embeddings_are_the_libraries_own() -> None:
    """CLIP: get_image_features; ViT: the CLS of last_hidden_state (no pooler); DINOv2: its pooler_output (the CLS)."""
    shape = SHAPES[1]
    images = torch.randn(2, 3, shape[3], shape[3])
    clip = load_model(spec("CLIPModel", clip_kwargs(shape)), device="cpu")
    vit = load_model(spec("ViTModel", vision_kwargs(*shape)), device="cpu")
    dino = load_model(spec("Dinov2Model", FAMILIES["Dinov2Model"](shape)), device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(clip.tower.encode(images), clip.module.get_image_features(pixel_values=images).pooler_output)
        torch.testing.assert_close(vit.tower.encode(images), vit.module(pixel_values=images).last_hidden_state[:, 0])
        torch.testing.assert_close(dino.tower.encode(images), dino.module(pixel_values=images).pooler_output)
    assert vit.tower.out_dim == shape[2] and clip.tower.out_dim == 24


@pytest.fixture(scope="module")
def clip_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random CLIP saved as a checkpoint directory (safetensors) with a tokenizer and CLIP's image processor."""
    directory = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(**clip_kwargs(SHAPES[1]))).save_pretrained(directory)
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(WORDS) + "\n")
    BertTokenizer(str(vocab)).save_pretrained(directory)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


def test_checkpoint_directory_class_and_weights_file_agree(clip_checkpoint: Path) -> None:
    images = torch.randn(2, 3, 32, 32)
    by_checkpoint = load_model(spec(str(clip_checkpoint), {}, str(clip_checkpoint)), device="cpu")
    by_class = load_model(spec("CLIPModel", {}, str(clip_checkpoint)), device="cpu")
    by_file = load_model(spec("CLIPModel", clip_kwargs(SHAPES[1]), str(clip_checkpoint / "model.safetensors")), device="cpu")
    with torch.no_grad():
        reference = by_checkpoint.tower.encode(images)
        for other in (by_class, by_file):
            torch.testing.assert_close(other.tower.encode(images), reference)
    assert has_text_tower(by_checkpoint.spec) and by_checkpoint.extras["tokenizer"] is not None


def test_clip_text_matches_get_text_features(clip_checkpoint: Path) -> None:
    model = load_model(spec(str(clip_checkpoint), {}, str(clip_checkpoint)), device="cpu")
    texts = ["a photo of the dog", "a cat"]
    tokens = model.extras["tokenizer"](texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model.module.get_text_features(**tokens).pooler_output
    torch.testing.assert_close(encode_text(model, texts), expected)


@pytest.mark.parametrize(
    "processor",
    [
        CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        ViTImageProcessor(size={"height": 32, "width": 32}),  # google/vit-*: resize, no crop, mean/std 0.5
        # facebook/dinov2-*: bicubic resize of the short edge, then a center crop, ImageNet mean/std
        ViTImageProcessor(size={"shortest_edge": 36}, do_center_crop=True, crop_size={"height": 32, "width": 32}, resample=3,
                          image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]),  # fmt: skip
    ],
    ids=["clip", "vit", "dinov2"],
)
def test_preprocess_matches_the_checkpoints_image_processor(processor, tmp_path: Path) -> None:
    torch.manual_seed(0)
    ViTModel(ViTConfig(**vision_kwargs(*SHAPES[1])), add_pooling_layer=False).save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    model = load_model(spec(str(tmp_path), {}, str(tmp_path)), device="cpu")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (45, 60, 3), dtype=np.uint8))
    expected = torch.as_tensor(np.asarray(processor(images=image, return_tensors="np")["pixel_values"][0]))
    # PIL and torchvision resampling round differently by a few grey levels at most.
    torch.testing.assert_close(model.preprocess(image), expected, atol=0.1, rtol=0)
    assert model.input_size == (32, 32)


def test_attention_pooled_models_are_refused_before_any_job(tmp_path: Path) -> None:
    tiny = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
    SiglipModel(SiglipConfig(vision_config={**tiny, "image_size": 16, "patch_size": 8}, text_config={**tiny, "vocab_size": 10})).save_pretrained(tmp_path)
    config = validate_config({"models": {"siglip": spec(str(tmp_path), {}, str(tmp_path))},
                              "datasets": {"d": {"loader": "digits", "split": {"rule": "official"}}}})  # fmt: skip
    with pytest.raises(PreflightError, match="SiglipModel.*attention head"):
        check_config(config)
    with pytest.raises(UnsupportedModelError, match="attention head"):
        load_model(spec(str(tmp_path), {}, str(tmp_path)), device="cpu")


def test_kwargs_on_a_checkpoint_and_unknown_classes_are_refused(clip_checkpoint: Path) -> None:
    datasets = {"d": {"loader": "digits", "split": {"rule": "official"}}}
    models = {"a": spec(str(clip_checkpoint), {"projection_dim": 8}), "b": spec("SwinModel", {})}
    with pytest.raises(PreflightError, match=r"models\.a\.kwargs(.|\n)*models\.b\.arch"):
        check_config(validate_config({"models": models, "datasets": datasets}))


# The same weights through two libraries: the tests own the mapping of names.


def randomized(module: nn.Module, seed: int) -> nn.Module:
    """Every parameter redrawn at a large scale, so attention is far from uniform and layer scales matter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3 + (1 if parameter.ndim == 1 and parameter.shape[0] > 1 else 0))
    return module.eval()


def timm_to_transformers(state: dict[str, Tensor], prefix: str, layers: str, dinov2: bool) -> dict[str, Tensor]:
    """A timm ViT state dict under transformers ViTModel / Dinov2Model names."""
    mapped = {
        "embeddings.cls_token": state["cls_token"],
        "embeddings.position_embeddings": state["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
        "layernorm.weight": state["norm.weight"],
        "layernorm.bias": state["norm.bias"],
    }
    norms = ("norm1", "norm2") if dinov2 else ("layernorm_before", "layernorm_after")
    index = 0
    while f"blocks.{index}.attn.qkv.weight" in state:
        block, layer = f"blocks.{index}", f"{layers}.{index}"
        for name, part in zip(("q_proj", "k_proj", "v_proj"), state[f"{block}.attn.qkv.weight"].chunk(3)):
            mapped[f"{layer}.attention.{name}.weight"] = part
        for name, part in zip(("q_proj", "k_proj", "v_proj"), state[f"{block}.attn.qkv.bias"].chunk(3)):
            mapped[f"{layer}.attention.{name}.bias"] = part
        for timm_name, hf_name in (("attn.proj", "attention.o_proj"), ("norm1", norms[0]), ("norm2", norms[1]), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            for kind in ("weight", "bias"):
                mapped[f"{layer}.{hf_name}.{kind}"] = state[f"{block}.{timm_name}.{kind}"]
        if dinov2:
            mapped[f"{layer}.layer_scale1.lambda1"] = state[f"{block}.ls1.gamma"]
            mapped[f"{layer}.layer_scale2.lambda1"] = state[f"{block}.ls2.gamma"]
        index += 1
    return {f"{prefix}{key}": value for key, value in mapped.items()}


def open_clip_to_transformers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """An open_clip CLIP's vision tower under transformers CLIPModel names (the text tower stays random)."""
    visual = {key.removeprefix("visual."): value for key, value in state.items() if key.startswith("visual.")}
    mapped = {
        "embeddings.class_embedding": visual["class_embedding"],
        "embeddings.patch_embedding.weight": visual["conv1.weight"],
        "embeddings.position_embedding.weight": visual["positional_embedding"],
    }
    for ours, theirs in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
        for kind in ("weight", "bias"):
            mapped[f"{ours}.{kind}"] = visual[f"{theirs}.{kind}"]
    index = 0
    while f"transformer.resblocks.{index}.attn.in_proj_weight" in visual:
        block, layer = f"transformer.resblocks.{index}", f"encoder.layers.{index}"
        for kind, key in (("weight", "in_proj_weight"), ("bias", "in_proj_bias")):
            for name, part in zip(("q_proj", "k_proj", "v_proj"), visual[f"{block}.attn.{key}"].chunk(3)):
                mapped[f"{layer}.self_attn.{name}.{kind}"] = part
        for theirs, ours in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
            for kind in ("weight", "bias"):
                mapped[f"{layer}.{ours}.{kind}"] = visual[f"{block}.{theirs}.{kind}"]
        index += 1
    return {**{f"vision_model.{key}": value for key, value in mapped.items()}, "visual_projection.weight": visual["proj"].T}


def save_mapped(model: nn.Module, mapped: dict[str, Tensor], directory: Path) -> Path:
    """`model` (transformers) with the mapped weights, saved in its on-disk format; its own tensors
    the source library lacks (the DINOv2 mask token, the CLIP text tower) keep their values."""
    state = model.state_dict()
    assert set(mapped) <= set(state), sorted(set(mapped) - set(state))
    model.load_state_dict({**state, **mapped})
    model.save_pretrained(directory)
    return directory


def assert_same_units(first: LoadedModel, second: LoadedModel, size: int) -> None:
    images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(3))
    one, two = decompose(first, images), decompose(second, images)
    assert one.names == two.names
    scale = one.values.abs().max()
    assert float((one.values - two.values).abs().max() / scale) <= EQUIVALENCE
    assert max(one.error, two.error) <= TOLERANCE


def test_timm_vit_and_transformers_vit_give_the_same_units(tmp_path: Path) -> None:
    kwargs = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 48, "num_heads": 3}
    source = randomized(timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, **kwargs), seed=0)
    weights = tmp_path / "timm.safetensors"
    save_file(source.state_dict(), weights)
    config = ViTConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=192, image_size=32, patch_size=8,
                       layer_norm_eps=1e-6, hidden_act="gelu")  # fmt: skip
    folder = save_mapped(ViTModel(config, add_pooling_layer=False), timm_to_transformers(source.state_dict(), "", "layers", False), tmp_path / "hf")
    by_timm = load_model({"library": "timm", "arch": "vit_small_patch16_224", "pretrained": str(weights), "kwargs": kwargs}, device="cpu")
    by_transformers = load_model(spec(str(folder), {}, str(folder)), device="cpu")
    assert_same_units(by_timm, by_transformers, 32)


def test_timm_dinov2_and_transformers_dinov2_give_the_same_units(tmp_path: Path) -> None:
    kwargs = {"img_size": 28, "depth": 2, "embed_dim": 48, "num_heads": 3}
    source = randomized(timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, **kwargs), seed=1)
    weights = tmp_path / "timm.safetensors"
    save_file(source.state_dict(), weights)
    config = Dinov2Config(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, mlp_ratio=4, image_size=28, patch_size=14, layer_norm_eps=1e-6)
    folder = save_mapped(Dinov2Model(config), timm_to_transformers(source.state_dict(), "", "encoder.layer", True), tmp_path / "hf")
    by_timm = load_model({"library": "timm", "arch": "vit_small_patch14_dinov2", "pretrained": str(weights), "kwargs": kwargs}, device="cpu")
    by_transformers = load_model(spec(str(folder), {}, str(folder)), device="cpu")
    assert_same_units(by_timm, by_transformers, 28)


def test_open_clip_and_transformers_clip_give_the_same_units(tmp_path: Path) -> None:
    kwargs = {"embed_dim": 24, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 16}}
    source = randomized(open_clip.create_model("ViT-B-32", pretrained=None, **kwargs), seed=2)
    weights = tmp_path / "open_clip.safetensors"
    save_file({key: value.contiguous() for key, value in source.state_dict().items()}, weights)
    vision = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256, "image_size": 32, "patch_size": 8,
              "hidden_act": "gelu"}  # fmt: skip
    config = CLIPConfig(projection_dim=24, vision_config=vision, text_config=clip_kwargs(SHAPES[0])["text_config"])
    folder = save_mapped(CLIPModel(config), open_clip_to_transformers(source.state_dict()), tmp_path / "hf")
    by_open_clip = load_model({"library": "open_clip", "arch": "ViT-B-32", "pretrained": str(weights), "kwargs": kwargs}, device="cpu")
    by_transformers = load_model(spec(str(folder), {}, str(folder)), device="cpu")
    assert_same_units(by_open_clip, by_transformers, 32)
