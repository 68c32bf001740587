"""Device choice: the ``--device`` flag (auto, cpu or cuda) as a ``torch.device``."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA where it is available, else the CPU; ``cpu`` or ``cuda`` as asked (``cuda``
    without CUDA, or any other name, is a ``ValueError`` with a one-line message)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r} (choose auto, cpu or cuda)")
    return torch.device(name)
