"""Plain torch blocks (no Pyro): one small network per conditional density.

Every density network returns the parameters of its distribution; the Pyro programs in
``dvae.models`` turn them into distributions.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

MIN_SCALE = 1e-3


def positive(raw: torch.Tensor) -> torch.Tensor:
    """Softplus with a floor, for scales."""
    return F.softplus(raw) + MIN_SCALE


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
    """Parameterizes the learned initial state ``p(z_0) = N(loc, scale)``."""

    def __init__(self, z_dim: int):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(z_dim))
        self.raw_scale = nn.Parameter(torch.zeros(z_dim))

    def forward(self, batch_size: int):
        shape = (batch_size, self.loc.shape[0])
        return self.loc.expand(shape), positive(self.raw_scale).expand(shape)  # (B, z_dim) each


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
        y = z_prev if u_prev is None else torch.cat([z_prev, u_prev], -1)  # (B, z_dim + u_dim)
        gate = torch.sigmoid(self.gate(y))
        proposed = self.proposed_mean(y)
        loc = (1 - gate) * self.linear_loc(y) + gate * proposed
        return loc, positive(self.scale(F.relu(proposed)))


class Emitter(nn.Module):
    """Parameterizes ``p(x_t | features_t)`` (features = z_t, or [z_t, h_{t-1}] for the VRNN).

    ``likelihood="gaussian"``: returns (loc, scale) with a learned per-dimension scale;
    ``likelihood="bernoulli"``: returns (logits,).
    """

    def __init__(self, in_dim: int, x_dim: int, emission_dim: int, likelihood: str = "gaussian"):
        super().__init__()
        self.likelihood = likelihood
        self.net = MLP(in_dim, emission_dim, x_dim, layers=2)
        if likelihood == "gaussian":
            self.raw_scale = nn.Parameter(torch.full((x_dim,), -1.0))
        elif likelihood != "bernoulli":
            raise ValueError(f"unknown likelihood {likelihood!r}")

    def forward(self, features):
        out = self.net(features)
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


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence of ``x`` (B, T, d) within its length; padding stays at the end."""
    B, T = x.shape[:2]
    t = torch.arange(T, device=x.device)[None, :]  # (1, T)
    n = lengths.to(x.device)[:, None]
    idx = torch.where(t < n, n - 1 - t, t)  # (B, T)
    return x.gather(1, idx[..., None].expand_as(x))


def make_rnn(rnn_type: str, input_dim: int, hidden_dim: int, bidirectional: bool = False) -> nn.RNNBase:
    kw = dict(batch_first=True, bidirectional=bidirectional)
    if rnn_type == "gru":
        return nn.GRU(input_dim, hidden_dim, **kw)
    if rnn_type == "lstm":
        return nn.LSTM(input_dim, hidden_dim, **kw)
    if rnn_type == "rnn":
        return nn.RNN(input_dim, hidden_dim, nonlinearity="relu", **kw)
    raise ValueError(f"unknown rnn type {rnn_type!r} (choose gru, lstm or rnn)")


class SequenceEncoder(nn.Module):
    """An RNN over a padded sequence, returning a summary h_t per step.

    ``direction="backward"``: h_t summarises y_{t:L-1} (for the DKS guide); ``"forward"``: y_{0:t};
    ``"bidirectional"``: both, concatenated (hidden size 2 * rnn_dim). Padding at the end never reaches
    a real step, so no packing is needed.
    """

    def __init__(self, input_dim: int, rnn_dim: int, rnn_type: str = "gru", direction: str = "backward"):
        super().__init__()
        if direction not in ("backward", "forward", "bidirectional"):
            raise ValueError(f"unknown direction {direction!r}")
        self.direction = direction
        self.rnn = make_rnn(rnn_type, input_dim, rnn_dim)
        self.rnn_back = make_rnn(rnn_type, input_dim, rnn_dim) if direction == "bidirectional" else None
        self.out_dim = rnn_dim * (2 if direction == "bidirectional" else 1)

    def forward(self, y: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """y (B, T, input_dim) -> h (B, T, out_dim)."""
        if self.direction == "forward":
            return self.rnn(y)[0]
        back_rnn = self.rnn_back if self.rnn_back is not None else self.rnn
        back = reverse_padded(back_rnn(reverse_padded(y, lengths))[0], lengths)  # (B, T, rnn_dim)
        if self.direction == "backward":
            return back
        return torch.cat([self.rnn(y)[0], back], -1)  # (B, T, 2 rnn_dim)

    def final(self, y: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The summary of the whole sequence (B, out_dim): the forward state at the last real step
        (and, bidirectionally, the backward state at step 0)."""
        B = y.shape[0]
        idx = (lengths.to(y.device) - 1).clamp(min=0)
        fwd = self.rnn(y)[0][torch.arange(B, device=y.device), idx]  # (B, rnn_dim)
        if self.rnn_back is None:
            return fwd
        back = self.rnn_back(reverse_padded(y, lengths))[0]
        return torch.cat([fwd, back[torch.arange(B, device=y.device), idx]], -1)


class Recurrence(nn.Module):
    """One step of a deterministic recurrence ``h_t = f(input_t, h_{t-1})`` (GRU, LSTM or ReLU RNN cell)
    with a learned initial state; ``state`` is h, or (h, c) for the LSTM."""

    def __init__(self, rnn_type: str, input_dim: int, hidden_dim: int):
        super().__init__()
        cells = {"gru": nn.GRUCell, "lstm": nn.LSTMCell}
        if rnn_type in cells:
            self.cell = cells[rnn_type](input_dim, hidden_dim)
        elif rnn_type == "rnn":
            self.cell = nn.RNNCell(input_dim, hidden_dim, nonlinearity="relu")
        else:
            raise ValueError(f"unknown rnn type {rnn_type!r} (choose gru, lstm or rnn)")
        self.is_lstm = rnn_type == "lstm"
        self.h_0 = nn.Parameter(torch.zeros(hidden_dim))

    def initial(self, batch_size: int):
        h = self.h_0.expand(batch_size, -1)  # (B, hidden_dim)
        return (h, torch.zeros_like(h)) if self.is_lstm else h

    @staticmethod
    def output(state) -> torch.Tensor:
        return state[0] if isinstance(state, tuple) else state

    def forward(self, inp, state):
        return self.cell(inp, state)

    def scan(self, inputs: torch.Tensor, state) -> torch.Tensor:
        """The outputs h_0 .. h_{T-1} (B, T, hidden_dim) of the recurrence over ``inputs`` (B, T, input_dim),
        all known in advance, from ``state`` (h_{-1}): the cell's own weights run as one multi-step RNN
        call (what ``nn.GRU``/``nn.LSTM``/``nn.RNN`` call), equal to looping :meth:`forward` up to
        float rounding."""
        c = self.cell
        weights = (c.weight_ih, c.weight_hh, c.bias_ih, c.bias_hh)
        args = (weights, True, 1, 0.0, self.training, False, True)  # biases, layers, dropout, train, bidir, batch_first
        if self.is_lstm:
            return torch._VF.lstm(inputs, tuple(s[None].contiguous() for s in state), *args)[0]
        fn = torch._VF.gru if isinstance(c, nn.GRUCell) else (
            torch._VF.rnn_relu if c.nonlinearity == "relu" else torch._VF.rnn_tanh)
        return fn(inputs, state[None].contiguous(), *args)[0]
