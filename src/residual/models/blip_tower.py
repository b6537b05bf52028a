"""transformers BLIP (`BlipForImageTextRetrieval`) vision towers as a `Tower`, and their text tower
(the `transformers_tower` adapter builds the model and its transform).

BLIP's image embedding for image-text retrieval (the ITC path of `BlipForImageTextRetrieval`, and
the authors' encoder) is `vision_proj(last_hidden_state[:, 0])`, where `last_hidden_state` is the
encoder output after `post_layernorm`. (`pooler_output` applies `post_layernorm` a second time and
is not used.) There is no norm before block 0, so the stream enters block 0 straight from
`embeddings`. Each `BlipAttention` packs q, k, v in one `qkv` Linear whose output features are
ordered (3, H, dh) and projects the heads, concatenated in head order, with `projection` (W_O).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import Tensor, nn
from transformers import BlipForImageTextRetrieval, BlipImageProcessor
from transformers.models.blip.modeling_blip import BlipAttention, BlipEncoderLayer

from residual.models.tower import AttentionWeights, Block, Tower, UnsupportedModelError

if TYPE_CHECKING:
    from residual.models.loaded import LoadedModel

MODEL = BlipForImageTextRetrieval
ARCH = MODEL.__name__


def tower(model: nn.Module) -> Tower:
    """The vision tower of a `BlipForImageTextRetrieval`: no layer scale, output `vision_proj` (with bias)."""
    if not isinstance(model, BlipForImageTextRetrieval):
        raise UnsupportedModelError(f"{type(model).__name__} is not a transformers {ARCH}")
    vision = model.vision_model
    blocks = []
    for index, layer in enumerate(vision.encoder.layers):
        attn = getattr(layer, "self_attn", None)
        if type(layer) is not BlipEncoderLayer or type(attn) is not BlipAttention:
            raise UnsupportedModelError(f"block {index} ({type(layer).__name__}) is not a plain pre-norm BLIP encoder layer")
        weights = AttentionWeights.from_packed(
            attn.qkv.weight, attn.qkv.bias, attn.projection.weight, attn.projection.bias, attn.num_heads, scale=attn.scale
        )
        blocks.append(Block(attn_module=attn, attention=weights, mlp=layer.mlp, ls1=nn.Identity(), ls2=nn.Identity()))

    def encode(images: Tensor) -> Tensor:
        """images [B, 3, H, W] -> vision_proj(post_layernorm(encoder(embeddings))[:, 0]) [B, d_out].

        The vision model's own steps, called one by one: its forward also runs `post_layernorm` on
        the pooled CLS a second time, which would fire the final-norm hook twice.
        """
        stream = vision.encoder(inputs_embeds=vision.embeddings(images)).last_hidden_state
        return model.vision_proj(vision.post_layernorm(stream)[:, 0])

    side = vision.embeddings.image_size // vision.embeddings.patch_size  # BLIP's square patch grid
    return Tower(
        embed=vision.embeddings,
        blocks=blocks,
        final_norm=vision.post_layernorm,
        proj=model.vision_proj.weight.T,
        proj_bias=model.vision_proj.bias,
        encode=encode,
        grid=(side, side),
    )


def encode_text(model: LoadedModel, tokenizer: Callable, texts: list[str]) -> Tensor:
    """[n] texts -> text_proj of the text encoder's first ([CLS]) token [n, d_out]: the ITC path
    of `BlipForImageTextRetrieval`."""
    module = model.module
    tokens = tokenizer(
        texts,
        padding=True,
        truncation=True,
        max_length=module.config.text_config.max_position_embeddings,
        return_tensors="pt",
    ).to(model.device)
    hidden = module.text_encoder(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).last_hidden_state
    return module.text_proj(hidden[:, 0])


def default_processor(size: tuple[int, int]) -> BlipImageProcessor:
    """BLIP's default preprocessing (bicubic resize, CLIP mean/std) at the model's input size."""
    return BlipImageProcessor(size={"height": size[0], "width": size[1]})
