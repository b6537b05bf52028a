"""Names and order of residual units: `[emb, mlp_0 .. mlp_{L-1}, head_0_0 .. head_{L-1}_{H-1}]`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

UnitKind = Literal["emb", "mlp", "head"]
_NAME = re.compile(r"^(?:emb|mlp_(\d+)|head_(\d+)_(\d+))$")


@dataclass(frozen=True)
class UnitLayout:
    """Shape of a model's decomposition: L layers of H heads of width dh, output width d_out.

    Stored widths: emb and MLP units are kept in output space before the LayerNorm scale
    (d_out values); heads are kept as their raw attention outputs (dh values).
    """

    layers: int
    heads: int
    head_dim: int
    out_dim: int

    @property
    def names(self) -> list[str]:
        mlps = [f"mlp_{layer}" for layer in range(self.layers)]
        heads = [f"head_{layer}_{head}" for layer in range(self.layers) for head in range(self.heads)]
        return ["emb", *mlps, *heads]

    @property
    def count(self) -> int:
        return 1 + self.layers + self.layers * self.heads

    def index(self, name: str) -> int:
        kind, layer, head = self.parse(name)
        if kind == "emb":
            return 0
        if kind == "mlp":
            return 1 + layer
        return 1 + self.layers + layer * self.heads + head

    def parse(self, name: str) -> tuple[UnitKind, int, int]:
        """'head_3_5' -> ('head', 3, 5); 'mlp_2' -> ('mlp', 2, -1); 'emb' -> ('emb', -1, -1)."""
        match = _NAME.match(name)
        if match is None:
            raise KeyError(f"unknown unit name {name!r}: expected 'emb', 'mlp_<layer>' or 'head_<layer>_<head>'")
        mlp_layer, head_layer, head = match.groups()
        if mlp_layer is not None:
            kind, layer, index = "mlp", int(mlp_layer), -1
        elif head_layer is not None:
            kind, layer, index = "head", int(head_layer), int(head)
        else:
            return "emb", -1, -1
        if layer >= self.layers or index >= self.heads:
            raise KeyError(f"unit {name!r} is outside this model ({self.layers} layers x {self.heads} heads)")
        return kind, layer, index

    def stored_dim(self, name: str) -> int:
        return self.head_dim if self.parse(name)[0] == "head" else self.out_dim

    def head_index(self, name: str) -> int:
        """Flat index of a head among all heads (layer-major)."""
        _, layer, head = self.parse(name)
        return layer * self.heads + head


def unit_coordinates(name: str) -> dict[str, str | int | None]:
    """Table columns of a unit name: {'kind', 'layer', 'head'}; the model's embedding ('output',
    fitted beside the units) has kind 'output'. Layers and heads are None where they do not apply."""
    if name == "output":
        return {"kind": "output", "layer": None, "head": None}
    match = _NAME.match(name)
    if match is None:
        raise KeyError(f"unknown unit name {name!r}: expected 'emb', 'mlp_<layer>', 'head_<layer>_<head>' or 'output'")
    mlp_layer, head_layer, head = match.groups()
    if mlp_layer is not None:
        return {"kind": "mlp", "layer": int(mlp_layer), "head": None}
    if head_layer is not None:
        return {"kind": "head", "layer": int(head_layer), "head": int(head)}
    return {"kind": "emb", "layer": None, "head": None}
