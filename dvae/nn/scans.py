"""Hand-written backward passes: recurrences run over a whole path as one autograd node each.

Each forward pass loops over time; each backward pass runs the chain h_t -> h_{t-1} step by step
and forms every weight gradient as one matmul over all steps afterwards, where autograd would form
and accumulate one per step. All are time-major (T, B, ...).

- :class:`CombinerScan`: the DKS combiner over a path (:meth:`dvae.nn.Combiner.scan`).
- :class:`VRNNFilterScan`: the VRNN's filtering guide with a ReLU RNN cell (``dvae.models.vrnn``).
- :class:`ReluRNNScan`: a one-layer ReLU RNN (:func:`dvae.nn.run_rnn` on CPU).

Each is checked against ``torch.autograd.gradcheck`` in tests/nn/test_scans.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dvae.nn.scale import MIN_SCALE


class CombinerScan(torch.autograd.Function):
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


class VRNNFilterScan(torch.autograd.Function):
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


class ReluRNNScan(torch.autograd.Function):
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
