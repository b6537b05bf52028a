"""The exact affine map from stored unit values to output space.

With r the CLS stream before the final LayerNorm (mean mu, population std s with eps), gamma and
beta the norm's affine parameters, P [D, d_out] the projection (identity if none) and p its bias,
each unit's output-space contribution is (METHOD section 1)

    y_u = (gamma * (c_u - mu / N) / s + beta / N) @ P + p / N
        = t_u / s + k0 - (mu / s) * k1,     t_u = (gamma * c_u) @ P,
                                              k0 = (beta @ P + p) / N,  k1 = (gamma @ P) / N.

emb and MLP units are stored as t_u directly ([d_out]). A head is stored as its raw attention
output z [dh], with t_u = z @ W_h + b_h, W_h = (W_O[:, h] * ls1 * gamma)^T @ P, b_h = (b_O / H * ls1 * gamma) @ P.
Only W_h [L*H, dh, d_out], b_h [L*H, d_out], k0 and k1 are needed to read units back.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from residual.io.tensors import TensorFileError, open_tensors, save_tensors
from residual.models.tower import Tower, layer_scale_vector
from residual.units.layout import UnitLayout

VERSION = "unit-map/1"  # bump when a change to this module changes the maps it writes


@dataclass(frozen=True)
class UnitMap:
    """Stored unit values -> output space. Shapes: head_weight [L*H, dh, d_out],
    head_bias [L*H, d_out], k0 [d_out], k1 [d_out]."""

    layout: UnitLayout
    head_weight: Tensor
    head_bias: Tensor
    k0: Tensor
    k1: Tensor

    @classmethod
    def from_tower(cls, tower: Tower) -> UnitMap:
        norm = tower.final_norm
        gamma = norm.weight.detach().float()
        beta = norm.bias.detach().float() if norm.bias is not None else torch.zeros_like(gamma)
        proj = tower.projection()
        proj_bias = tower.proj_bias.detach().float() if tower.proj_bias is not None else 0.0
        layout = UnitLayout(tower.layers, tower.heads, tower.head_dim, tower.out_dim)
        weights, biases = [], []
        for block in tower.blocks:
            scale = layer_scale_vector(block.ls1, tower.width, gamma).float() * gamma  # [D]
            attn = block.attention
            w_o = attn.w_o.float() * scale[:, None, None]  # [D, H, dh]
            weights.append(torch.einsum("dhk,do->hko", w_o, proj))
            biases.append(((attn.b_o.float() / attn.heads) * scale) @ proj)  # [d_out], same for all heads
            biases[-1] = biases[-1].expand(attn.heads, -1)
        units = layout.count
        return cls(
            layout=layout,
            head_weight=torch.cat(weights).contiguous(),
            head_bias=torch.cat(biases).contiguous(),
            k0=(beta @ proj + proj_bias) / units,
            k1=(gamma @ proj) / units,
        )

    def heads_to_output(self, z: Tensor) -> Tensor:
        """z: [B, K, dh] raw outputs of this map's K heads -> t: [B, K, d_out]."""
        return torch.einsum("bkh,kho->bko", z.to(self.head_weight.dtype), self.head_weight) + self.head_bias

    def finish(self, t: Tensor, ln_mean: Tensor, ln_std: Tensor) -> Tensor:
        """t: [B, K, d_out] pre-scale values; ln_mean, ln_std: [B] -> y: [B, K, d_out]."""
        inv = (1.0 / ln_std.float())[:, None, None]
        return t.float() * inv + self.k0 - (ln_mean.float()[:, None, None] * inv) * self.k1

    def to(self, device: torch.device | str) -> UnitMap:
        return UnitMap(
            self.layout, self.head_weight.to(device), self.head_bias.to(device), self.k0.to(device), self.k1.to(device)
        )

    def digest(self) -> str:
        """Content hash of the map: stored files record it so a stale map is never applied."""
        hasher = hashlib.sha256(json.dumps(self.layout.__dict__, sort_keys=True).encode())
        for tensor in (self.head_weight, self.head_bias, self.k0, self.k1):
            hasher.update(tensor.detach().cpu().float().contiguous().numpy().tobytes())
        return hasher.hexdigest()

    def save(self, path: str | Path) -> str:
        """Write as safetensors (atomically); returns the digest stored in its header."""
        digest = self.digest()
        tensors = {"head_weight": self.head_weight, "head_bias": self.head_bias, "k0": self.k0, "k1": self.k1}
        save_tensors(path, {name: tensor.float() for name, tensor in tensors.items()}, {"layout": self.layout.__dict__, "digest": digest})
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
            layout = UnitLayout(**metadata["layout"])
            if heads is None:
                weight, bias = handle.get_tensor("head_weight"), handle.get_tensor("head_bias")
            else:
                weight_slice, bias_slice = handle.get_slice("head_weight"), handle.get_slice("head_bias")
                weight = torch.stack([weight_slice[i] for i in heads]) if heads else torch.zeros(0, layout.head_dim, layout.out_dim)
                bias = torch.stack([bias_slice[i] for i in heads]) if heads else torch.zeros(0, layout.out_dim)
            return cls(layout, weight, bias, handle.get_tensor("k0"), handle.get_tensor("k1"))
