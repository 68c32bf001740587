"""Recurrent networks: RNNs over padded sequences and a recurrence stepped by hand.

- :func:`make_rnn` and :func:`run_rnn`: a batch-first GRU, LSTM or ReLU RNN and how to run it. A
  one-layer ReLU RNN runs as the hand-written :class:`dvae.nn.scans.ReluRNNScan` on CPU and as the
  module itself (cuDNN) elsewhere: :func:`use_relu_scan` decides, by the input's device.
- :func:`reverse_padded` and :class:`SequenceEncoder`: summaries h_t of a padded sequence (backward,
  forward or both directions), for the guides.
- :class:`Recurrence`: one cell step ``h_t = f(input_t, h_{t-1})`` with a learned initial state, and
  :meth:`Recurrence.scan`, the same cell over inputs known in advance as one multi-step call of
  ``nn.GRU``/``nn.LSTM``/``nn.RNN`` on the cell's own parameters (``torch.func.functional_call``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dvae.nn.scans import ReluRNNScan

_MULTI_STEP = {nn.GRUCell: nn.GRU, nn.LSTMCell: nn.LSTM, nn.RNNCell: nn.RNN}  # cell -> its multi-step module


def use_relu_scan(device: torch.device) -> bool:
    """Whether a one-layer ReLU RNN with its input on ``device`` runs as :class:`ReluRNNScan` (on CPU,
    where it does less work per step than torch's loop) rather than as the module itself (elsewhere:
    cuDNN's fused kernel on CUDA)."""
    return device.type == "cpu"


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


def run_rnn(rnn: nn.RNNBase, y: torch.Tensor, state=None) -> torch.Tensor:
    """The outputs (B, T, hidden) of a batch-first RNN made by :func:`make_rnn` over ``y`` (B, T, input_dim)
    from ``state`` (as ``rnn`` takes it; None: zeros). A one-layer ReLU RNN runs as :class:`ReluRNNScan`
    where :func:`use_relu_scan` says so (on CPU: same values and gradients up to float rounding, less
    work per step); anything else, and a ReLU RNN on CUDA, runs as ``rnn(y, state)``."""
    if isinstance(rnn, nn.RNN) and rnn.nonlinearity == "relu" and rnn.num_layers == 1 and not rnn.bidirectional \
            and rnn.bias and rnn.batch_first and use_relu_scan(y.device):
        B = y.shape[0]
        h0 = y.new_zeros(B, rnn.hidden_size) if state is None else state[0]
        x_proj = F.linear(y, rnn.weight_ih_l0, rnn.bias_ih_l0 + rnn.bias_hh_l0).transpose(0, 1).contiguous()
        return ReluRNNScan.apply(x_proj, h0, rnn.weight_hh_l0).transpose(0, 1)
    return rnn(y, state)[0]


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
            return run_rnn(self.rnn, y)
        back_rnn = self.rnn_back if self.rnn_back is not None else self.rnn
        back = reverse_padded(run_rnn(back_rnn, reverse_padded(y, lengths)), lengths)  # (B, T, rnn_dim)
        if self.direction == "backward":
            return back
        return torch.cat([run_rnn(self.rnn, y), back], -1)  # (B, T, 2 rnn_dim)

    def final(self, y: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The summary of the whole sequence (B, out_dim): the forward state at the last real step
        (and, bidirectionally, the backward state at step 0)."""
        B = y.shape[0]
        idx = (lengths.to(y.device) - 1).clamp(min=0)
        fwd = run_rnn(self.rnn, y)[torch.arange(B, device=y.device), idx]  # (B, rnn_dim)
        if self.rnn_back is None:
            return fwd
        back = run_rnn(self.rnn_back, reverse_padded(y, lengths))
        return torch.cat([fwd, back[torch.arange(B, device=y.device), idx]], -1)


class Recurrence(nn.Module):
    """One step of a deterministic recurrence ``h_t = f(input_t, h_{t-1})`` (GRU, LSTM or ReLU RNN cell)
    with a learned initial state; ``state`` is h, or (h, c) for the LSTM. ``bias=False``: a cell without
    biases."""

    def __init__(self, rnn_type: str, input_dim: int, hidden_dim: int, bias: bool = True):
        super().__init__()
        cells = {"gru": nn.GRUCell, "lstm": nn.LSTMCell}
        if rnn_type in cells:
            self.cell = cells[rnn_type](input_dim, hidden_dim, bias=bias)
        elif rnn_type == "rnn":
            self.cell = nn.RNNCell(input_dim, hidden_dim, bias=bias, nonlinearity="relu")
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
        all known in advance, from ``state`` (h_{-1}, as :meth:`forward` takes it): the cell's own parameters
        run through one multi-step ``nn.GRU``/``nn.LSTM``/``nn.RNN`` call (``torch.func.functional_call``),
        equal to looping :meth:`forward` up to float rounding, with the same gradients.

        The multi-step module runs in training mode whenever autograd records (its dropout is 0, so the
        values are the same): cuDNN's backward pass exists only in training mode, so that a Recurrence in
        eval mode can still be differentiated on CUDA."""
        c = self.cell
        if inputs.dim() != 3 or inputs.shape[-1] != c.input_size:
            raise ValueError(f"Recurrence.scan takes inputs (B, T, {c.input_size}), got {tuple(inputs.shape)}")
        params = {"weight_ih_l0": c.weight_ih, "weight_hh_l0": c.weight_hh}
        if c.bias:
            params.update(bias_ih_l0=c.bias_ih, bias_hh_l0=c.bias_hh)
        if self.is_lstm:
            hx = tuple(s[None].contiguous() for s in state)  # (1, B, hidden_dim) each
        else:
            hx = state[None].contiguous()  # (1, B, hidden_dim)
        rnn = self._multi_step()
        rnn.train(torch.is_grad_enabled())
        # tie_weights=False: the module has no tied weights, and looking for them costs more than the call itself
        return torch.func.functional_call(rnn, params, (inputs, hx), tie_weights=False)[0]  # (B, T, hidden_dim)

    def _multi_step(self) -> nn.RNNBase:
        """The cell's multi-step module, made once: a one-layer batch-first RNN of the cell's kind and sizes
        whose own parameters live on the ``meta`` device (no memory) and are never used; :meth:`scan` runs
        it on the cell's. Kept out of the module tree (no state_dict entry, no second set of parameters)."""
        rnn = self.__dict__.get("_multi_step_rnn")
        if rnn is None:
            c = self.cell
            kw = dict(nonlinearity=c.nonlinearity) if isinstance(c, nn.RNNCell) else {}
            rnn = _MULTI_STEP[type(c)](c.input_size, c.hidden_size, bias=c.bias, batch_first=True, device="meta", **kw)
            self.__dict__["_multi_step_rnn"] = rnn
        return rnn

    def __getstate__(self):  # pickling and deepcopy leave out the multi-step module; scan makes it again
        state = self.__dict__.copy()
        state.pop("_multi_step_rnn", None)
        return state
