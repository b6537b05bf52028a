"""A library-neutral description of a pre-norm ViT's residual stream.

Each supported library (open_clip, timm, ...) maps its vision model onto a `Tower`: where the
stream enters block 0, the attention weights of every block split by head, the MLP and layer
scale modules, the final LayerNorm and the output projection. The decomposition code only
ever talks to a `Tower`, so adding a library means writing one adapter, not a new decomposition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn


class UnsupportedModelError(ValueError):
    """The model cannot be written as a sum of residual units at the CLS token."""


@dataclass(frozen=True)
class AttentionWeights:
    """One multi-head self-attention layer, split by head.

    Shapes: D model width, H heads, dh head width.
    - w_q, w_k, w_v: [H, dh, D]; b_q, b_k, b_v: [H, dh]
    - w_o: [D, H, dh] (column block h is head h's output projection); b_o: [D]
    - q_norm, k_norm: applied to q [..., dh] and k [..., dh] per head before the scale, or None.
    """

    w_q: Tensor
    w_k: Tensor
    w_v: Tensor
    b_q: Tensor
    b_k: Tensor
    b_v: Tensor
    w_o: Tensor
    b_o: Tensor
    scale: float
    q_norm: Callable[[Tensor], Tensor] | None = None
    k_norm: Callable[[Tensor], Tensor] | None = None

    @property
    def heads(self) -> int:
        return self.w_q.shape[0]

    @property
    def head_dim(self) -> int:
        return self.w_q.shape[1]

    @classmethod
    def from_packed(
        cls,
        in_weight: Tensor,
        in_bias: Tensor | None,
        out_weight: Tensor,
        out_bias: Tensor | None,
        heads: int,
        scale: float | None = None,
        q_norm: Callable[[Tensor], Tensor] | None = None,
        k_norm: Callable[[Tensor], Tensor] | None = None,
    ) -> AttentionWeights:
        """From the usual packed layout: in_weight [3*H*dh, D] (q, k, v stacked, heads contiguous),
        in_bias [3*H*dh] or None, out_weight [D, H*dh], out_bias [D] or None."""
        inner, width = in_weight.shape[0] // 3, in_weight.shape[1]
        head_dim = inner // heads
        w_q, w_k, w_v = in_weight.detach().reshape(3, heads, head_dim, width).unbind(0)
        if in_bias is None:
            in_bias = in_weight.new_zeros(3 * inner)
        b_q, b_k, b_v = in_bias.detach().reshape(3, heads, head_dim).unbind(0)
        if out_bias is None:
            out_bias = out_weight.new_zeros(out_weight.shape[0])
        return cls(
            w_q=w_q,
            w_k=w_k,
            w_v=w_v,
            b_q=b_q,
            b_k=b_k,
            b_v=b_v,
            w_o=out_weight.detach().reshape(out_weight.shape[0], heads, head_dim),
            b_o=out_bias.detach(),
            scale=head_dim**-0.5 if scale is None else float(scale),
            q_norm=q_norm,
            k_norm=k_norm,
        )

    def cls_head_outputs(self, x: Tensor) -> Tensor:
        """Every head's attention output at the CLS query (token 0), before the output projection.

        x: [B, N, D] the attention layer's input (after the block's first norm).
        Returns z: [B, H, dh].

        Without q/k norms the keys and values are never materialised: the scores are
        (q_h W_k,h) x_n (the key bias shifts all scores of a row equally, so softmax ignores it)
        and z_h = (sum_n a_hn x_n) W_v,h^T + b_v,h because the weights a_hn sum to one. That costs
        O(H*N*D) per sample instead of the O(N*D^2) of projecting every token.
        """
        weights = self.cls_attention(x)
        if self.q_norm is not None or self.k_norm is not None:
            return torch.einsum("bhn,bhnk->bhk", weights, self._values(x, list(range(self.heads))))
        mixed = torch.einsum("bhn,bnd->bhd", weights, x)
        return torch.einsum("bhd,hkd->bhk", mixed, self.w_v) + self.b_v

    def cls_attention(self, x: Tensor) -> Tensor:
        """Every head's attention weights at the CLS query: x [B, N, D] -> a [B, H, N], rows summing to 1."""
        q = torch.einsum("bd,hkd->bhk", x[:, 0], self.w_q) + self.b_q
        if self.q_norm is not None or self.k_norm is not None:
            # The explicit path, for q/k norms that do not commute with the projections.
            k = torch.einsum("bnd,hkd->bhnk", x, self.w_k) + self.b_k[:, None]
            if self.q_norm is not None:
                q = self.q_norm(q)
            if self.k_norm is not None:
                k = self.k_norm(k)
            return torch.einsum("bhk,bhnk->bhn", q * self.scale, k).softmax(dim=-1)
        u = torch.einsum("bhk,hkd->bhd", q * self.scale, self.w_k)
        return torch.einsum("bhd,bnd->bhn", u, x).softmax(dim=-1)

    def cls_token_contributions(self, x: Tensor, heads: list[int]) -> Tensor:
        """What each source token gives the CLS output of the heads `heads` [K]: a_{h,n} (W_v,h x_n + b_v,h).

        x: [B, N, D] the attention layer's input. Returns [B, K, N, dh]; summed over N it is
        `cls_head_outputs(x)[:, heads]`, because each head's weights sum to one. Costs B x K x N x dh
        floats, where `cls_head_outputs` never materialises the values.
        """
        weights = self.cls_attention(x)[:, heads]
        return weights[..., None] * self._values(x, heads)

    def _values(self, x: Tensor, heads: list[int]) -> Tensor:
        """x [B, N, D] -> the values of the heads `heads` [K] at every token: [B, K, N, dh]."""
        return torch.einsum("bnd,hkd->bhnk", x, self.w_v[heads]) + self.b_v[heads][:, None]


