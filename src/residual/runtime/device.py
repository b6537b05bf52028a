"""Pick the compute device at run time."""

from __future__ import annotations

import torch


def pick_device(preference: str = "auto") -> torch.device:
    """'auto' -> CUDA if available, else MPS, else CPU; anything else is taken literally."""
    if preference != "auto":
        device = torch.device(preference)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {preference!r} was requested but CUDA is not available; use 'auto' or 'cpu'")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
