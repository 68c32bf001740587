"""Frame networks, for observations that are H x W images flattened to x_dim = H * W:
FrameEncoder (an inference network's features of one frame) and ConvEmitter p(x_t | z_t)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dvae.nn.densities import MLP
from dvae.nn.scale import positive


def check_frame_shape(frame_shape) -> tuple:
    """(H, W) as ints, or a ValueError unless both are multiples of 4 and at least 8."""
    H, W = (int(v) for v in frame_shape)
    if H % 4 or W % 4 or H < 8 or W < 8:
        raise ValueError(f"frame_shape must be two multiples of 4, at least 8, got {list(frame_shape)}")
    return H, W


class FrameEncoder(nn.Module):
    """Features of single frames for an inference network: (..., H*W) flattened pixels -> (..., out_dim).

    Two stride-2 convolutions (4x4 kernels) halve the frame twice, then a linear layer: the
    image analogue of reading x_t through its first layer.
    """

    def __init__(self, frame_shape, out_dim: int, channels: int = 32):
        super().__init__()
        self.frame_shape = check_frame_shape(frame_shape)
        H, W = self.frame_shape
        self.conv = nn.Sequential(nn.Conv2d(1, channels // 2, 4, 2, 1), nn.ReLU(),
                                  nn.Conv2d(channels // 2, channels, 4, 2, 1), nn.ReLU())
        self.fc = nn.Linear(channels * (H // 4) * (W // 4), out_dim)

    def forward(self, x):
        H, W = self.frame_shape
        lead = x.shape[:-1]
        assert x.shape[-1] == H * W, (x.shape, self.frame_shape)
        y = self.conv(x.reshape(-1, 1, H, W))  # (N, channels, H/4, W/4), N = prod(lead)
        return F.relu(self.fc(y.flatten(1))).reshape(lead + (-1,))  # (..., out_dim)


class ConvEmitter(nn.Module):
    """Parameterizes ``p(x_t | z_t)`` over frames of H x W pixels (x_t flattened, x_dim = H * W):
    a linear map of z_t to a (channels, H/4, W/4) grid, then two stride-2 transposed convolutions
    to one value per pixel: logits of independent Bernoulli pixels, or Gaussian means with a
    learned per-pixel scale (``scale="constant"``) or a per-pixel scale from a second output channel
    (``scale="state"``). Returns what :class:`Emitter` returns, with last dim H * W.
    """

    def __init__(self, in_dim: int, frame_shape, emission_dim: int, likelihood: str = "bernoulli",
                 channels: int = 32, scale: str = "constant"):
        super().__init__()
        if scale not in ("constant", "state"):
            raise ValueError(f"unknown emission scale {scale!r} (choose constant or state)")
        self.state_scale = likelihood == "gaussian" and scale == "state"
        self.frame_shape = check_frame_shape(frame_shape)
        H, W = self.frame_shape
        self.likelihood, self.channels = likelihood, channels
        self.fc = MLP(in_dim, emission_dim, channels * (H // 4) * (W // 4), layers=1)
        self.deconv = nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1), nn.ReLU(),
                                    nn.ConvTranspose2d(channels // 2, 2 if self.state_scale else 1, 4, 2, 1))
        if self.state_scale:
            with torch.no_grad():  # the scale starts where the constant one does
                self.deconv[-1].bias[1] = -1.0
        elif likelihood == "gaussian":
            self.raw_scale = nn.Parameter(torch.full((H * W,), -1.0))
        elif likelihood != "bernoulli":
            raise ValueError(f"unknown likelihood {likelihood!r} for frames (choose bernoulli or gaussian)")

    def forward(self, features):
        H, W = self.frame_shape
        lead = features.shape[:-1]
        grid = self.fc(features).reshape(-1, self.channels, H // 4, W // 4)  # (N, channels, H/4, W/4)
        out = self.deconv(grid)  # (N, 1 or 2, H, W)
        if self.state_scale:
            return out[:, 0].reshape(lead + (H * W,)), positive(out[:, 1].reshape(lead + (H * W,)))
        out = out.reshape(lead + (H * W,))  # (..., H * W)
        if self.likelihood == "gaussian":
            return out, positive(self.raw_scale).expand(out.shape)
        return (out,)
