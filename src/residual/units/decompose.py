"""Residual-unit decomposition of a ViT's image embedding (METHOD section 1).

The library's own forward runs unchanged; forward hooks on its modules read the stream entering
block 0, every attention layer's input and every MLP's output at the CLS token, and the input of
the final norm. Head outputs are recomputed at the CLS query from the attention weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from residual.models.loaded import LoadedModel
from residual.models.tower import Block, Tower, layer_scale_vector
from residual.units.guards import NonFiniteError, check_decomposition, listed, relative_error
from residual.units.layout import UnitLayout
from residual.units.unit_map import UnitMap, layout_of


@dataclass(frozen=True)
class RawUnits:
    """One batch in storage form (see `UnitMap`). Shapes: B samples, L layers, H heads.

    - emb: [B, d_out]; mlp: [B, L, d_out] (output space, before the LayerNorm scale)
    - heads: [B, L, H, dh] raw attention outputs at the CLS query
    - ln_mean, ln_std: [B] statistics of the final LayerNorm on the real stream
    - embedding: [B, d_out] the model's own embedding
    """

    emb: Tensor
    mlp: Tensor
    heads: Tensor
    ln_mean: Tensor
    ln_std: Tensor
    embedding: Tensor

    def values(self, unit_map: UnitMap) -> Tensor:
        """All units in output space: [B, U, d_out], U = 1 + L + L*H, in `UnitLayout` order."""
        batch = self.heads.shape[0]
        heads = unit_map.heads_to_output(self.heads.reshape(batch, -1, self.heads.shape[-1]))
        pre = torch.cat([self.emb[:, None].float(), self.mlp.float(), heads], dim=1)
        return unit_map.finish(pre, self.ln_mean, self.ln_std)


@dataclass(frozen=True)
class Decomposition:
    """`names` [U]; `values` [B, U, d_out] float32 in output space; `embedding` [B, d_out]."""

    names: list[str]
    values: Tensor
    embedding: Tensor

    @property
    def error(self) -> float:
        """Worst per-sample max |sum_u y_u - embedding| / max |embedding|."""
        return relative_error(self.values.sum(dim=1), self.embedding)


def decompose(model: LoadedModel, images: Tensor) -> Decomposition:
    """Units of a batch. images: [B, 3, H, W], already preprocessed.

    Raises DecompositionError if sum(units) misses the embedding by more than 1e-4 relative.
    """
    raw = trace(model, images)
    values, _ = checked_values(raw, UnitMap.from_tower(model.tower), range(len(images)), f"decompose with model {model.name!r}")
    return Decomposition(layout_of(model.tower).names, values, raw.embedding.float())


def checked_values(raw: RawUnits, unit_map: UnitMap, samples: Sequence[int], context: str) -> tuple[Tensor, float]:
    """All units in output space [B, U, d_out] and the batch's decomposition error, after both guards:
    NonFiniteError for NaN/Inf (naming unit and samples), DecompositionError above the tolerance."""
    check_finite(raw, unit_map.layout, samples, context)
    values = raw.values(unit_map)
    error = relative_error(values.sum(dim=1), raw.embedding)
    check_decomposition(error, context=context)
    return values, error


def check_finite(raw: RawUnits, layout: UnitLayout, samples: Sequence[int], context: str) -> None:
    """NonFiniteError naming the first unit, in forward order, that holds NaN or Inf, and its samples.

    Checked on the stored form (before the final LayerNorm, which spreads one NaN to every unit).
    raw: a batch of B samples; samples: their B ids (or batch positions).
    """
    bad_units = ~torch.cat(
        [
            torch.isfinite(raw.emb).all(dim=-1)[:, None],
            torch.isfinite(raw.mlp).all(dim=-1),
            torch.isfinite(raw.heads).all(dim=-1).flatten(1),
        ],
        dim=1,
    )  # [B, U] in layout order
    bad_norm = ~(torch.isfinite(raw.ln_mean) & torch.isfinite(raw.ln_std) & (raw.ln_std > 0))
    bad_embedding = ~torch.isfinite(raw.embedding).all(dim=-1)
    names = layout.names
    affected = bad_units.any(dim=0).nonzero().flatten().tolist()
    if affected:
        first = min(affected, key=lambda index: _forward_position(layout, names[index]))
        rows = bad_units[:, first]
        what = f"unit {names[first]!r} (the first in forward order; {len(affected)} of {len(names)} units are affected)"
    elif bool(bad_norm.any()):
        rows, what = bad_norm, "the final LayerNorm's statistics (every unit is finite)"
    elif bool(bad_embedding.any()):
        rows, what = bad_embedding, "the model's embedding (every unit is finite)"
    else:
        return
    ids = [int(samples[row]) for row in rows.nonzero().flatten().tolist()]
    raise NonFiniteError(
        f"{context}: {what} holds NaN or Inf for samples {listed(ids)}. The model's weights (`pretrained`) or these "
        "samples' inputs produce non-finite activations; fix them, or run the model in float32"
    )


def _forward_position(layout: UnitLayout, name: str) -> int:
    """Where a unit is computed: emb, then per layer its heads, then its MLP."""
    kind, layer, head = layout.parse(name)
    if kind == "emb":
        return 0
    return 1 + layer * (layout.heads + 1) + (head if kind == "head" else layout.heads)


def trace(model: LoadedModel, images: Tensor) -> RawUnits:
    """Run the model once and read its units in storage form. images: [B, 3, H, W]."""
    return trace_tokens(model, images, {})[0]


@torch.no_grad()
def trace_tokens(model: LoadedModel, images: Tensor, heads: Mapping[int, list[int]]) -> tuple[RawUnits, dict[int, Tensor]]:
    """`trace`, and what each source token gives the CLS output of some heads, in the same forward.

    images: [B, 3, H, W]; heads: layer -> the heads [K_l] of that layer to split by token. Returns
    the units and, per layer of `heads`, the raw contributions [B, K_l, N, dh] (N tokens, in the
    model's order; see `AttentionWeights.cls_token_contributions`).
    """
    tower = model.tower
    images = images.to(model.device, torch.float32)
    with _recorded(tower, heads) as record:
        embedding = tower.encode(images)
    stream = record["final"]
    ln_mean = stream.mean(dim=-1)
    ln_std = torch.sqrt(stream.var(dim=-1, unbiased=False) + tower.final_norm.eps)
    factor = model.output_factor
    mlp = torch.stack(
        [layer_scale_vector(block.ls2, tower.width, stream) * out for block, out in zip(tower.blocks, record["mlp"])],
        dim=1,
    )
    raw = RawUnits(
        emb=record["embed"] @ factor,
        mlp=mlp @ factor,
        heads=torch.stack(record["heads"], dim=1),
        ln_mean=ln_mean,
        ln_std=ln_std,
        embedding=embedding.float(),
    )
    return raw, record["tokens"]


@contextmanager
def _recorded(tower: Tower, token_heads: Mapping[int, list[int]]) -> Iterator[dict]:
    """Hooks that fill {'embed': [B, D], 'heads': L x [B, H, dh], 'mlp': L x [B, D], 'final': [B, D],
    'tokens': {layer: [B, K, N, dh]} for the layers and heads of `token_heads`}."""
    record: dict = {"heads": [], "mlp": [], "tokens": {}}

    def cls(x: Tensor) -> Tensor:
        """CLS row of a [B, N, D] tensor outside the blocks (already [B, D] after pooling)."""
        return x if x.ndim == 2 else x[:, 0]

    def block_tokens(x: Tensor) -> Tensor:
        """[B, N, D] from a tensor inside the blocks, which see [N, B, D] unless batch_first."""
        return x if tower.batch_first else x.transpose(0, 1)

    def on_embed(module: nn.Module, args: tuple, output: Tensor) -> None:
        record["embed"] = cls(output).float()

    def on_final(module: nn.Module, args: tuple) -> None:
        record["final"] = cls(args[0]).float()

    def on_attention(layer: int, block: Block) -> Callable[[nn.Module, tuple, dict], None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            mask = kwargs.get("attn_mask", kwargs.get("attention_mask", args[3] if len(args) > 3 else None))
            if mask is not None or kwargs.get("is_causal", False):
                raise NotImplementedError("attention masks are not supported in the vision tower")
            x = args[0] if args else kwargs["hidden_states"]  # transformers passes the input by keyword
            tokens = block_tokens(x).float()
            record["heads"].append(block.attention.cls_head_outputs(tokens))
            if layer in token_heads:
                record["tokens"][layer] = block.attention.cls_token_contributions(tokens, token_heads[layer])

        return hook

    def on_mlp(module: nn.Module, args: tuple, output: Tensor) -> None:
        record["mlp"].append(block_tokens(output)[:, 0].float())

    handles = [
        tower.embed.register_forward_hook(on_embed),
        tower.final_norm.register_forward_pre_hook(on_final),
    ]
    for layer, block in enumerate(tower.blocks):
        handles.append(block.attn_module.register_forward_pre_hook(on_attention(layer, block), with_kwargs=True))
        handles.append(block.mlp.register_forward_hook(on_mlp))
    try:
        yield record
    finally:
        for handle in handles:
            handle.remove()
    if len(record["heads"]) != tower.layers or len(record["mlp"]) != tower.layers or "final" not in record:
        raise RuntimeError("the model's forward did not pass through every block once: cannot decompose it")
