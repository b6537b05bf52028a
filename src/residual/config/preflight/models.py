"""The model checks of `check_config`, in a process of their own: each model entry's architecture,
pretrained tag or file, and kwargs, found on its skeleton without weights (the model libraries'
`skeleton` and `tower`). Run by `residual.config.preflight.model_problems`, which keeps the workflow's
own process free of torch and the model libraries:

    echo '{"name": {...model entry...}}' | python -m residual.config.preflight.models

prints, as the last line, the JSON list of problems (empty: every entry passed).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from residual.libraries import LIBRARIES
from residual.models.checkpoint import loading_kwargs
from residual.models.loaded import looks_like_path
from residual.models.tower import UnsupportedModelError


def model_problems(name: str, spec: Mapping[str, Any]) -> list[str]:
    """Static problems of one `models:` entry: architecture, pretrained tag or file."""
    key, library, pretrained = f"models.{name}", spec["library"], spec.get("pretrained")
    unsafe = loading_kwargs(spec.get("kwargs") or {})
    if unsafe:
        return [
            f"{key}.kwargs.{problem}; kwargs may not change how weights are loaded: remove it and give the weights file as `pretrained`"
            for problem in unsafe
        ]
    depth = LIBRARIES[library].vision_depth(spec)
    if depth is not None and (not isinstance(depth, int) or isinstance(depth, bool) or depth < 1):
        return [f"{key}.kwargs: {depth!r} blocks; a vision transformer needs at least one block to decompose into units"]
    folders = "arch" in LIBRARIES[library].checkpoint_fields  # the library reads checkpoint folders and model ids
    if not folders and isinstance(pretrained, str) and looks_like_path(pretrained) and not Path(pretrained).is_file() and "pretrain" not in spec:
        return [f"{key}.pretrained: checkpoint file {pretrained!r} does not exist; fix the path, or use null for random init"]
    return LIBRARIES[library].module().spec_problems(key, spec) or _architecture_problems(key, spec)


def _architecture_problems(key: str, spec: Mapping[str, Any]) -> list[str]:
    """What the model's first job would refuse (kwargs the library rejects; pooling or blocks that
    do not decompose: the adapter's `tower`), found on the architecture alone (`skeleton`)."""
    adapter = LIBRARIES[spec["library"]].module()
    try:
        module = adapter.skeleton(spec)
        if module is None:  # the library builds no architecture without its checkpoint: the first job checks it
            return []
    except TypeError as error:
        return [f"{key}.kwargs: {spec['library']} rejects {dict(spec.get('kwargs') or {})} for {spec['arch']!r} ({error}); fix `kwargs`"]
    except Exception:  # an operation the meta device lacks: the model's first job builds it for real, and checks it there
        return []
    try:
        adapter.tower(module)
    except UnsupportedModelError as error:
        return [f"{key}.arch: {spec['arch']!r} does not decompose into residual units: {error}"]
    return []


def main() -> None:
    models = json.load(sys.stdin)
    print(json.dumps([problem for name, spec in models.items() for problem in model_problems(name, spec)]))


if __name__ == "__main__":
    main()
