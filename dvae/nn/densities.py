"""Density networks: one small network per conditional density, each returning the parameters of its
distribution (the Pyro programs in ``dvae.models`` turn them into distributions).

MLP, GaussianHead, InitialState p(z_0 [| c]), GatedTransition p(z_t | z_{t-1}, u_{t-1}),
Emitter p(x_t | features_t), Combiner q(z_t | z_{t-1}, h_t) and StepPosterior q(z_t | x_t).
Frame (image) networks are in :mod:`dvae.nn.frames`, recurrent ones in :mod:`dvae.nn.recurrent`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dvae.nn.scale import positive
from dvae.nn.scans import CombinerScan


class MLP(nn.Sequential):
    """in_dim -> hidden (ReLU) x layers -> out_dim."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2):
        mods, d = [], in_dim
        for _ in range(layers):
            mods += [nn.Linear(d, hidden_dim), nn.ReLU()]
            d = hidden_dim
        mods.append(nn.Linear(d, out_dim))
        super().__init__(*mods)


class GaussianHead(nn.Module):
    """Parameterizes a diagonal Gaussian ``N(loc(y), scale(y))`` from a feature vector y."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.net = MLP(in_dim, hidden_dim, 2 * out_dim, layers=1)

    def forward(self, y):
        loc, raw = self.net(y).chunk(2, dim=-1)
        return loc, positive(raw)


class InitialState(nn.Module):
    """Parameterizes the learned initial state ``p(z_0) = N(loc, scale)``; with ``c_dim`` > 0,
    ``p(z_0 | c)``: loc and the scale's pre-activation shifted by a linear map of the condition c
    (zero at initialisation)."""

    def __init__(self, z_dim: int, c_dim: int = 0):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(z_dim))
        self.raw_scale = nn.Parameter(torch.zeros(z_dim))
        self.condition = None
        if c_dim:
            self.condition = nn.Linear(c_dim, 2 * z_dim)
            nn.init.zeros_(self.condition.weight)
            nn.init.zeros_(self.condition.bias)

    def forward(self, batch_size: int, c=None):
        shape = (batch_size, self.loc.shape[0])
        if self.condition is None:
            return self.loc.expand(shape), positive(self.raw_scale).expand(shape)  # (B, z_dim) each
        assert c is not None and c.shape[0] == batch_size, "a conditional initial state needs c (B, c_dim)"
        d_loc, d_raw = self.condition(c).chunk(2, dim=-1)  # (B, z_dim) each
        return self.loc + d_loc, positive(self.raw_scale + d_raw)


class GatedTransition(nn.Module):
    """Parameterizes ``p(z_t | z_{t-1}, u_{t-1})``: a gated mix of a linear (identity-initialised) and a
    nonlinear proposal for the mean, as in Krishnan et al. (2017), with the control as an extra input."""

    def __init__(self, z_dim: int, u_dim: int, transition_dim: int):
        super().__init__()
        in_dim = z_dim + u_dim
        self.gate = MLP(in_dim, transition_dim, z_dim, layers=1)
        self.proposed_mean = MLP(in_dim, transition_dim, z_dim, layers=1)
        self.linear_loc = nn.Linear(in_dim, z_dim)
        self.scale = nn.Linear(z_dim, z_dim)
        with torch.no_grad():
            self.linear_loc.weight.zero_()
            self.linear_loc.weight[:, :z_dim] = torch.eye(z_dim)
            self.linear_loc.bias.zero_()

    def forward(self, z_prev, u_prev=None):
        if u_prev is not None:  # z_prev may carry sample dims on the left (vectorized particles, TMC): broadcast
            lead = torch.broadcast_shapes(z_prev.shape[:-1], u_prev.shape[:-1])
            z_prev, u_prev = z_prev.expand(lead + z_prev.shape[-1:]), u_prev.expand(lead + u_prev.shape[-1:])
        y = z_prev if u_prev is None else torch.cat([z_prev, u_prev], -1)  # (..., B, z_dim + u_dim)
        gate = torch.sigmoid(self.gate(y))
        proposed = self.proposed_mean(y)
        loc = (1 - gate) * self.linear_loc(y) + gate * proposed
        return loc, positive(self.scale(F.relu(proposed)))


class Emitter(nn.Module):
    """Parameterizes ``p(x_t | features_t)`` (features = z_t, or [z_t, h_{t-1}] for the VRNN).

    ``likelihood="gaussian"``: returns (loc, scale), each (..., x_dim); with ``scale="constant"`` a
    learned per-dimension scale (the same at every step), with ``scale="state"`` a scale read from the
    features by the same network as the mean, (loc, sigma) = g(features) (the derivation's emission);
    ``likelihood="bernoulli"``: returns (logits,) of each binary entry;
    ``likelihood="categorical"``: returns (logits,) over the x_dim tokens of a vocabulary.
    """

    def __init__(self, in_dim: int, x_dim: int, emission_dim: int, likelihood: str = "gaussian",
                 scale: str = "constant"):
        super().__init__()
        if scale not in ("constant", "state"):
            raise ValueError(f"unknown emission scale {scale!r} (choose constant or state)")
        self.likelihood = likelihood
        self.state_scale = likelihood == "gaussian" and scale == "state"
        self.net = MLP(in_dim, emission_dim, 2 * x_dim if self.state_scale else x_dim, layers=2)
        if self.state_scale:
            with torch.no_grad():  # the scale starts where the constant one does, softplus(-1) + MIN_SCALE
                self.net[-1].bias[x_dim:] = -1.0
        elif likelihood == "gaussian":
            self.raw_scale = nn.Parameter(torch.full((x_dim,), -1.0))
        elif likelihood not in ("bernoulli", "categorical"):
            raise ValueError(f"unknown likelihood {likelihood!r}")

    def forward(self, features):
        out = self.net(features)
        if self.state_scale:
            loc, raw = out.chunk(2, dim=-1)  # (..., x_dim) each
            return loc, positive(raw)
        if self.likelihood == "gaussian":
            return out, positive(self.raw_scale).expand(out.shape)
        return (out,)


class Combiner(nn.Module):
    """Parameterizes ``q(z_t | z_{t-1}, h_t)`` from the previous latent and the RNN summary h_t of the
    sequence (the DKS combiner of Krishnan et al. 2017). With ``mean_field=True`` it ignores z_{t-1},
    giving ``q(z_t | h_t)``."""

    def __init__(self, z_dim: int, rnn_dim: int, mean_field: bool = False):
        super().__init__()
        self.mean_field = mean_field
        self.z_to_hidden = nn.Linear(z_dim, rnn_dim)
        self.loc = nn.Linear(rnn_dim, z_dim)
        self.scale = nn.Linear(rnn_dim, z_dim)

    def forward(self, z_prev, h):
        hidden = h if self.mean_field else 0.5 * (torch.tanh(self.z_to_hidden(z_prev)) + h)
        return self.loc(hidden), positive(self.scale(hidden))

    def scan(self, z_init: torch.Tensor, h: torch.Tensor, eps: torch.Tensor):
        """Draw a whole path, z_t = loc_t + eps_t * scale_t with (loc_t, scale_t) = self(z_{t-1}, h_t), from
        z_{-1} = ``z_init`` (B, z_dim), ``h`` (B, T, rnn_dim) and the standard normals ``eps`` (T, B, z_dim).
        Returns loc, scale, z, each (B, T, z_dim): what looping :meth:`forward` gives, up to float rounding,
        with the same gradients, but with minimal work per step (one fused autograd node, the loc and
        scale heads as one matmul, every weight gradient as one matmul over all steps)."""
        if self.mean_field:
            loc, scale = self(None, h)
            return loc, scale, loc + eps.transpose(0, 1) * scale
        heads_w = torch.cat([self.loc.weight, self.scale.weight], 0)  # (2 z_dim, rnn_dim)
        heads_b = torch.cat([self.loc.bias, self.scale.bias], 0)
        loc, scale, z = CombinerScan.apply(h.transpose(0, 1).contiguous(), z_init, eps, self.z_to_hidden.weight,
                                            self.z_to_hidden.bias, heads_w, heads_b)  # (T, B, z_dim) each
        return loc.transpose(0, 1), scale.transpose(0, 1), z.transpose(0, 1)


class StepPosterior(nn.Module):
    """Parameterizes ``q(z_t | x_t) = N(loc(x_t), scale(x_t))`` from one frame alone (the static VAE's
    encoder): x (..., x_dim) -> loc, scale (..., z_dim), with two hidden ReLU layers."""

    def __init__(self, x_dim: int, hidden_dim: int, z_dim: int):
        super().__init__()
        self.net = MLP(x_dim, hidden_dim, 2 * z_dim, layers=2)

    def forward(self, x):
        loc, raw = self.net(x).chunk(2, dim=-1)
        return loc, positive(raw)
