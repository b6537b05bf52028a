"""Hugging Face transformers vision towers (CLIP, ViT, DINOv2, BLIP) as a `Tower`, and their text towers.

The model family is the checkpoint's own (its config's `model_type`), or an architecture class
name (`arch: CLIPModel`, `ViTModel`, `ViTForImageClassification`, `Dinov2Model`,
`CLIPVisionModelWithProjection`, `BlipForImageTextRetrieval`) with `kwargs` for a config built
from scratch. The image embedding of each family, read from the library's own modules:

- CLIP: `visual_projection(post_layernorm(CLS))`; the stream enters block 0 after `pre_layrnorm`.
- ViT: the CLS after the final `layernorm`; neither the pooler nor the classifier is used.
- DINOv2: the CLS after the final `layernorm`; blocks carry layer scales (`layer_scale1/2`).
- BLIP: see `blip_tower`.

Each attention keeps q, k, v and the output projection as separate Linears whose features are
ordered (H, dh); the MLP is one module whose output is the block's MLP contribution. Models that
pool by attention or averaging (SigLIP, ...) do not decompose into units at the CLS token and are
refused by family, before any job runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from torch import Tensor, nn
from torchvision import transforms
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoTokenizer,
    CLIPImageProcessor,
    CLIPModel,
    CLIPVisionModelWithProjection,
    Dinov2Model,
    PretrainedConfig,
    PreTrainedModel,
    ViTForImageClassification,
    ViTImageProcessor,
    ViTModel,
)

from residual.libraries import HF_ID, transformers_architecture
from residual.models import blip_tower
from residual.models.checkpoint import read_state_dict
from residual.models.tower import AttentionWeights, Block, Tower, UnsupportedModelError

if TYPE_CHECKING:
    from residual.models.loaded import LoadedModel

CLASSES: dict[str, type[PreTrainedModel]] = {
    cls.__name__: cls
    for cls in (CLIPModel, CLIPVisionModelWithProjection, ViTModel, ViTForImageClassification, Dinov2Model, blip_tower.MODEL)
}
# The class a checkpoint of each family is built as when its config names none we support.
DEFAULT_CLASS = {
    "clip": "CLIPModel",
    "clip_vision_model": "CLIPVisionModelWithProjection",
    "vit": "ViTModel",
    "dinov2": "Dinov2Model",
    "blip": blip_tower.ARCH,
}


def create(spec: dict[str, Any]) -> tuple[nn.Module, Any, tuple[int, int], dict[str, Any]]:
    """The model, its eval transform (the checkpoint's image processor), its input size and its tokenizer (`extras`).

    `arch`: a class name of `CLASSES` (config from `kwargs`, or from the `pretrained` checkpoint when
    `kwargs` are empty), or a checkpoint (a Hugging Face model id in the local HF cache, or a
    `save_pretrained` directory) whose config is used. `pretrained`: the weights, a checkpoint, a
    weights file (.safetensors or a torch state dict), or None for random init. The hub is never
    contacted (offline runs would stall on its retries). The image processor and tokenizer come from
    the first checkpoint among `pretrained` and `arch`; a directory may lack them (then the family's
    default preprocessing at the model's size, and no text encoding), a model id must have them.
    """
    arch, pretrained, kwargs = spec["arch"], spec.get("pretrained"), dict(spec.get("kwargs", {}))
    checkpoint = next((source for source in (pretrained, arch) if _is_checkpoint(source)), None)
    if arch in CLASSES:
        cls = CLASSES[arch]
        config = cls.config_class(**kwargs) if kwargs or checkpoint is None else _config(checkpoint)
    elif kwargs:
        raise ValueError(
            f"`kwargs` configure an architecture class ({', '.join(CLASSES)}); checkpoint {arch!r} brings its own config: drop `kwargs`"
        )
    else:
        config = _config(arch)
        cls = CLASSES[_class_name(config, arch)]
    if config.model_type != cls.config_class.model_type:
        raise ValueError(f"{arch!r} builds a {cls.__name__}, but checkpoint {checkpoint!r} holds a {config.model_type!r} model; fix `arch`")
    options = {"add_pooling_layer": False} if cls is ViTModel else {}  # ViT's pooler is never used: not built, not read
    if pretrained is None or Path(pretrained).is_file():
        model = cls(config, **options)
        if pretrained is not None:
            model.load_state_dict(read_state_dict(pretrained))
    else:
        model, info = _cached(cls.from_pretrained, pretrained, config=config, output_loading_info=True, **options)
        problems = [*info["missing_keys"], *info["unexpected_keys"], *info["mismatched_keys"]]
        problems = [key for key in problems if not str(key).startswith("pooler.")]
        if problems:  # transformers only warns: a partly random model must not pass for the checkpoint
            raise RuntimeError(f"Missing key(s), unexpected key(s) or size mismatch in {pretrained!r}: {problems[:5]}")
    size = _pair(_vision_config(model.config).image_size)
    processor, tokenizer = _default_processor(model, size), None
    if checkpoint is not None:
        directory = Path(checkpoint) if Path(checkpoint).is_dir() else None
        if directory is None or (directory / "preprocessor_config.json").is_file():
            processor = _cached(AutoImageProcessor.from_pretrained, checkpoint)
        if cls.__name__ in ("CLIPModel", blip_tower.ARCH) and (directory is None or (directory / "tokenizer_config.json").is_file()):
            tokenizer = _cached(AutoTokenizer.from_pretrained, checkpoint)
    return model, image_transform(processor, size), size, {"tokenizer": tokenizer}


# Families whose image embedding is not the CLS token, and why they cannot be refused later.
POOLED = {
    "Siglip": "pools the tokens with an attention head (MAP), so the embedding is not a sum of units at the CLS token",
    "Beit": "averages the patch tokens (mean pooling), so the embedding is not a sum of units at the CLS token",
    "Data2VecVision": "averages the patch tokens (mean pooling), so the embedding is not a sum of units at the CLS token",
    "Swin": "has no CLS token and merges patches between stages",
    "ConvNext": "is a convolutional network, with no attention heads",
}


def spec_problems(key: str, spec: Mapping[str, Any]) -> list[str]:
    """What preflight refuses in a transformers entry, found without building it: an `arch` that is
    neither a supported class nor a checkpoint, a checkpoint of a family that does not decompose,
    `kwargs` on a checkpoint, a `pretrained` that is neither a file, a folder nor a model id."""
    arch, pretrained, problems = spec["arch"], spec.get("pretrained"), []
    if arch not in CLASSES and not Path(arch).is_dir() and not HF_ID.match(arch):
        problems.append(
            f"{key}.arch: {arch!r} is neither a class of {list(CLASSES)}, a checkpoint directory nor a Hugging Face model id (owner/name)"
        )
    elif arch in CLASSES or spec.get("kwargs"):
        if spec.get("kwargs") and arch not in CLASSES:
            problems.append(
                f"{key}.kwargs: only an architecture class ({', '.join(CLASSES)}) takes kwargs (a checkpoint brings its own config); remove them"
            )
    else:
        named = transformers_architecture(spec)
        if named is not None and named not in CLASSES:
            problems.append(f"{key}.arch: checkpoint {arch!r} is a {named}, which does not decompose into residual units: {refusal(named)}")
    if pretrained is not None and not Path(pretrained).exists() and not HF_ID.match(pretrained):
        problems.append(f"{key}.pretrained: {pretrained!r} is neither a weights file, a checkpoint directory nor a Hugging Face model id")
    return problems


def refusal(architecture: str) -> str:
    """Why a transformers architecture outside `CLASSES` is refused."""
    reason = next((why for family, why in POOLED.items() if architecture.lower().startswith(family.lower())), None)
    return f"it {reason}" if reason else f"only CLS-pooled pre-norm ViTs are supported ({', '.join(CLASSES)})"


def skeleton(spec: Mapping[str, Any]) -> nn.Module | None:
    """The architecture of a class-named entry on the meta device; None for a checkpoint (its config
    may not be on this machine yet; its first job checks it)."""
    if spec["arch"] not in CLASSES or not spec.get("kwargs"):
        return None
    cls = CLASSES[spec["arch"]]
    with torch.device("meta"):
        return cls(cls.config_class(**spec["kwargs"]))


def tower(model: nn.Module) -> Tower:
    """The vision tower of a supported transformers model (see the module docstring)."""
    if isinstance(model, blip_tower.MODEL):
        return blip_tower.tower(model)
    if isinstance(model, CLIPModel | CLIPVisionModelWithProjection):
        return _clip_tower(model)
    if isinstance(model, ViTForImageClassification):
        return _vit_tower(model.vit)
    if isinstance(model, ViTModel | Dinov2Model):
        return _vit_tower(model)
    raise UnsupportedModelError(f"{type(model).__name__} is not one of the transformers towers that decompose ({', '.join(CLASSES)})")


def _clip_tower(model: CLIPModel | CLIPVisionModelWithProjection) -> Tower:
    vision = model.vision_model
    layers = vision.encoder.layers
    blocks = [_block(layer.self_attn, layer.mlp, nn.Identity(), nn.Identity()) for layer in layers]

    def encode(images: Tensor) -> Tensor:
        """images [B, 3, H, W] -> visual_projection(post_layernorm(CLS)) [B, d_out]."""
        return model.visual_projection(vision(pixel_values=images).pooler_output)

    embeddings = vision.embeddings
    side = embeddings.image_size // embeddings.patch_size
    return Tower(
        embed=vision.pre_layrnorm,
        blocks=blocks,
        final_norm=vision.post_layernorm,
        proj=model.visual_projection.weight.T,
        proj_bias=model.visual_projection.bias,
        encode=encode,
        grid=(side, side),
    )


def _vit_tower(model: ViTModel | Dinov2Model) -> Tower:
    """ViT (no layer scale, optional pooler left unused) and DINOv2 (layer scales) share one layout."""
    blocks = []
    for layer in model.encoder.layer if isinstance(model, Dinov2Model) else model.layers:
        if isinstance(model, Dinov2Model):
            blocks.append(_block(layer.attention, layer.mlp, layer.layer_scale1, layer.layer_scale2))
        else:
            blocks.append(_block(layer.attention, layer.mlp, nn.Identity(), nn.Identity()))

    def encode(images: Tensor) -> Tensor:
        """images [B, 3, H, W] -> layernorm(stream)[:, 0] [B, D]."""
        return model(pixel_values=images).last_hidden_state[:, 0]

    config = model.config
    side = _pair(config.image_size)[0] // config.patch_size
    return Tower(
        embed=model.embeddings, blocks=blocks, final_norm=model.layernorm, proj=None, proj_bias=None, encode=encode, grid=(side, side)
    )


def _block(attention: nn.Module, mlp: nn.Module, ls1: nn.Module, ls2: nn.Module) -> Block:
    """A block from its attention (separate q/k/v Linears, features (H, dh), and `o_proj` or `out_proj`).

    The weights are views of the module's parameters, so the tower follows them when they change
    (fine-tuning, tests that perturb a model)."""
    out = getattr(attention, "o_proj", None) or attention.out_proj
    heads = getattr(attention, "num_attention_heads", None) or attention.num_heads
    scale = getattr(attention, "scaling", None) or attention.scale

    def split(linear: nn.Linear) -> tuple[Tensor, Tensor]:
        """[H, dh, D] weight and [H, dh] bias (zeros where the Linear has none)."""
        weight = linear.weight.detach().view(heads, -1, linear.in_features)
        bias = linear.bias.detach() if linear.bias is not None else weight.new_zeros(linear.out_features)
        return weight, bias.view(heads, -1)

    (w_q, b_q), (w_k, b_k), (w_v, b_v) = (split(linear) for linear in (attention.q_proj, attention.k_proj, attention.v_proj))
    b_o = out.bias.detach() if out.bias is not None else out.weight.new_zeros(out.out_features)
    weights = AttentionWeights(
        w_q=w_q,
        w_k=w_k,
        w_v=w_v,
        b_q=b_q,
        b_k=b_k,
        b_v=b_v,
        w_o=out.weight.detach().view(out.out_features, heads, -1),
        b_o=b_o,
        scale=scale,
    )
    return Block(attn_module=attention, attention=weights, mlp=mlp, ls1=ls1, ls2=ls2)


def encode_text(model: LoadedModel, tokenizer: Callable, texts: list[str]) -> Tensor:
    """[n] texts -> the model's text embedding [n, d_out] (CLIP: `get_text_features`; BLIP: its ITC path)."""
    module = model.module
    if isinstance(module, blip_tower.MODEL):
        return blip_tower.encode_text(model, tokenizer, texts)
    tokens = tokenizer(
        texts, padding=True, truncation=True, max_length=module.config.text_config.max_position_embeddings, return_tensors="pt"
    ).to(model.device)
    return module.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).pooler_output


def train_transform(model: nn.Module, preprocess: Any) -> Any:
    """transformers image processors have no train-time augmentation: fine-tuning sees the eval transform."""
    return preprocess


def image_transform(processor: Any, size: tuple[int, int]) -> transforms.Compose:
    """The processor's steps as a picklable torchvision transform: PIL image -> [3, H, W] float32.

    RGB; resize to exactly (height, width), or the shortest edge to `shortest_edge`; an optional
    center crop; scale to [0, 1]; normalise. Anything else the processor does is refused.
    """
    resize = processor.size
    crop = getattr(processor, "do_center_crop", False) and processor.crop_size
    final = (crop["height"], crop["width"]) if crop else (resize.get("height"), resize.get("width"))
    if final != size:
        raise ValueError(
            f"the image processor produces {final} images but the model's position embeddings expect {size}: "
            "fix the checkpoint's preprocessor_config.json"
        )
    if not (processor.do_resize and processor.do_rescale and processor.do_normalize) or abs(processor.rescale_factor - 1 / 255) > 1e-12:
        raise ValueError(
            f"the image processor {type(processor).__name__} departs from resize + rescale by 1/255 + normalise; it is not supported"
        )
    interpolation = transforms.InterpolationMode[Image.Resampling(processor.resample).name]
    target = resize["shortest_edge"] if "shortest_edge" in resize else (resize["height"], resize["width"])
    steps = [_convert_to_rgb, transforms.Resize(target, interpolation=interpolation)]
    if crop:
        steps.append(transforms.CenterCrop(final))
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(processor.image_mean, processor.image_std)])


