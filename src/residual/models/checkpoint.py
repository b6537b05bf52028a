"""The one way the pipeline reads a weights file: never a pickle, never code.

Every adapter loads a local checkpoint (`pretrained: <file>`) through `read_state_dict`, and no
config value can change how: `kwargs` that would make a library load weights itself, or load them
unsafely, are refused by name (`loading_kwargs`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

# Constructor arguments through which a library would load weights on its own terms: a pickle
# (`weights_only`), TorchScript (`jit`), or another file or location than `pretrained`.
LOADING_KWARGS = {
    "weights_only": "it would let torch.load run the pickle's code",
    "jit": "it would load TorchScript, which is code",
    "checkpoint_path": "weights come from `pretrained`",
    "pretrained_cfg": "weights come from `pretrained`",
    "pretrained_image_path": "weights come from `pretrained`",
    "pretrained_text_path": "weights come from `pretrained`",
    "load_weights": "weights come from `pretrained`",
}
OVERLAY_LOCATIONS = ("file", "url", "hf_hub_id", "state_dict")  # pretrained_cfg_overlay keys naming weights


def loading_kwargs(kwargs: Mapping[str, Any]) -> list[str]:
    """'<key>: <why>' for each of `kwargs` (a model entry's) that would change how weights load."""
    problems = [f"{key}: {why}" for key, why in LOADING_KWARGS.items() if key in kwargs]
    overlay = kwargs.get("pretrained_cfg_overlay")
    if isinstance(overlay, Mapping):
        problems += [f"pretrained_cfg_overlay.{key}: weights come from `pretrained`" for key in OVERLAY_LOCATIONS if key in overlay]
    return problems


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a weights file: safetensors, or a torch file read with weights_only=True (a
    plain state dict, or one under 'state_dict' or 'model'; a 'module.' prefix left by
    DataParallel is dropped). Raises ValueError naming the file if it holds no state dict."""
    path = Path(path)
    if path.suffix == ".safetensors":
        state: Any = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict):
            state = next((state[key] for key in ("state_dict", "model") if isinstance(state.get(key), dict)), state)
    if not isinstance(state, dict) or not all(isinstance(value, Tensor) for value in state.values()):
        raise ValueError(f"checkpoint {path} does not hold a state dict (a mapping of names to tensors)")
    if state and all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return state
