"""The texts at both ends of a unit's principal components: what each component separates."""

from __future__ import annotations

import torch
from torch import Tensor


def component_ends(components: Tensor, dictionary: Tensor, per_end: int) -> tuple[Tensor, Tensor]:
    """For components [c, d] (unit rows) and dictionary [m, d] (unit or zero rows): indices [c, 2, p]
    and cosines [c, 2, p] of the p = min(per_end, m) texts of largest cosine (end 0, descending)
    and of smallest cosine (end 1, ascending)."""
    cosines = components.double() @ dictionary.double().T  # [c, m]
    count = min(per_end, dictionary.shape[0])
    top = cosines.topk(count, dim=1)
    bottom = cosines.topk(count, dim=1, largest=False)
    return torch.stack([top.indices, bottom.indices], dim=1), torch.stack([top.values, bottom.values], dim=1)
