"""Load a model entry of the config into a decomposable `LoadedModel`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from residual.libraries import LIBRARIES
from residual.models.checkpoint import loading_kwargs
from residual.models.tower import Tower, UnsupportedModelError
from residual.runtime.device import pick_device


class ModelSpecError(ValueError):
    """A model entry of the config is malformed or names something that does not exist."""


@dataclass
class LoadedModel:
    """A vision model ready to decompose.

    - module: the library's model (eval mode, float32, on `device`)
    - preprocess: the model's own image transform (PIL image -> [3, H, W] tensor)
    - preprocess_train: its train-time transform (random crops, flips, ...), for fine-tuning
    - tower: where its residual stream lives (see `Tower`)
    - input_size: (H, W) the transform produces
    """

    name: str
    spec: dict[str, Any]
    module: nn.Module
    preprocess: Callable[[Any], Tensor]
    preprocess_train: Callable[[Any], Tensor]
    tower: Tower
    input_size: tuple[int, int]
    device: torch.device
    extras: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def output_factor(self) -> Tensor:
        """(gamma[:, None] * P) [D, d_out]: a model-space contribution of the emb or an MLP unit ->
        its stored value (the tower's `output_factor`, computed once)."""
        return self.tower.output_factor()


def load_model(spec: Mapping[str, Any], name: str | None = None, device: str = "auto") -> LoadedModel:
    """Build one `models:` entry of the config.

    spec keys: `library` (one of `LIBRARIES`), `arch` (the library's model name), `pretrained`
    (a tag, a local checkpoint file, or None for random init seeded by `seed`, default 0),
    optional `kwargs` passed to the library's constructor (e.g. a smaller `img_size`).
    """
    spec = dict(spec)
    library = spec.get("library")
    if library not in LIBRARIES:
        raise ModelSpecError(f"model {name or spec.get('arch')!r}: library {library!r} is not one of {tuple(LIBRARIES)}")
    if not isinstance(spec.get("arch"), str):
        raise ModelSpecError(f"model {name!r}: `arch` must name the library's architecture, got {spec.get('arch')!r}")
    unsafe = loading_kwargs(spec.get("kwargs") or {})
    if unsafe:
        raise ModelSpecError(
            f"model {name or spec['arch']!r}: `kwargs` may not change how weights are loaded ({'; '.join(unsafe)}): "
            "the pipeline reads every checkpoint itself, safely (safetensors, or torch.load with weights_only=True); "
            "remove them and give the weights file as `pretrained`"
        )
    pretrained = spec.get("pretrained")
    # A folder or a model id is a checkpoint only where the library reads checkpoint folders (`arch` among its fields).
    folders = "arch" in LIBRARIES[library].checkpoint_fields
    if not folders and isinstance(pretrained, str) and looks_like_path(pretrained) and not Path(pretrained).is_file():
        raise ModelSpecError(
            f"model {name or spec['arch']!r}: checkpoint {pretrained!r} does not exist; fix `pretrained` or use null for random init"
        )
    target = pick_device(device)
    adapter = LIBRARIES[library].module()
    label = name or spec["arch"]
    try:
        with torch.random.fork_rng(devices=[]):  # seed the random init without resetting the caller's stream
            torch.manual_seed(int(spec.get("seed", 0)))
            module, preprocess, input_size, extras = adapter.create(spec)
    except (ModelSpecError, UnsupportedModelError):
        raise
    except Exception as error:
        wrapped = _creation_error(label, spec, error)
        if wrapped is None:
            raise
        raise wrapped from error
    _check_finite(label, spec, module)
    module.eval().float().to(target)
    tower = adapter.tower(module)
    if not tower.blocks:
        raise ModelSpecError(f"model {label!r}: its vision tower has no blocks (check `kwargs`); there are no units to decompose")
    return LoadedModel(
        name=label,
        spec=spec,
        module=module,
        preprocess=preprocess,
        preprocess_train=adapter.train_transform(module, preprocess),
        tower=tower,
        input_size=input_size,
        device=target,
        extras=extras,
    )


def _creation_error(label: str, spec: Mapping[str, Any], error: Exception) -> ModelSpecError | None:
    """The library's error while building a model, as a ModelSpecError naming the entry and the fix;
    None for errors that are not the config's fault (out of memory, bugs)."""
    library, arch, pretrained, kwargs = spec["library"], spec["arch"], spec.get("pretrained"), spec.get("kwargs", {})
    cause = f"{type(error).__name__}: {error}"
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return None
    shapes = isinstance(error, RuntimeError) and any(text in str(error) for text in ("size mismatch", "Missing key", "Unexpected key"))
    if isinstance(pretrained, str) and Path(pretrained).is_file():
        if shapes:
            return ModelSpecError(
                f"model {label!r}: checkpoint {pretrained} does not fit {library} {arch!r} with kwargs {kwargs}: {cause}. "
                "It was saved from another architecture or kwargs: fix `arch`/`kwargs` to match it"
            )
        return ModelSpecError(
            f"model {label!r}: checkpoint {pretrained} cannot be read as {library} {arch!r} weights: {cause}. "
            "The file is truncated or corrupt, or not a state dict: re-export or re-download it"
        )
    if shapes:
        return ModelSpecError(f"model {label!r}: pretrained {pretrained!r} does not fit {library} {arch!r} with kwargs {kwargs}: {cause}")
    if isinstance(error, TypeError):
        return ModelSpecError(f"model {label!r}: {library} rejects `kwargs` {kwargs} for {arch!r}: {cause}; fix `kwargs`")
    if isinstance(error, (ValueError, KeyError)):
        return ModelSpecError(f"model {label!r}: {library} cannot build {arch!r} with pretrained {pretrained!r}: {cause}")
    if isinstance(error, OSError):
        return ModelSpecError(
            f"model {label!r}: {library} could not get weights {pretrained!r} for {arch!r}: {cause}. Tags are downloaded "
            "on first use: give this machine network access once, or fill the library's cache (HF_HOME) where there is "
            "network, or point `pretrained` to a local checkpoint file"
        )
    return None


def _check_finite(label: str, spec: Mapping[str, Any], module: nn.Module) -> None:
    """ModelSpecError naming the first parameter holding NaN or Inf (a corrupt checkpoint decomposes into garbage)."""
    for parameter_name, parameter in module.named_parameters():
        if parameter.is_floating_point() and not bool(torch.isfinite(parameter).all()):
            raise ModelSpecError(
                f"model {label!r}: parameter {parameter_name!r} holds NaN or Inf after loading weights "
                f"{spec.get('pretrained')!r}; the checkpoint is corrupt: re-export or re-download it"
            )


def looks_like_path(value: str) -> bool:
    """Whether `pretrained` names a checkpoint file (by suffix or a '/') rather than a library's tag."""
    return any(value.endswith(suffix) for suffix in (".pt", ".pth", ".bin", ".safetensors", ".ckpt")) or "/" in value
