"""transformers BLIP (`BlipForImageTextRetrieval`) vision towers as a `Tower`, and their text tower.

BLIP's image embedding for image-text retrieval (the ITC path of `BlipForImageTextRetrieval`, and
the authors' encoder) is `vision_proj(last_hidden_state[:, 0])`, where `last_hidden_state` is the
encoder output after `post_layernorm`. (`pooler_output` applies `post_layernorm` a second time and
is not used.) There is no norm before block 0, so the stream enters block 0 straight from
`embeddings`. Each `BlipAttention` packs q, k, v in one `qkv` Linear whose output features are
ordered (3, H, dh) and projects the heads, concatenated in head order, with `projection` (W_O).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image
from torch import Tensor, nn
from torchvision import transforms
from transformers import (
    AutoTokenizer,
    BlipConfig,
    BlipForImageTextRetrieval,
    BlipImageProcessor,
)
from transformers.models.blip.modeling_blip import BlipAttention, BlipEncoderLayer

from residual.models.checkpoint import read_state_dict
from residual.models.tower import AttentionWeights, Block, Tower, UnsupportedModelError

if TYPE_CHECKING:
    from residual.models import LoadedModel

ARCH = "BlipForImageTextRetrieval"


def create(spec: dict[str, Any]) -> tuple[nn.Module, Any, tuple[int, int], dict[str, Any]]:
    """The BLIP retrieval model, its eval transform, its input size and its tokenizer (`extras`).

    `arch`: the architecture, either a checkpoint (a Hugging Face model id in the local HF cache, or
    a `save_pretrained` directory), whose config is used, or `BlipForImageTextRetrieval` for a config
    built from `kwargs` (`BlipConfig` fields, e.g. `vision_config: {hidden_size: 32, ...}`).
    `pretrained`: the weights, a checkpoint (model id or directory), a weights file (.safetensors or
    a torch state dict), or None for random init. The hub is never contacted (offline runs would
    stall on its retries). The image processor and tokenizer come from the first checkpoint among
    `pretrained` and `arch`; a directory may lack them (then BLIP's default preprocessing at the
    model's size, and no text encoding), a model id must have them.
    """
    arch, pretrained, kwargs = spec["arch"], spec.get("pretrained"), dict(spec.get("kwargs", {}))
    if arch == ARCH:
        config = BlipConfig(**kwargs)
    elif kwargs:
        raise ValueError(f"`kwargs` configure arch {ARCH!r}; checkpoint {arch!r} brings its own config: drop `kwargs`")
    else:
        config = _cached(BlipConfig.from_pretrained, arch)
    if pretrained is None or Path(pretrained).is_file():
        model = BlipForImageTextRetrieval(config)
        if pretrained is not None:
            model.load_state_dict(read_state_dict(pretrained))
    else:
        model, info = _cached(BlipForImageTextRetrieval.from_pretrained, pretrained, config=config, output_loading_info=True)
        problems = [*info["missing_keys"], *info["unexpected_keys"], *info["mismatched_keys"]]
        if problems:  # transformers only warns: a partly random model must not pass for the checkpoint
            raise RuntimeError(f"Missing key(s), unexpected key(s) or size mismatch in {pretrained!r}: {problems[:5]}")
    checkpoint = next((source for source in (pretrained, arch) if _is_checkpoint(source)), None)
    processor, tokenizer = _default_processor(model), None
    if checkpoint is not None:
        directory = Path(checkpoint) if Path(checkpoint).is_dir() else None
        if directory is None or (directory / "preprocessor_config.json").is_file():
            processor = _cached(BlipImageProcessor.from_pretrained, checkpoint)
        if directory is None or (directory / "tokenizer_config.json").is_file():
            tokenizer = _cached(AutoTokenizer.from_pretrained, checkpoint)
    preprocess, size = _transform(processor, model)
    return model, preprocess, size, {"tokenizer": tokenizer}


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


def _is_checkpoint(source: str | None) -> bool:
    """Whether `source` names a checkpoint directory or model id (not a class, a file or None)."""
    return source is not None and source != ARCH and not Path(source).is_file()


def _cached(load: Callable[..., Any], source: str, **kwargs: Any) -> Any:
    """`load(source, local_files_only=True, ...)` with an error that says how to get `source`."""
    try:
        return load(source, local_files_only=True, **kwargs)
    except OSError as error:
        raise ValueError(
            f"BLIP checkpoint {source!r} is neither a local directory or weights file nor a Hugging Face model "
            f"id in the local HF cache ({error}). Download it once where there is network (`hf download {source}` "
            "fills the cache under HF_HOME, which this machine must share), or point to a local checkpoint directory"
        ) from error


def _default_processor(model: BlipForImageTextRetrieval) -> BlipImageProcessor:
    """BLIP's default preprocessing (bicubic resize, CLIP mean/std) at the model's input size."""
    height, width = _pair(model.config.vision_config.image_size)
    return BlipImageProcessor(size={"height": height, "width": width})


def _transform(processor: BlipImageProcessor, model: BlipForImageTextRetrieval) -> tuple[transforms.Compose, tuple[int, int]]:
    """The processor's steps as a picklable torchvision transform: PIL image -> [3, H, W] float32.

    Same as BLIP's PIL processor: RGB, resize to exactly (H, W), scale to [0, 1], normalise.
    """
    size = (processor.size["height"], processor.size["width"])
    if size != _pair(model.config.vision_config.image_size):
        raise ValueError(
            f"the image processor resizes to {size} but the model's position embeddings expect "
            f"{_pair(model.config.vision_config.image_size)}: fix the checkpoint's preprocessor_config.json"
        )
    if not (processor.do_resize and processor.do_rescale and processor.do_normalize) or abs(processor.rescale_factor - 1 / 255) > 1e-12:
        raise ValueError("the BLIP image processor departs from resize + rescale by 1/255 + normalise; it is not supported")
    transform = transforms.Compose(
        [
            _convert_to_rgb,
            transforms.Resize(size, interpolation=transforms.InterpolationMode[Image.Resampling(processor.resample).name]),
            transforms.ToTensor(),
            transforms.Normalize(processor.image_mean, processor.image_std),
        ]
    )
    return transform, size


def _convert_to_rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def train_transform(model: nn.Module, preprocess: Any) -> Any:
    """BLIP's processor has no train-time augmentation: fine-tuning sees the eval transform."""
    return preprocess
