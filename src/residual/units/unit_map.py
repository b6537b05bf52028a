"""The exact affine map from stored unit values to output space.

With r the CLS stream before the final LayerNorm (mean mu, population std s with eps), gamma and
beta the norm's affine parameters, P [D, d_out] the projection (identity if none) and p its bias,
each unit's output-space contribution is (METHOD section 1)

    y_u = (gamma * (c_u - a_u mu) / s + a_u beta) @ P + a_u p
        = t_u / s + a_u (k0 - (mu / s) * k1),     t_u = (gamma * c_u) @ P,
                                                    k0 = beta @ P + p,  k1 = gamma @ P,

where the shares a_u (summing to 1, so that the units still sum to the embedding exactly) split the
norm's constant terms over the units by `LnConstants`:
- per_unit (METHOD section 1): a_u = 1 / N for each of the N = 1 + L + L*H units;
- per_layer (the authors' published tracing): emb and each MLP 1 / (2L + 1), each head
  1 / ((2L + 1) H): each attention layer takes one slot and splits it over its heads.

emb and MLP units are stored as t_u directly ([d_out]). A head is stored as its raw attention
output z [dh], with t_u = z @ W_h + b_h, W_h = (W_O[:, h] * ls1 * gamma)^T @ P, b_h = (b_O / H * ls1 * gamma) @ P.
Only W_h [L*H, dh, d_out], b_h [L*H, d_out], k0, k1 and the shares [N] are needed to read units back.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import torch
from torch import Tensor

from residual.io.tensors import TensorFileError, open_tensors, save_tensors
from residual.models.tower import Tower, layer_scale_vector
from residual.units.layout import UnitLayout, is_head

# Its version, UNIT_MAP_VERSION, is in residual.units.versions: bump it there when a change to this module changes the maps it writes.

LnConstants = Literal["per_unit", "per_layer"]


def constant_shares(layout: UnitLayout, rule: LnConstants) -> Tensor:
    """[N] float64 share of the final LayerNorm's constant terms each unit takes, in layout order (sums to 1)."""
    if rule == "per_unit":
        return torch.full((layout.count,), 1.0 / layout.count, dtype=torch.float64)
    if rule == "per_layer":
        slots = 2 * layout.layers + 1
        head_share, other_share = 1.0 / (slots * layout.heads), 1.0 / slots
        return torch.tensor([head_share if is_head(name) else other_share for name in layout.names], dtype=torch.float64)
    raise ValueError(f"ln_constants {rule!r} is not one of {get_args(LnConstants)}")


