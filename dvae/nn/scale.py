"""The floor under every learned scale: ``MIN_SCALE`` and :func:`positive` (softplus plus the floor),
shared by the density networks (:mod:`dvae.nn.densities`) and the hand-written scans
(:mod:`dvae.nn.scans`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

MIN_SCALE = 1e-3


def positive(raw: torch.Tensor) -> torch.Tensor:
    """Softplus with a floor, for scales."""
    return F.softplus(raw) + MIN_SCALE
