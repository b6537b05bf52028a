"""Guards on unit values: the decomposition invariant and NaN/Inf, with errors that name the
unit, the samples and the file or step (METHOD section 1: sum_u y_u must equal the embedding to
1e-4 relative in float32)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

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


def check_finite_values(values: Tensor, names: Sequence[str], sample_ids: Tensor, context: str) -> None:
    """NonFiniteError naming the first unit of values [b, G, d] (output space, names [G]) that holds
    NaN or Inf, and its sample ids [b]. context names the file and step."""
    bad = ~torch.isfinite(values).all(dim=-1)  # [b, G]
    if not bool(bad.any()):
        return
    unit = int(bad.any(dim=0).nonzero()[0])
    ids = sample_ids[bad[:, unit].cpu()].tolist()
    raise NonFiniteError(
        f"{context}: unit {names[unit]!r} holds NaN or Inf for samples {listed(ids)}; the stored file is damaged "
        "or was written by another tool: delete it and rerun the encode rule that produces it"
    )


def listed(ids: Sequence[int], shown: int = 10) -> str:
    return ", ".join(map(str, ids[:shown])) + (f" and {len(ids) - shown} more" if len(ids) > shown else "")


def check_decomposition(error: float, context: str) -> None:
    if not error <= TOLERANCE:  # also catches NaN
        raise DecompositionError(
            f"{context}: sum of units differs from the model's embedding by {error:.3g} relative "
            f"(tolerance {TOLERANCE:g}). The model is not a pre-norm CLS-pooled ViT as the adapter "
            "assumes, or it ran in reduced precision; decompose in float32."
        )
