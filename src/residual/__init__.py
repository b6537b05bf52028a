"""ResiDual: residual-unit decomposition, spectral analysis and alignment of vision transformers."""

from __future__ import annotations

import importlib
from typing import Any

# The public API, by name -> the module that defines it. Imported on first use (PEP 562): importing
# any `residual` submodule runs this file, and the Snakefile and the table and chart jobs import
# torch-free submodules that must not pay for torch and the model libraries.
_EXPORTS = {
    "LoadedModel": "residual.models.loaded",
    "load_model": "residual.models.loaded",
    "Decomposition": "residual.units.decompose",
    "decompose": "residual.units.decompose",
    "trace": "residual.units.decompose",
    "read_units": "residual.units.store",
    "TokenDecomposition": "residual.units.tokens",
    "decompose_tokens": "residual.units.tokens",
}

__all__ = sorted(_EXPORTS, key=str.lower)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'residual' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
