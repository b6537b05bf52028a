"""Guards on unit values: the decomposition invariant and NaN/Inf, with errors that name the
unit, the samples and the file or step (METHOD section 1: sum_u y_u must equal the embedding to
1e-4 relative in float32)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from residual.units.layout import UnitLayout

if TYPE_CHECKING:
    from residual.units.decompose import RawUnits

TOLERANCE = 1e-4


class DecompositionError(RuntimeError):
    """sum(units) differs from the model's embedding by more than the tolerance."""


class NonFiniteError(DecompositionError):
    """A unit or the model's embedding holds NaN or Inf."""


def relative_error(approx: Tensor, exact: Tensor) -> float:
    """max over samples of max |approx - exact| / max |exact|; approx, exact: [B, d]."""
    if exact.numel() == 0:
        return 0.0
    diff = (approx.float() - exact.float()).abs().amax(dim=-1)
    scale = exact.float().abs().amax(dim=-1).clamp_min(torch.finfo(torch.float32).tiny)
    return float((diff / scale).max())


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
        f"{context}: {what} holds NaN or Inf for samples {_listed(ids)}. The model's weights (`pretrained`) or these "
        "samples' inputs produce non-finite activations; fix them, or run the model in float32"
    )


def check_finite_values(values: Tensor, names: Sequence[str], sample_ids: Tensor, context: str) -> None:
    """NonFiniteError naming the first unit of values [b, G, d] (output space, names [G]) that holds
    NaN or Inf, and its sample ids [b]. context names the file and step."""
    bad = ~torch.isfinite(values).all(dim=-1)  # [b, G]
    if not bool(bad.any()):
        return
    unit = int(bad.any(dim=0).nonzero()[0])
    ids = sample_ids[bad[:, unit].cpu()].tolist()
    raise NonFiniteError(
        f"{context}: unit {names[unit]!r} holds NaN or Inf for samples {_listed(ids)}; the stored file is damaged "
        "or was written by another tool: delete it and rerun the encode rule that produces it"
    )


def _listed(ids: Sequence[int], shown: int = 10) -> str:
    return ", ".join(map(str, ids[:shown])) + (f" and {len(ids) - shown} more" if len(ids) > shown else "")


def _forward_position(layout: UnitLayout, name: str) -> int:
    """Where a unit is computed: emb, then per layer its heads, then its MLP."""
    kind, layer, head = layout.parse(name)
    if kind == "emb":
        return 0
    return 1 + layer * (layout.heads + 1) + (head if kind == "head" else layout.heads)


def check_decomposition(error: float, context: str) -> None:
    if not error <= TOLERANCE:  # also catches NaN
        raise DecompositionError(
            f"{context}: sum of units differs from the model's embedding by {error:.3g} relative "
            f"(tolerance {TOLERANCE:g}). The model is not a pre-norm CLS-pooled ViT as the adapter "
            "assumes, or it ran in reduced precision; decompose in float32."
        )
