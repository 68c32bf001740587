"""The random state a checkpoint holds, on every device: one place that captures and restores it.

Sampling on CUDA draws from the CUDA generators, not the CPU one; a checkpoint that held only
``torch.get_rng_state()`` resumed a CUDA run with the CUDA stream reseeded from the original seed,
replaying the run's first draws. :func:`capture` returns the CPU state and, where this process has
initialised CUDA, the state of every CUDA device it sees (``torch.cuda.get_rng_state_all()``: under
torchrun a rank sees its own devices, so each rank's checkpoint entry is its own); :func:`restore`
puts back what it finds. Both are plain containers of tensors, loadable with
``torch.load(weights_only=True)``.

The checkpoint keys: ``rng`` (the CPU state, a uint8 tensor, as before) and ``rng_cuda`` (a list of
uint8 tensors, one per CUDA device, or None where the run never touched CUDA). A checkpoint written
before ``rng_cuda`` existed restores the CPU state alone.
"""

from __future__ import annotations

from typing import Optional

import torch


def capture() -> dict:
    """``{"rng": CPU state, "rng_cuda": [state of each CUDA device] or None}``."""
    cuda = None
    if torch.cuda.is_initialized():  # a process that never used CUDA has no CUDA draws to continue
        cuda = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return {"rng": torch.get_rng_state(), "rng_cuda": cuda}


def restore(state) -> None:
    """Put back what :func:`capture` returned (or a checkpoint holding its keys; or a bare CPU state, as
    older checkpoints and their per-rank lists hold it). The CUDA states are restored where CUDA is
    available, one per device, as many as both sides have (a run resumed on fewer devices uses the
    first ones'; on the CPU they are not needed and are ignored)."""
    if torch.is_tensor(state):
        state = {"rng": state}
    if state.get("rng") is not None:
        torch.set_rng_state(state["rng"].cpu())  # a checkpoint loaded with map_location=cuda holds it on the GPU
    cuda: Optional[list] = state.get("rng_cuda")
    if cuda and torch.cuda.is_available():
        n = min(len(cuda), torch.cuda.device_count())
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda[:n]])

