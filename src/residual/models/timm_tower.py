"""timm vision transformers (ViT, DeiT, DINOv2 with layer scale and registers) as a `Tower`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from timm.layers import Attention
from timm.models.vision_transformer import Block as TimmBlock
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from residual.libraries import suggest
from residual.models.checkpoint import read_state_dict
from residual.models.loaded import looks_like_path
from residual.models.tower import AttentionWeights, Block, Tower, UnsupportedModelError


def create(spec: dict[str, Any]) -> tuple[nn.Module, Any, tuple[int, int], dict[str, Any]]:
    """The timm model (classifier head kept but unused), its eval transform and input size."""
    arch, pretrained, kwargs = spec["arch"], spec.get("pretrained"), dict(spec.get("kwargs", {}))
    if not timm.is_model(arch.split(".")[0]):
        raise ValueError(f"timm has no architecture {arch!r}; `timm.list_models()` lists them")
    if pretrained is None:
        model = timm.create_model(arch, pretrained=False, **kwargs)
    elif Path(pretrained).is_file():
        model = timm.create_model(arch, pretrained=False, **kwargs)
        load_checkpoint(model, Path(pretrained))
    else:
        model = timm.create_model(f"{arch.split('.')[0]}.{pretrained}", pretrained=True, **kwargs)
    config = _data_config(model)
    preprocess = timm.data.create_transform(**config, is_training=False)
    _, height, width = config["input_size"]
    return model, preprocess, (height, width), {}


def spec_problems(key: str, spec: Mapping[str, Any]) -> list[str]:
    """What preflight refuses in an entry: an architecture or weights tag timm does not know."""
    arch, pretrained = spec["arch"], spec.get("pretrained")
    base = arch.split(".")[0]
    if not timm.is_model(base):
        return [f"{key}.arch: timm has no architecture {arch!r}{suggest(base, timm.list_models())}; timm.list_models() lists them"]
    if pretrained is not None and not looks_like_path(pretrained):
        tags = [name.split(".", 1)[1] for name in timm.list_pretrained(f"{base}.*")]
        if pretrained not in tags:
            return [
                f"{key}.pretrained: timm has no weights {pretrained!r} for {base!r}; its tags are {tags}, "
                "or give a checkpoint file, or null for random init"
            ]
    return []


def skeleton(spec: Mapping[str, Any]) -> nn.Module:
    """The architecture with the entry's kwargs on the meta device: no weights, no memory, no
    network; what `tower` would refuse shows on it."""
    with torch.device("meta"):
        return timm.create_model(spec["arch"].split(".")[0], pretrained=False, **spec.get("kwargs", {}))


def load_checkpoint(model: VisionTransformer, path: Path) -> None:
    """Load a weights file (`read_state_dict`) into `model`, strictly except for the classifier head, which the pipeline never uses: a checkpoint
    saved without it (the usual feature-extractor export, `num_classes=0`) loads, and so does one
    with it. Raises RuntimeError naming missing, unexpected or mis-shaped keys."""
    state = read_state_dict(path)
    head = model.pretrained_cfg.get("classifier", "head")
    state = {key: value for key, value in state.items() if not key.startswith(f"{head}.")}
    model.reset_classifier(0)
    model.load_state_dict(state, strict=True)


def tower(model: nn.Module) -> Tower:
    if type(model) is not VisionTransformer:  # subclasses (distilled DeiT, ...) pool differently
        raise UnsupportedModelError(f"{type(model).__name__} is not a plain timm VisionTransformer")
    if model.global_pool != "token" or model.attn_pool is not None or model.cls_token is None:
        raise UnsupportedModelError(
            f"this timm ViT pools with {model.global_pool!r}; only CLS-token pooling ('token') "
            "decomposes into residual units (build it with global_pool='token')"
        )
    norms = [norm for norm in (model.norm, model.fc_norm) if not isinstance(norm, nn.Identity)]
    if len(norms) != 1 or not isinstance(norms[0], nn.LayerNorm):
        raise UnsupportedModelError("expected exactly one final LayerNorm (norm or fc_norm)")
    blocks = []
    for index, block in enumerate(model.blocks):
        attn = getattr(block, "attn", None)
        if type(block) is not TimmBlock or not isinstance(attn, Attention):
            raise UnsupportedModelError(f"block {index} ({type(block).__name__}) is not a plain pre-norm ViT block")
        if attn.gate is not None or not isinstance(attn.norm, nn.Identity):
            raise UnsupportedModelError(f"block {index}: gated or normalised attention output does not split by head")
        weights = AttentionWeights.from_packed(
            attn.qkv.weight,
            attn.qkv.bias,
            attn.proj.weight,
            attn.proj.bias,
            attn.num_heads,
            scale=attn.scale,
            q_norm=_norm_or_none(attn.q_norm),
            k_norm=_norm_or_none(attn.k_norm),
        )
        blocks.append(Block(attn_module=attn, attention=weights, mlp=block.mlp, ls1=block.ls1, ls2=block.ls2))

    def encode(images: Tensor) -> Tensor:
        return model.forward_head(model.forward_features(images), pre_logits=True)

    # timm puts the CLS token, then the registers, before the patches (`_pos_embed`).
    prefix = ("cls", *(f"register_{index}" for index in range(model.num_reg_tokens)))
    grid = (int(model.patch_embed.grid_size[0]), int(model.patch_embed.grid_size[1]))
    return Tower(embed=model.norm_pre, blocks=blocks, final_norm=norms[0], proj=None, proj_bias=None, encode=encode, prefix=prefix, grid=grid)


def _norm_or_none(module: nn.Module) -> nn.Module | None:
    return None if isinstance(module, nn.Identity) else module


def train_transform(model: nn.Module, preprocess: Any) -> Any:
    """timm's train transform for the model's data config (random resized crop, flip, colour jitter)."""
    return timm.data.create_transform(**_data_config(model), is_training=True)


def _data_config(model: nn.Module) -> dict[str, Any]:
    config = timm.data.resolve_model_data_config(model)
    # The pretrained config's size goes stale when `kwargs` resize the model (img_size=...).
    config["input_size"] = (3, *model.patch_embed.img_size)
    return config
