"""The model libraries the pipeline decomposes: one line each, readable without importing torch.

A library is an adapter module (imported on first use: it imports torch and the library, which
takes seconds) plus the facts the workflow needs before any model is built, so that parsing the
Snakefile, validating the config and planning the DAG never import a model library.

The adapter module defines `create(spec)`, `tower(module)`, `train_transform(module, preprocess)`,
`spec_problems(key, spec)` (what preflight refuses: unknown architectures or weights, models that
do not decompose), `skeleton(spec)` (the architecture on the meta device, or None where the
library cannot build one without weights) and, where the library's models may have a text tower,
`encode_text(model, tokenizer, texts)`.
"""

from __future__ import annotations

import difflib
import importlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

ADAPTER_FUNCTIONS = ("create", "tower", "train_transform", "spec_problems", "skeleton")
_ABSENT = object()
HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # a Hugging Face model id, owner/name


@dataclass(frozen=True)
class Library:
    """One supported library.

    - adapter: the adapter module's dotted name (see the module docstring for what it defines)
    - package: the distribution it needs (as `pyproject.toml` and `envs/` name it)
    - depth: the paths through `kwargs` to the vision tower's number of blocks, tried in order
    - checkpoint_fields: the entry's keys that may name a local checkpoint file or folder
    - text: whether an entry of the config has a text tower (zero-shot classifiers, descriptions)
    """

    adapter: str
    package: str
    depth: tuple[tuple[str, ...], ...]
    checkpoint_fields: tuple[str, ...]
    text: Callable[[Mapping[str, Any]], bool]

    def module(self) -> ModuleType:
        """The adapter, imported on first use."""
        return importlib.import_module(self.adapter)

    def vision_depth(self, spec: Mapping[str, Any]) -> Any:
        """The number of blocks the entry's `kwargs` set, or None where they leave the default."""
        for path in self.depth:
            scope: Any = spec.get("kwargs") or {}
            for key in path:
                scope = scope.get(key, _ABSENT) if isinstance(scope, Mapping) else _ABSENT
            if scope is not _ABSENT:
                return scope
        return None

    def local_checkpoints(self, spec: Mapping[str, Any]) -> list[str]:
        """The entry's checkpoint files or folders that exist on this machine."""
        return [value for key in self.checkpoint_fields if isinstance(value := spec.get(key), str) and Path(value).exists()]


def suggest(value: str, known: Iterable[str]) -> str:
    """' (did you mean ...?)' naming up to three of `known` close to `value`, or ''."""
    close = difflib.get_close_matches(value, list(known), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(map(repr, close))}?)" if close else ""


# transformers architectures (`arch` class names, or a checkpoint's `architectures`) with a text tower.
TRANSFORMERS_TEXT = ("CLIPModel", "BlipForImageTextRetrieval")


def transformers_architecture(spec: Mapping[str, Any]) -> str | None:
    """The transformers class an entry builds: `arch` when it names a class, else the first of the
    checkpoint's `architectures` (config.json of a local folder or of the local Hugging Face cache);
    None where the checkpoint is not on this machine."""
    arch = spec["arch"]
    if "/" not in arch and not Path(arch).exists():
        return arch
    config = Path(arch) / "config.json"
    if not config.is_file():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(arch, "config.json")
        if not isinstance(cached, str):
            return None
        config = Path(cached)
    architectures = json.loads(config.read_text()).get("architectures") or [None]
    return architectures[0]


LIBRARIES = {
    "open_clip": Library(
        "residual.models.openclip_tower", "open_clip_torch", (("vision_cfg", "layers"),), ("pretrained",), lambda spec: True
    ),
    "timm": Library("residual.models.timm_tower", "timm", (("depth",),), ("pretrained",), lambda spec: False),
    "transformers": Library(
        "residual.models.transformers_tower",
        "transformers",
        (("vision_config", "num_hidden_layers"), ("num_hidden_layers",)),
        ("pretrained", "arch"),
        lambda spec: transformers_architecture(spec) in TRANSFORMERS_TEXT,
    ),
}


def has_text_tower(spec: Mapping[str, Any]) -> bool:
    """Whether a model entry of the config has a text tower (open_clip, transformers CLIP and BLIP), as its library says."""
    return LIBRARIES[spec["library"]].text(spec)