@dataclass(frozen=True)
class UnitMap:
    """Stored unit values -> output space. Shapes: head_weight [L*H, dh, d_out],
    head_bias [L*H, d_out], k0 [d_out], k1 [d_out] (the norm's whole constant terms),
    shares [N] (each unit's part of them, by `ln_constants`)."""

    layout: UnitLayout
    head_weight: Tensor
    head_bias: Tensor
    k0: Tensor
    k1: Tensor
    shares: Tensor
    ln_constants: LnConstants = "per_unit"

    @classmethod
    def from_tower(cls, tower: Tower, ln_constants: LnConstants = "per_unit") -> UnitMap:
        norm = tower.final_norm
        gamma = norm.weight.detach().float()
        beta = norm.bias.detach().float() if norm.bias is not None else torch.zeros_like(gamma)
        proj = tower.projection()
        proj_bias = tower.proj_bias.detach().float() if tower.proj_bias is not None else 0.0
        layout = layout_of(tower)
        weights, biases = [], []
        for block in tower.blocks:
            scale = layer_scale_vector(block.ls1, tower.width, gamma).float() * gamma  # [D]
            attn = block.attention
            w_o = attn.w_o.float() * scale[:, None, None]  # [D, H, dh]
            weights.append(torch.einsum("dhk,do->hko", w_o, proj))
            biases.append(((attn.b_o.float() / attn.heads) * scale) @ proj)  # [d_out], same for all heads
            biases[-1] = biases[-1].expand(attn.heads, -1)
        return cls(
            layout=layout,
            head_weight=torch.cat(weights).contiguous(),
            head_bias=torch.cat(biases).contiguous(),
            k0=beta @ proj + proj_bias,
            k1=gamma @ proj,
            shares=constant_shares(layout, ln_constants).float(),
            ln_constants=ln_constants,
        )

    def heads_to_output(self, z: Tensor) -> Tensor:
        """z: [B, K, dh] raw outputs of this map's K heads -> t: [B, K, d_out]."""
        return torch.einsum("bkh,kho->bko", z.to(self.head_weight.dtype), self.head_weight) + self.head_bias

    def finish(self, t: Tensor, ln_mean: Tensor, ln_std: Tensor, units: list[int] | None = None) -> Tensor:
        """t: [B, K, d_out] pre-scale values of the units at layout positions `units` [K] (None: all
        N units in layout order); ln_mean, ln_std: [B] -> y: [B, K, d_out]."""
        inv = (1.0 / ln_std.float())[:, None, None]
        shares = self.shares if units is None else self.shares[units]
        constant = self.k0 - (ln_mean.float()[:, None, None] * inv) * self.k1  # [B, 1, d_out]
        return t.float() * inv + shares[:, None] * constant

    def to(self, device: torch.device | str) -> UnitMap:
        return UnitMap(
            self.layout,
            self.head_weight.to(device),
            self.head_bias.to(device),
            self.k0.to(device),
            self.k1.to(device),
            self.shares.to(device),
            self.ln_constants,
        )

    def digest(self) -> str:
        """Content hash of the map: stored files record it so a stale map is never applied."""
        hasher = hashlib.sha256(json.dumps(self.layout.__dict__, sort_keys=True).encode())
        for tensor in (self.head_weight, self.head_bias, self.k0, self.k1, self.shares):
            hasher.update(tensor.detach().cpu().float().contiguous().numpy().tobytes())
        return hasher.hexdigest()

    def save(self, path: str | Path) -> str:
        """Write as safetensors (atomically); returns the digest stored in its header."""
        digest = self.digest()
        tensors = {"head_weight": self.head_weight, "head_bias": self.head_bias, "k0": self.k0, "k1": self.k1, "shares": self.shares}
        header = {"layout": self.layout.__dict__, "digest": digest, "ln_constants": self.ln_constants}
        save_tensors(path, {name: tensor.float() for name, tensor in tensors.items()}, header)
        return digest

    @classmethod
    def load(cls, path: str | Path, expect_digest: str | None = None, heads: list[int] | None = None) -> UnitMap:
        """Read a saved map; `heads` (flat indices) reads only those heads' weights.

        The header's digest must equal `expect_digest` when given (the one a unit file recorded).
        """
        with open_tensors(path, "unit map", "unit_map") as (handle, metadata):
            if expect_digest is not None and metadata.get("digest") != expect_digest:
                raise TensorFileError(
                    f"unit map {path} (digest {metadata.get('digest')}) does not match the unit file "
                    f"(expects {expect_digest}): the model changed since encoding; rerun the encode rule"
                )
            if "shares" not in handle.keys() or "ln_constants" not in metadata:
                raise TensorFileError(f"unit map {path} was written by an older version of the pipeline: rerun the unit_map rule")
            layout = UnitLayout(**metadata["layout"])
            if heads is None:
                weight, bias = handle.get_tensor("head_weight"), handle.get_tensor("head_bias")
            else:
                weight_slice, bias_slice = handle.get_slice("head_weight"), handle.get_slice("head_bias")
                weight = torch.stack([weight_slice[i] for i in heads]) if heads else torch.zeros(0, layout.head_dim, layout.out_dim)
                bias = torch.stack([bias_slice[i] for i in heads]) if heads else torch.zeros(0, layout.out_dim)
            return cls(
                layout,
                weight,
                bias,
                handle.get_tensor("k0"),
                handle.get_tensor("k1"),
                handle.get_tensor("shares"),
                metadata["ln_constants"],
            )


def layout_of(tower: Tower) -> UnitLayout:
    """The units a tower decomposes into: its layers, heads per layer, head width and output width."""
    return UnitLayout(tower.layers, tower.heads, tower.head_dim, tower.out_dim)
