"""Names and order of residual units: `[emb, mlp_0 .. mlp_{L-1}, head_0_0 .. head_{L-1}_{H-1}]`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, NamedTuple

UnitKind = Literal["emb", "mlp", "head", "output"]
OUTPUT = "output"  # the model's embedding (the sum of all units), fitted and tabled beside the units
_NAME = re.compile(r"^(?:emb|output|mlp_(\d+)|head_(\d+)_(\d+))$")


class UnitName(NamedTuple):
    """A parsed unit name; layer and head are None where they do not apply."""

    kind: UnitKind
    layer: int | None
    head: int | None


def parse_unit(name: str) -> UnitName:
    """The one parser of unit names: 'head_3_5' -> ('head', 3, 5); 'mlp_2' -> ('mlp', 2, None);
    'emb' -> ('emb', None, None); 'output' -> ('output', None, None). KeyError for anything else."""
    match = _NAME.match(name)
    if match is None:
        raise KeyError(f"unknown unit name {name!r}: expected 'emb', 'mlp_<layer>', 'head_<layer>_<head>' or '{OUTPUT}'")
    mlp_layer, head_layer, head = match.groups()
    if mlp_layer is not None:
        return UnitName("mlp", int(mlp_layer), None)
    if head_layer is not None:
        return UnitName("head", int(head_layer), int(head))
    return UnitName(name, None, None)  # type: ignore[arg-type]  # 'emb' or 'output'


def is_head(name: str) -> bool:
    return parse_unit(name).kind == "head"


def unit_coordinates(name: str) -> dict[str, str | int | None]:
    """Table columns of a unit name: {'kind', 'layer', 'head'}."""
    return parse_unit(name)._asdict()




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

    def parse(self, name: str) -> UnitName:
        """`parse_unit`, restricted to the units of this layout (not 'output')."""
        unit = parse_unit(name)
        if unit.kind == OUTPUT:
            raise KeyError(f"{OUTPUT!r} is the model's embedding, not one of its units")
        if (unit.layer or 0) >= self.layers or (unit.head or 0) >= self.heads:
            raise KeyError(f"unit {name!r} is outside this model ({self.layers} layers x {self.heads} heads)")
        return unit

    def stored_dim(self, name: str) -> int:
        return self.head_dim if self.parse(name).kind == "head" else self.out_dim

    def head_index(self, name: str) -> int:
        """Flat index of a head among all heads (layer-major)."""
        _, layer, head = self.parse(name)
        return layer * self.heads + head
