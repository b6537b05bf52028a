"""open_clip vision transformers as a `Tower`, and their text tower."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import open_clip
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import Tensor, nn

from residual.libraries import suggest
from residual.models.checkpoint import read_state_dict
from residual.models.loaded import looks_like_path
from residual.models.tower import AttentionWeights, Block, Tower, UnsupportedModelError

if TYPE_CHECKING:
    from residual.models.loaded import LoadedModel


def create(spec: dict[str, Any]) -> tuple[nn.Module, Any, tuple[int, int], dict[str, Any]]:
    """The CLIP model, its eval transform, its input size and its tokenizer (in `extras`)."""
    arch = spec["arch"]
    if arch not in open_clip.list_models():
        raise ValueError(f"open_clip has no architecture {arch!r}; `open_clip.list_models()` lists them")
    pretrained = spec.get("pretrained")
    local = pretrained is not None and Path(pretrained).is_file()
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None if local else pretrained, **spec.get("kwargs", {}))
    if local:
        model.load_state_dict(read_state_dict(pretrained), strict=True)
    size = model.visual.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    return model, preprocess, size, {"tokenizer": open_clip.get_tokenizer(arch)}


def spec_problems(key: str, spec: Mapping[str, Any]) -> list[str]:
    """What preflight refuses in an entry: an architecture or weights tag open_clip does not know."""
    arch, pretrained = spec["arch"], spec.get("pretrained")
    architectures = open_clip.list_models()
    if arch not in architectures:
        return [f"{key}.arch: open_clip has no architecture {arch!r}{suggest(arch, architectures)}; open_clip.list_models() lists them"]
    if pretrained is not None and not looks_like_path(pretrained):
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if pretrained not in tags:
            return [
                f"{key}.pretrained: open_clip has no weights {pretrained!r} for {arch!r}; its tags are {tags}, "
                "or give a checkpoint file, or null for random init"
            ]
    return []


def skeleton(spec: Mapping[str, Any]) -> nn.Module:
    """The architecture with the entry's kwargs on the meta device: no weights, no memory, no
    network; what `tower` would refuse shows on it."""
    with torch.device("meta"), _root_log_silenced():
        return open_clip.create_model(spec["arch"], pretrained=None, load_weights=False, device="meta", **spec.get("kwargs", {}))


@contextmanager
def _root_log_silenced() -> Iterator[None]:
    """open_clip warns through the root logger that it loaded no weights, which is the point of a
    skeleton; the handler keeps that call from configuring the root logger of the caller's process."""
    handler, previous = logging.NullHandler(), logging.root.manager.disable
    logging.root.addHandler(handler)
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)
        logging.root.removeHandler(handler)


def tower(model: nn.Module) -> Tower:
    visual = getattr(model, "visual", None)
    if not isinstance(visual, VisionTransformer):
        raise UnsupportedModelError(f"{type(visual).__name__} is not an open_clip VisionTransformer: only ViTs decompose into heads")
    if visual.attn_pool is not None or visual.pool_type != "tok":
        raise UnsupportedModelError(
            f"this open_clip ViT pools with {'attention' if visual.attn_pool is not None else visual.pool_type!r}; "
            "only CLS-token pooling ('tok') decomposes into residual units"
        )
    blocks = []
    for index, block in enumerate(visual.transformer.resblocks):
        if type(block) is not ResidualAttentionBlock:
            raise UnsupportedModelError(
                f"block {index} is a {type(block).__name__}: only plain pre-norm blocks (no qk-norm, "
                "scaled cosine or inner norms) decompose linearly into heads"
            )
        attn = block.attn
        if not attn._qkv_same_embed_dim or attn.bias_k is not None or attn.add_zero_attn:
            raise UnsupportedModelError(f"block {index}: attention with separate k/v widths or extra k/v biases")
        weights = AttentionWeights.from_packed(
            attn.in_proj_weight, attn.in_proj_bias, attn.out_proj.weight, attn.out_proj.bias, attn.num_heads
        )
        blocks.append(Block(attn_module=attn, attention=weights, mlp=block.mlp, ls1=block.ls_1, ls2=block.ls_2))
    if not isinstance(visual.ln_post, nn.LayerNorm):
        raise UnsupportedModelError(f"final norm is {type(visual.ln_post).__name__}, not a LayerNorm")
    return Tower(
        embed=visual.ln_pre,
        blocks=blocks,
        final_norm=visual.ln_post,
        proj=visual.proj,
        proj_bias=None,
        encode=model.encode_image,
        batch_first=visual.transformer.batch_first,
        grid=(int(visual.grid_size[0]), int(visual.grid_size[1])),
    )


def encode_text(model: LoadedModel, tokenizer: Callable, texts: list[str]) -> Tensor:
    """[n] texts -> `encode_text` [n, d_out]; tokenised at the model's own context length."""
    tokens = tokenizer(texts, context_length=model.module.context_length)
    return model.module.encode_text(tokens.to(model.device))


def train_transform(model: nn.Module, preprocess: Any) -> Any:
    """The train transform `create_model_and_transforms` builds beside the eval one (same config)."""
    return image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=True)