@dataclass(frozen=True)
class Block:
    """One pre-norm block: x += ls1(attn(norm1(x))); x += ls2(mlp(norm2(x))).

    `attn_module` and `mlp` are the library's own modules: hooks on them see the attention
    input [B, N, D] and the MLP output [B, N, D]. `ls1`, `ls2` are layer scales (or Identity).
    """

    attn_module: nn.Module
    attention: AttentionWeights
    mlp: nn.Module
    ls1: nn.Module
    ls2: nn.Module


@dataclass(frozen=True)
class Tower:
    """The residual stream of a CLS-pooled pre-norm ViT.

    - embed: the module whose output [B, N, D] is the stream entering block 0.
    - final_norm: the LayerNorm applied to the stream before pooling/projection.
    - proj: [D, d_out] output projection, or None (d_out = D); proj_bias: [d_out] or None.
    - encode: images [B, 3, H, W] -> the model's own embedding [B, d_out].
    - batch_first: whether the blocks see [B, N, D] (else [N, B, D]).
    - prefix: the names of the tokens before the patches, in order (the CLS token, then registers).
    - grid: (rows, columns) of the patch tokens, which follow the prefix row by row; None where
      the adapter cannot place tokens on the image (no per-token maps then).
    """

    embed: nn.Module
    blocks: list[Block]
    final_norm: nn.LayerNorm
    proj: Tensor | None
    proj_bias: Tensor | None
    encode: Callable[[Tensor], Tensor]
    batch_first: bool = True
    prefix: tuple[str, ...] = ("cls",)
    grid: tuple[int, int] | None = None

    @property
    def width(self) -> int:
        return self.final_norm.normalized_shape[0]

    @property
    def out_dim(self) -> int:
        return self.width if self.proj is None else self.proj.shape[1]

    @property
    def layers(self) -> int:
        return len(self.blocks)

    @property
    def heads(self) -> int:
        return self.blocks[0].attention.heads

    def projection(self) -> Tensor:
        """P [D, d_out] in float32 (the identity when the model has no output projection)."""
        gamma = self.final_norm.weight
        if self.proj is None:
            return torch.eye(self.width, device=gamma.device)
        return self.proj.detach().float()

    def output_factor(self) -> Tensor:
        """(gamma[:, None] * P) [D, d_out]: the final norm's scale followed by the projection."""
        return self.final_norm.weight.detach().float()[:, None] * self.projection()

    @property
    def head_dim(self) -> int:
        return self.blocks[0].attention.head_dim


def layer_scale_vector(module: nn.Module, width: int, like: Tensor) -> Tensor:
    """The per-channel factor [D] of a layer scale module (ones for Identity)."""
    return module(torch.ones(width, dtype=like.dtype, device=like.device)).detach()
