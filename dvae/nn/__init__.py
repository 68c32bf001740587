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

    ``likelihood="gaussian"``: returns (loc, scale) with a learned per-dimension scale;
    ``likelihood="bernoulli"``: returns (logits,) of each binary entry;
    ``likelihood="categorical"``: returns (logits,) over the x_dim tokens of a vocabulary.
    """

    def __init__(self, in_dim: int, x_dim: int, emission_dim: int, likelihood: str = "gaussian"):
        super().__init__()
        self.likelihood = likelihood
        self.net = MLP(in_dim, emission_dim, x_dim, layers=2)
        if likelihood == "gaussian":
            self.raw_scale = nn.Parameter(torch.full((x_dim,), -1.0))
        elif likelihood not in ("bernoulli", "categorical"):
            raise ValueError(f"unknown likelihood {likelihood!r}")

    def forward(self, features):
        out = self.net(features)
        if self.likelihood == "gaussian":
            return out, positive(self.raw_scale).expand(out.shape)
        return (out,)


def _check_frame_shape(frame_shape) -> tuple:
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
        self.frame_shape = _check_frame_shape(frame_shape)
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
    learned per-pixel scale. Returns what :class:`Emitter` returns, with last dim H * W.
    """

    def __init__(self, in_dim: int, frame_shape, emission_dim: int, likelihood: str = "bernoulli",
                 channels: int = 32):
        super().__init__()
        self.frame_shape = _check_frame_shape(frame_shape)
        H, W = self.frame_shape
        self.likelihood, self.channels = likelihood, channels
        self.fc = MLP(in_dim, emission_dim, channels * (H // 4) * (W // 4), layers=1)
        self.deconv = nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1), nn.ReLU(),
                                    nn.ConvTranspose2d(channels // 2, 1, 4, 2, 1))
        if likelihood == "gaussian":
            self.raw_scale = nn.Parameter(torch.full((H * W,), -1.0))
        elif likelihood != "bernoulli":
            raise ValueError(f"unknown likelihood {likelihood!r} for frames (choose bernoulli or gaussian)")

    def forward(self, features):
        H, W = self.frame_shape
        lead = features.shape[:-1]
        grid = self.fc(features).reshape(-1, self.channels, H // 4, W // 4)  # (N, channels, H/4, W/4)
        out = self.deconv(grid).reshape(lead + (H * W,))  # (..., H * W)
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
        loc, scale, z = _CombinerScan.apply(h.transpose(0, 1).contiguous(), z_init, eps, self.z_to_hidden.weight,
                                            self.z_to_hidden.bias, heads_w, heads_b)  # (T, B, z_dim) each
        return loc.transpose(0, 1), scale.transpose(0, 1), z.transpose(0, 1)


class _CombinerScan(torch.autograd.Function):
    """The DKS combiner run over a path, time-major, as one autograd node (see :meth:`Combiner.scan`).

    Step t: a = z_{t-1} W1^T + b1, hid = (tanh(a) + h_t) / 2, [loc, raw] = hid Wc^T + bc,
    scale = softplus(raw) + MIN_SCALE, z_t = loc + eps_t * scale. The backward pass runs the chain
    z_t -> z_{t-1} step by step (two small matmuls a step) and forms every weight gradient afterwards.
    """

    @staticmethod
    def forward(ctx, h, z_init, eps, w1, b1, wc, bc):
        T, B, _ = h.shape
        Z = z_init.shape[-1]
        th = torch.empty_like(h)  # tanh(a_t)
        hid = torch.empty_like(h)
        out = h.new_empty(T, B, 2 * Z)  # [loc, raw]
        z = h.new_empty(T, B, Z)
        half_h = 0.5 * h
        w1_t, wc_t = w1.t().contiguous(), wc.t().contiguous()
        z_prev = z_init
        for t in range(T):
            torch.tanh(torch.addmm(b1, z_prev, w1_t), out=th[t])
            torch.add(half_h[t], th[t], alpha=0.5, out=hid[t])
            torch.addmm(bc, hid[t], wc_t, out=out[t])
            loc_t, raw_t = out[t, :, :Z], out[t, :, Z:]
            torch.addcmul(loc_t, eps[t], F.softplus(raw_t) + MIN_SCALE, out=z[t])
            z_prev = z[t]
        loc, raw = out[..., :Z], out[..., Z:]
        scale = F.softplus(raw) + MIN_SCALE
        ctx.save_for_backward(z_init, eps, w1, wc, th, hid, raw, z)
        return loc, scale, z

    @staticmethod
    def backward(ctx, g_loc, g_scale, g_z):
        z_init, eps, w1, wc, th, hid, raw, z = ctx.saved_tensors
        T, B, H = th.shape
        Z = z_init.shape[-1]
        d_softplus = torch.where(raw > 20, torch.ones_like(raw), torch.sigmoid(raw))  # as softplus' backward
        half_dtanh = 0.5 * (1 - th * th)
        g_scale_sp = g_scale * d_softplus
        eps_sp = eps * d_softplus
        d_out = th.new_empty(T, B, 2 * Z)  # d[loc, raw]
        d_hid = torch.empty_like(th)
        d_a = torch.empty_like(th)
        carry = torch.zeros_like(z_init)  # dL/dz_t through step t + 1
        for t in range(T - 1, -1, -1):
            g = g_z[t] + carry
            torch.add(g_loc[t], g, out=d_out[t, :, :Z])
            torch.addcmul(g_scale_sp[t], g, eps_sp[t], out=d_out[t, :, Z:])
            torch.mm(d_out[t], wc, out=d_hid[t])
            torch.mul(d_hid[t], half_dtanh[t], out=d_a[t])
            carry = d_a[t] @ w1
        z_prev = torch.cat([z_init[None], z[:-1]], 0).reshape(T * B, Z)
        d_a2, d_out2 = d_a.reshape(T * B, H), d_out.reshape(T * B, 2 * Z)
        g_w1, g_b1 = d_a2.t() @ z_prev, d_a2.sum(0)
        g_wc, g_bc = d_out2.t() @ hid.reshape(T * B, H), d_out2.sum(0)
        return 0.5 * d_hid, carry, None, g_w1, g_b1, g_wc, g_bc


class _VRNNFilterScan(torch.autograd.Function):
    """The VRNN's filtering guide with a ReLU RNN cell run over a path, time-major, as one autograd node
    (see ``dvae.models.vrnn.VRNN.guide_path``). The parts of every step that read only x_t and u_t come
    in precomputed for all steps at once: ``ax`` (T, B, Hp), the posterior's first layer on phi_x(x_t)
    with its bias, and ``rx`` (T, B, H), the cell's input weights on [phi_x(x_t), u_t] with both biases.
    Step t, from h = h_{t-1} (h_{-1} = ``h0``):

        [ph, rh] = h Wh^T                      Wh = [posterior's first layer on h; the cell's W_hh]
        a = relu(ax_t + ph);  [loc, raw] = a W2^T + b2;  scale = softplus(raw) + MIN_SCALE
        z_t = loc + eps_t * scale;  f_t = relu(z_t Wf^T + bf)               (phi_z)
        h_t = relu(rx_t + rh + f_t Wr^T)       Wr: the cell's input weights on phi_z

    Returns loc, scale, z (T, B, Z), phi_z (T, B, F) and h_{t-1} (T, B, H) for every t. The backward
    pass runs the chain h_t -> h_{t-1} step by step (four small matmuls a step, the two reading h_{t-1}
    as one) and forms every weight gradient as one matmul over all steps afterwards.
    """

    @staticmethod
    def forward(ctx, ax, rx, h0, eps, wh, w2, b2, wf, bf, wr):
        T, B, Hp = ax.shape
        H, Z, Fd = h0.shape[-1], eps.shape[-1], wf.shape[0]
        hprev = ax.new_empty(T, B, H)  # h_{t-1}
        a = torch.empty_like(ax)
        out = ax.new_empty(T, B, 2 * Z)  # [loc, raw]
        z = ax.new_empty(T, B, Z)
        f = ax.new_empty(T, B, Fd)
        wh_t, w2_t, wf_t, wr_t = (w.t().contiguous() for w in (wh, w2, wf, wr))
        h = h0
        for t in range(T):
            hprev[t] = h
            hh = h @ wh_t  # (B, Hp + H)
            torch.add(ax[t], hh[:, :Hp], out=a[t]).relu_()
            torch.addmm(b2, a[t], w2_t, out=out[t])
            torch.addcmul(out[t, :, :Z], eps[t], F.softplus(out[t, :, Z:]) + MIN_SCALE, out=z[t])
            torch.addmm(bf, z[t], wf_t, out=f[t]).relu_()
            if t + 1 < T:
                h = torch.addmm(rx[t] + hh[:, Hp:], f[t], wr_t).relu_()
        loc, raw = out[..., :Z], out[..., Z:]
        scale = F.softplus(raw) + MIN_SCALE
        ctx.save_for_backward(eps, wh, w2, wf, wr, hprev, a, raw, z, f)
        return loc, scale, z, f, hprev

    @staticmethod
    def backward(ctx, g_loc, g_scale, g_z, g_f, g_hprev):
        eps, wh, w2, wf, wr, hprev, a, raw, z, f = ctx.saved_tensors
        T, B, Hp = a.shape
        H, Z, Fd = hprev.shape[-1], z.shape[-1], f.shape[-1]
        zero = hprev.new_zeros(())
        g_loc, g_scale, g_z, g_f, g_hprev = (zero.expand(shape) if g is None else g for g, shape in
                                             ((g_loc, z.shape), (g_scale, z.shape), (g_z, z.shape),
                                              (g_f, f.shape), (g_hprev, hprev.shape)))
        d_softplus = torch.where(raw > 20, torch.ones_like(raw), torch.sigmoid(raw))  # as softplus' backward
        pos_a, pos_f = a > 0, f > 0
        pos_h = hprev > 0  # step t's new state h_t is hprev[t + 1]
        d_pre = hprev.new_zeros(T, B, Hp + H)  # d[pre-activation of a_t, of h_t] (the last h_T is never formed)
        d_out = hprev.new_empty(T, B, 2 * Z)  # d[loc, raw]
        d_fpre = hprev.new_empty(T, B, Fd)  # d(pre-activation of f_t)
        carry = hprev.new_zeros(B, H)  # dL/dh_t through step t + 1
        for t in range(T - 1, -1, -1):
            d_f = g_f[t]
            if t + 1 < T:
                torch.mul(carry, pos_h[t + 1], out=d_pre[t, :, Hp:])
                d_f = torch.addmm(d_f, d_pre[t, :, Hp:], wr)
            torch.mul(d_f, pos_f[t], out=d_fpre[t])
            d_z = torch.addmm(g_z[t], d_fpre[t], wf)
            torch.add(g_loc[t], d_z, out=d_out[t, :, :Z])
            torch.mul(torch.addcmul(g_scale[t], d_z, eps[t]), d_softplus[t], out=d_out[t, :, Z:])
            torch.mul(d_out[t] @ w2, pos_a[t], out=d_pre[t, :, :Hp])
            carry = torch.addmm(g_hprev[t], d_pre[t], wh)  # dL/dh_{t-1}
        d_pre2, d_out2, d_fpre2 = d_pre.reshape(T * B, Hp + H), d_out.reshape(T * B, 2 * Z), d_fpre.reshape(T * B, Fd)
        g_wh = d_pre2.t() @ hprev.reshape(T * B, H)
        g_w2, g_b2 = d_out2.t() @ a.reshape(T * B, Hp), d_out2.sum(0)
        g_wf, g_bf = d_fpre2.t() @ z.reshape(T * B, Z), d_fpre2.sum(0)
        g_wr = d_pre2[:, Hp:].t() @ f.reshape(T * B, Fd)
        return d_pre[..., :Hp], d_pre[..., Hp:], carry, None, g_wh, g_w2, g_b2, g_wf, g_bf, g_wr


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
    from ``state`` (as ``rnn`` takes it; None: zeros). A one-layer ReLU RNN runs as :class:`_ReluRNNScan`
    (same values and gradients, less work per step); GRU and LSTM run as ``rnn(y, state)``."""
    if isinstance(rnn, nn.RNN) and rnn.nonlinearity == "relu" and rnn.num_layers == 1 and not rnn.bidirectional \
            and rnn.bias and rnn.batch_first:
        B = y.shape[0]
        h0 = y.new_zeros(B, rnn.hidden_size) if state is None else state[0]
        x_proj = F.linear(y, rnn.weight_ih_l0, rnn.bias_ih_l0 + rnn.bias_hh_l0).transpose(0, 1).contiguous()
        return _ReluRNNScan.apply(x_proj, h0, rnn.weight_hh_l0).transpose(0, 1)
    return rnn(y, state)[0]


class _ReluRNNScan(torch.autograd.Function):
    """h_t = relu(x_t + h_{t-1} W^T) over a time-major input projection x (T, B, H), as one autograd node:
    the backward pass runs the chain h_t -> h_{t-1} step by step (one matmul a step) and forms the weight
    gradient as one matmul over all steps, where autograd would form and accumulate one per step."""

    @staticmethod
    def forward(ctx, x, h0, w):
        out = x.clone()
        w_t = w.t().contiguous()
        h = h0
        for t in range(x.shape[0]):
            out[t].addmm_(h, w_t).relu_()
            h = out[t]
        ctx.save_for_backward(h0, w, out)
        return out

    @staticmethod
    def backward(ctx, g_out):
        h0, w, out = ctx.saved_tensors
        T, B, H = out.shape
        d_pre = torch.empty_like(out)
        positive_ = out > 0
        carry = torch.zeros_like(h0)  # dL/dh_t through step t + 1
        for t in range(T - 1, -1, -1):
            torch.mul(g_out[t] + carry, positive_[t], out=d_pre[t])
            carry = d_pre[t] @ w
        h_prev = torch.cat([h0[None], out[:-1]], 0).reshape(T * B, H)
        return d_pre, carry, d_pre.reshape(T * B, H).t() @ h_prev


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


class StepPosterior(nn.Module):
    """Parameterizes ``q(z_t | x_t) = N(loc(x_t), scale(x_t))`` from one frame alone (the static VAE's
    encoder): x (..., x_dim) -> loc, scale (..., z_dim), with two hidden ReLU layers."""

    def __init__(self, x_dim: int, hidden_dim: int, z_dim: int):
        super().__init__()
        self.net = MLP(x_dim, hidden_dim, 2 * z_dim, layers=2)

    def forward(self, x):
        loc, raw = self.net(x).chunk(2, dim=-1)
        return loc, positive(raw)
