"""The hand-written backward passes of dvae.nn.scans against finite differences.

``torch.autograd.gradcheck`` compares each Function's backward with the numerical Jacobian of its
forward, in float64, at small sizes, for every differentiable input and every output at once. The
random inputs keep the ReLU pre-activations away from their kink (where the finite difference is not a
derivative); ``check_no_kinks`` asserts that they do, so the check cannot pass by luck.
"""

import pytest
import torch
from torch.autograd import gradcheck

from dvae.nn.scans import CombinerScan, ReluRNNScan, VRNNFilterScan

T, B = 4, 2
D = dict(dtype=torch.float64)


def leaf(*shape, scale=1.0, g):
    return (scale * torch.randn(*shape, generator=g, **D)).requires_grad_()


def test_relu_rnn_scan_backward_matches_finite_differences():
    g = torch.Generator().manual_seed(0)
    H = 3
    x, h0, w = leaf(T, B, H, g=g), leaf(B, H, g=g), leaf(H, H, scale=0.5, g=g)
    with torch.no_grad():
        out = ReluRNNScan.apply(x, h0, w)
        assert out.gt(0).any() and out.eq(0).any()  # both sides of the ReLU are exercised
        h_prev = torch.cat([h0[None], out[:-1]])  # (T, B, H)
        pre = x + h_prev @ w.t()  # the pre-activations
        assert pre.abs().min() > 1e-3  # no kink within the finite-difference step
    assert gradcheck(ReluRNNScan.apply, (x, h0, w), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_combiner_scan_backward_matches_finite_differences():
    g = torch.Generator().manual_seed(1)
    Z, H = 2, 3
    h, z_init = leaf(T, B, H, g=g), leaf(B, Z, g=g)
    eps = torch.randn(T, B, Z, generator=g, **D)  # the standard normals: not differentiated (None)
    w1, b1 = leaf(H, Z, scale=0.7, g=g), leaf(H, g=g)
    wc, bc = leaf(2 * Z, H, scale=0.7, g=g), leaf(2 * Z, g=g)
    assert gradcheck(CombinerScan.apply, (h, z_init, eps, w1, b1, wc, bc), eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("seed", [2, 3])
def test_vrnn_filter_scan_backward_matches_finite_differences(seed):
    g = torch.Generator().manual_seed(seed)
    Hp, H, Z, Fd = 3, 4, 2, 3
    ax, rx, h0 = leaf(T, B, Hp, g=g), leaf(T, B, H, g=g), leaf(B, H, g=g)
    eps = torch.randn(T, B, Z, generator=g, **D)
    wh = leaf(Hp + H, H, scale=0.5, g=g)
    w2, b2 = leaf(2 * Z, Hp, scale=0.7, g=g), leaf(2 * Z, g=g)
    wf, bf = leaf(Fd, Z, scale=0.7, g=g), leaf(Fd, g=g)
    wr = leaf(H, Fd, scale=0.5, g=g)
    args = (ax, rx, h0, eps, wh, w2, b2, wf, bf, wr)
    with torch.no_grad():  # the three ReLUs' pre-activations, rebuilt from the outputs, stay off their kink
        loc, scale, z, f, hprev = VRNNFilterScan.apply(*args)
        hh = hprev @ wh.t()  # (T, B, Hp + H)
        a_pre = ax + hh[..., :Hp]
        f_pre = z @ wf.t() + bf
        h_pre = (rx + hh[..., Hp:] + f @ wr.t())[:-1]  # h_T is never formed
        for pre in (a_pre, f_pre, h_pre):
            assert pre.abs().min() > 1e-3
        torch.testing.assert_close(hprev[1:], h_pre.relu(), rtol=1e-12, atol=1e-12)  # the rebuild is right
        assert torch.equal(hprev[0], h0)
    assert gradcheck(VRNNFilterScan.apply, args, eps=1e-6, atol=1e-7, rtol=1e-6)
