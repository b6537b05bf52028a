"""Per-token decomposition of attention heads' CLS outputs: where in the image a head finds what it writes.

A head's raw CLS output is a sum over the N source tokens it attends to (the weights a_{h,t} sum to one):

    z_h = sum_t a_{h,t} (W_v,h x_t + b_v,h)

and its unit value is linear in z_h through the unit map (`UnitMap`: the output projection, the
linearised final LayerNorm, the model's projection), so

    y_h = sum_t y_{h,t} + c_h,    y_{h,t} = (a_{h,t} (W_v,h x_t + b_v,h)) @ W_h / s,
                                  c_h = b_h / s + share_h (k0 - (mu / s) k1)

exactly: a token's part carries its weighted value (the value bias travels with the weight that
picks it); c_h, the offset, is what no token carries: the head's share of the output projection's
bias and of the final LayerNorm's constant terms. Tokens keep the model's order, the prefix (the
CLS token, then registers) before the patches row by row, so `patches` lays them on the image.
The invariant is checked on every call, as the units' own: per head and sample,
max |sum_t y_{h,t} + c_h - y_h| / max |y_h| <= 1e-4, where y_h comes from the attention's
key/value-free path (`cls_head_outputs`) and the tokens from the explicit one.

Cost: the result holds B x K x N x d_out floats (K heads). At ViT-L/14 (N = 257, d_out = 768) that
is 0.79 MB per head and image: 303 MB per image for all 384 heads, so ask for the heads you need.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from residual.models.loaded import LoadedModel
from residual.models.tower import UnsupportedModelError
from residual.units.decompose import checked_values, trace_tokens
from residual.units.guards import TOLERANCE, DecompositionError, relative_error
from residual.units.layout import is_head
from residual.units.unit_map import UnitMap, layout_of


@dataclass(frozen=True)
class TokenDecomposition:
    """K heads of a batch of B images split by source token, in output space (float32).

    - names [K]: the heads; prefix [P]: the tokens before the patches (CLS, registers); grid (rows, columns)
    - tokens [B, K, T, d_out], T = P + rows * columns: each token's part of each head's unit value
    - offset [B, K, d_out]: the part no token carries (see the module's docstring)
    - units [B, K, d_out]: the heads' unit values, as `decompose` returns them; embedding [B, d_out]
    """

    names: list[str]
    prefix: tuple[str, ...]
    grid: tuple[int, int]
    tokens: Tensor
    offset: Tensor
    units: Tensor
    embedding: Tensor

    @property
    def patches(self) -> Tensor:
        """[B, K, rows, columns, d_out]: the patch tokens' parts on the image's grid."""
        return self.tokens[:, :, len(self.prefix) :].unflatten(2, self.grid)

    @property
    def error(self) -> float:
        """Worst per-head, per-sample max |sum_t y_{h,t} + c_h - y_h| / max |y_h|."""
        return relative_error((self.tokens.sum(dim=2) + self.offset).flatten(0, 1), self.units.flatten(0, 1))


def decompose_tokens(
    model: LoadedModel, images: Tensor, heads: Sequence[str] | None = None, unit_map: UnitMap | None = None
) -> TokenDecomposition:
    """The heads `heads` (unit names; None: every head) of a batch split by source token.
    images: [B, 3, H, W], already preprocessed; unit_map: the map to output space (default the
    model's own; give the run's unit map file to match its stored units' `ln_constants`).

    UnsupportedModelError for a model whose tokens cannot be laid on a patch grid (pooling models are
    refused by `load_model` already); DecompositionError if the units miss the embedding, or a head's
    tokens miss its unit value, by more than 1e-4 relative.
    """
    tower, layout = model.tower, layout_of(model.tower)
    if tower.grid is None:
        raise UnsupportedModelError(
            f"model {model.name!r}: its adapter gives no patch grid, so its tokens cannot be laid on the image; "
            "per-token maps need one (`Tower.grid`)"
        )
    names = [name for name in layout.names if is_head(name)] if heads is None else list(heads)
    if not names:
        raise ValueError(f"model {model.name!r}: no heads to split by token; name at least one (e.g. 'head_0_0')")
    coordinates = []
    for name in names:
        kind, layer, head = layout.parse(name)
        if kind != "head":
            raise ValueError(f"model {model.name!r}: unit {name!r} is not an attention head; only heads split by source token")
        coordinates.append((layer, head))
    by_layer: dict[int, list[int]] = {}
    for layer, head in coordinates:
        by_layer.setdefault(layer, []).append(head)
    unit_map = (UnitMap.from_tower(model.tower) if unit_map is None else unit_map).to(model.device)
    raw, contributions = trace_tokens(model, images, by_layer)
    count, expected = next(iter(contributions.values())).shape[2], len(tower.prefix) + tower.grid[0] * tower.grid[1]
    if count != expected:
        raise UnsupportedModelError(
            f"model {model.name!r} attends over {count} tokens, but its prefix {list(tower.prefix)} and {tower.grid[0]} x "
            f"{tower.grid[1]} patch grid make {expected}: give images of the model's input size {model.input_size}"
        )
    context = f"decompose_tokens with model {model.name!r}"
    values, _ = checked_values(raw, unit_map, range(len(images)), context)
    positions = [layout.index(name) for name in names]
    flat = [layer * layout.heads + head for layer, head in coordinates]
    z = torch.stack([contributions[layer][:, by_layer[layer].index(head)] for layer, head in coordinates], dim=1)  # [B, K, N, dh]
    tokens = torch.einsum("bknh,kho->bkno", z, unit_map.head_weight[flat]) / raw.ln_std.float()[:, None, None, None]
    offset = unit_map.finish(unit_map.head_bias[flat].expand(len(images), -1, -1), raw.ln_mean, raw.ln_std, positions)
    result = TokenDecomposition(names, tower.prefix, tower.grid, tokens, offset, values[:, positions], raw.embedding.float())
    error = result.error
    if not error <= TOLERANCE:  # also catches NaN
        raise DecompositionError(
            f"{context}: the tokens of a head miss its unit value by {error:.3g} relative (tolerance {TOLERANCE:g}); "
            "the adapter's attention weights differ from the model's own (masks, extra tokens), or it ran in reduced precision"
        )
    return result
