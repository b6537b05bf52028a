"""Load a model entry of the config into a decomposable `LoadedModel`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from residual.device import pick_device
from residual.tower import Tower, UnsupportedModelError
from residual.unit_map import UnitMap
from residual.units import UnitLayout

LIBRARIES = ("open_clip", "timm", "transformers")


class ModelSpecError(ValueError):
    """A model entry of the config is malformed or names something that does not exist."""


@dataclass
class LoadedModel:
    """A vision model ready to decompose.

    - module: the library's model (eval mode, float32, on `device`)
    - preprocess: the model's own image transform (PIL image -> [3, H, W] tensor)
    - tower: where its residual stream lives (see `Tower`)
    - input_size: (H, W) the transform produces
    """

    name: str
    spec: dict[str, Any]
    module: nn.Module
    preprocess: Callable[[Any], Tensor]
    tower: Tower
    input_size: tuple[int, int]
    device: torch.device
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def layout(self) -> UnitLayout:
        return self.unit_map.layout

    @cached_property
    def unit_map(self) -> UnitMap:
        return UnitMap.from_tower(self.tower)

    @cached_property
    def embed_factor(self) -> Tensor:
        """(gamma[:, None] * P) [D, d_out]: a model-space contribution -> its stored emb/MLP value."""
        gamma = self.tower.final_norm.weight.detach().float()
        proj = self.tower.proj
        return gamma[:, None] * (proj.detach().float() if proj is not None else torch.eye(len(gamma), device=gamma.device))


def load_model(spec: Mapping[str, Any], name: str | None = None, device: str = "auto") -> LoadedModel:
    """Build one `models:` entry of the config.

    spec keys: `library` (open_clip | timm | transformers), `arch` (the library's model name), `pretrained`
    (a tag, a local checkpoint file, or None for random init seeded by `seed`, default 0),
    optional `kwargs` passed to the library's constructor (e.g. a smaller `img_size`).
    """
    spec = dict(spec)
    library = spec.get("library")
    if library not in LIBRARIES:
        raise ModelSpecError(f"model {name or spec.get('arch')!r}: library {library!r} is not one of {LIBRARIES}")
    if not isinstance(spec.get("arch"), str):
        raise ModelSpecError(f"model {name!r}: `arch` must name the library's architecture, got {spec.get('arch')!r}")
    pretrained = spec.get("pretrained")
    if library != "transformers" and isinstance(pretrained, str) and _looks_like_path(pretrained) and not Path(pretrained).is_file():
        raise ModelSpecError(
            f"model {name or spec['arch']!r}: checkpoint {pretrained!r} does not exist; fix `pretrained` or use null for random init"
        )
    target = pick_device(device)
    torch.manual_seed(int(spec.get("seed", 0)))
    if library == "open_clip":
        from residual.models import openclip_tower as adapter
    elif library == "transformers":
        from residual.models import blip_tower as adapter
    else:
        from residual.models import timm_tower as adapter
    try:
        module, preprocess, input_size, extras = adapter.create(spec)
    except RuntimeError as error:
        if any(text in str(error) for text in ("size mismatch", "Missing key", "Unexpected key")):
            raise ModelSpecError(
                f"model {name or spec['arch']!r}: checkpoint {pretrained!r} does not fit architecture "
                f"{spec['arch']!r}: {error}"
            ) from error
        raise
    module.eval().float().to(target)
    tower = adapter.tower(module)
    return LoadedModel(
        name=name or spec["arch"],
        spec=spec,
        module=module,
        preprocess=preprocess,
        tower=tower,
        input_size=input_size,
        device=target,
        extras=extras,
    )


def _looks_like_path(value: str) -> bool:
    return any(value.endswith(suffix) for suffix in (".pt", ".pth", ".bin", ".safetensors", ".ckpt")) or "/" in value