def _convert_to_rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def _default_processor(model: PreTrainedModel, size: tuple[int, int]) -> Any:
    """The family's default preprocessing at the model's input size, for checkpoints without a processor."""
    if isinstance(model, blip_tower.MODEL):
        return blip_tower.default_processor(size)
    if isinstance(model, CLIPModel | CLIPVisionModelWithProjection):
        return CLIPImageProcessor(size={"shortest_edge": size[0]}, crop_size={"height": size[0], "width": size[1]})
    return ViTImageProcessor(size={"height": size[0], "width": size[1]}, image_mean=_IMAGENET_MEAN, image_std=_IMAGENET_STD)


_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _vision_config(config: PretrainedConfig) -> PretrainedConfig:
    return getattr(config, "vision_config", config)


def _class_name(config: PretrainedConfig, source: str) -> str:
    """The supported class a checkpoint's config names (its `architectures`), else its family's default."""
    named = next((name for name in config.architectures or () if name in CLASSES), None)
    if named is not None:
        return named
    if config.model_type not in DEFAULT_CLASS:
        named = (config.architectures or [config.model_type])[0]
        raise UnsupportedModelError(f"checkpoint {source!r} is a {named}, which does not decompose into residual units: {refusal(named)}")
    return DEFAULT_CLASS[config.model_type]


def _config(source: str) -> PretrainedConfig:
    return _cached(AutoConfig.from_pretrained, source)


def _is_checkpoint(source: str | None) -> bool:
    """Whether `source` names a checkpoint directory or model id (not a class, a file or None)."""
    return source is not None and source not in CLASSES and not Path(source).is_file()


def _cached(load: Callable[..., Any], source: str, **kwargs: Any) -> Any:
    """`load(source, local_files_only=True, ...)` with an error that says how to get `source`."""
    try:
        return load(source, local_files_only=True, **kwargs)
    except OSError as error:
        raise ValueError(
            f"checkpoint {source!r} is neither a local directory or weights file nor a Hugging Face model "
            f"id in the local HF cache ({error}). Download it once where there is network (`hf download {source}` "
            "fills the cache under HF_HOME, which this machine must share), or point to a local checkpoint directory"
        ) from error


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
