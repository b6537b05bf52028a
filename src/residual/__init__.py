"""ResiDual: residual-unit decomposition, spectral analysis and alignment of vision transformers."""

from residual.models import LoadedModel, load_model
from residual.units.decompose import Decomposition, decompose, trace
from residual.units.store import read_units
from residual.units.tokens import TokenDecomposition, decompose_tokens

__all__ = ["Decomposition", "LoadedModel", "TokenDecomposition", "decompose", "decompose_tokens", "load_model", "read_units", "trace"]
__version__ = "0.1.0"
