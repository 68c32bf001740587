"""dvae.nn.recurrent: Recurrence.scan against its cell stepped by hand and against torch's own multi-step
modules; run_rnn's choice between the hand-written ReLU scan (CPU) and the module's kernel (CUDA)."""

import copy
import itertools
import pickle

import pytest
import torch
import torch.nn as nn

import dvae.nn.recurrent as recurrent
from dvae.nn import Recurrence, SequenceEncoder, make_rnn, run_rnn

D = dict(dtype=torch.float64)
TIGHT = dict(rtol=1e-9, atol=1e-9)
CASES = list(itertools.product(["gru", "lstm", "rnn"], [True, False], [True, False]))  # type, bias, training


def recurrence(rnn_type, bias, training, in_dim=5, hidden=7, seed=0):
    torch.manual_seed(seed)
    r = Recurrence(rnn_type, in_dim, hidden, bias=bias).double().train(training)
    with torch.no_grad():
        r.h_0.normal_()
    return r


def outputs_and_grads(r, run, x, w):
    """run(x) -> (B, T, hidden); the outputs and the gradients of a nonlinear loss in x and every parameter."""
    leaves = [x] + list(r.parameters())
    for p in leaves:
        p.grad = None
    out = run(x)
    ((out * w).sum() + out.pow(2).sum()).backward()
    return [out.detach()] + [p.grad.clone() for p in leaves]


def cell_loop(r, x):
    state, outs = r.initial(x.shape[0]), []
    for t in range(x.shape[1]):
        state = r(x[:, t], state)
        outs.append(Recurrence.output(state))
    return torch.stack(outs, 1)  # (B, T, hidden)


@pytest.mark.parametrize("rnn_type, bias, training", CASES)
def test_recurrence_scan_equals_the_cell_stepped_by_hand(rnn_type, bias, training):
    r = recurrence(rnn_type, bias, training)
    x = torch.randn(3, 6, 5, **D, requires_grad=True)
    w = torch.randn(3, 6, 7, **D)
    loop = outputs_and_grads(r, lambda x: cell_loop(r, x), x, w)
    scan = outputs_and_grads(r, lambda x: r.scan(x, r.initial(3)), x, w)
    assert len(loop) == 3 + (4 if bias else 2)  # out, x, h_0 and the cell's weights (and biases)
    for a, b in zip(loop, scan):
        torch.testing.assert_close(b, a, **TIGHT)


@pytest.mark.parametrize("rnn_type, bias, training", CASES)
def test_recurrence_scan_equals_torchs_module_holding_the_cells_weights(rnn_type, bias, training):
    """The same multi-step kernel as an ``nn.GRU``/``nn.LSTM``/``nn.RNN`` given copies of the cell's
    parameters (what the former ``torch._VF`` call ran): equal to the bit, gradients included."""
    r = recurrence(rnn_type, bias, training)
    kind = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}[rnn_type]
    kw = dict(nonlinearity="relu") if rnn_type == "rnn" else {}
    m = kind(5, 7, bias=bias, batch_first=True, **kw).double().train(training)
    names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if bias else [])
    with torch.no_grad():
        for n in names:
            getattr(m, n + "_l0").copy_(getattr(r.cell, n))
    x = torch.randn(3, 6, 5, **D, requires_grad=True)
    x_m = x.detach().clone().requires_grad_()
    w = torch.randn(3, 6, 7, **D)
    h0 = r.h_0.detach().expand(3, -1)[None].contiguous().requires_grad_()  # (1, B, hidden)
    hx = (h0, torch.zeros_like(h0)) if rnn_type == "lstm" else h0
    out = m(x_m, hx)[0]
    ((out * w).sum() + out.pow(2).sum()).backward()
    ours = outputs_and_grads(r, lambda x: r.scan(x, r.initial(3)), x, w)  # out, x, h_0, the cell's
    theirs = [out.detach(), x_m.grad, h0.grad[0].sum(0)] + [getattr(m, n + "_l0").grad for n in names]
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):  # h_0's gradient: the initial state's, summed over the batch
        assert torch.equal(a, b)


@pytest.mark.parametrize("rnn_type", ["gru", "lstm", "rnn"])
def test_recurrence_scan_runs_its_module_in_training_mode_whenever_autograd_records(rnn_type):
    """cuDNN has no backward pass for an RNN run in eval mode: a Recurrence in eval mode must still call
    its multi-step module in training mode when gradients are wanted (and may skip it under no_grad)."""
    r = recurrence(rnn_type, True, training=False)
    seen = []
    r._multi_step().register_forward_pre_hook(lambda module, args: seen.append(module.training))
    x = torch.randn(2, 4, 5, **D, requires_grad=True)
    r.scan(x, r.initial(2)).sum().backward()
    with torch.no_grad():
        r.scan(x, r.initial(2))
    assert seen == [True, False]
    assert not r.training and x.grad is not None


def test_recurrence_keeps_one_set_of_parameters_and_its_state_dict():
    r = recurrence("gru", True, True)
    x = torch.randn(2, 4, 5, **D)
    before = r.scan(x, r.initial(2))
    assert list(r.state_dict()) == ["h_0", "cell.weight_ih", "cell.weight_hh", "cell.bias_ih", "cell.bias_hh"]
    assert sum(p.numel() for p in r.parameters()) == 7 + 21 * 5 + 21 * 7 + 2 * 21  # h_0, W_ih, W_hh, b_ih, b_hh
    for clone in (copy.deepcopy(r), pickle.loads(pickle.dumps(r))):
        assert torch.equal(clone.scan(x, clone.initial(2)), before)
        with torch.no_grad():
            clone.cell.weight_hh.mul_(2)  # a copy is its own: changing it leaves the original alone
        assert not torch.equal(clone.scan(x, clone.initial(2)), before)
    assert torch.equal(r.scan(x, r.initial(2)), before)


def test_recurrence_scan_names_the_shape_it_wants():
    r = Recurrence("gru", 5, 7)
    with pytest.raises(ValueError, match=r"inputs \(B, T, 5\), got \(2, 4, 6\)"):
        r.scan(torch.randn(2, 4, 6), r.initial(2))


def test_the_relu_scan_runs_on_cpu_only():
    assert recurrent.use_relu_scan(torch.device("cpu"))
    assert not recurrent.use_relu_scan(torch.device("cuda"))
    assert not recurrent.use_relu_scan(torch.device("meta"))


def node_names(t):
    """The class names of the autograd graph's nodes behind ``t``."""
    seen, todo = set(), [t.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and node not in seen:
            seen.add(node)
            todo += [n for n, _ in node.next_functions]
    return {type(n).__name__ for n in seen}


@pytest.mark.parametrize("h0", [False, True])
def test_run_rnn_takes_the_relu_scan_where_chosen_and_torchs_kernel_elsewhere_with_equal_results(h0, monkeypatch):
    """On CPU, with the device predicate forced either way (the stand-in for CUDA), both paths give the
    same outputs and gradients; the graph shows which path ran."""
    torch.manual_seed(0)
    rnn = make_rnn("rnn", 5, 7).double()
    y = torch.randn(3, 6, 5, **D, requires_grad=True)
    state = torch.randn(1, 3, 7, **D, requires_grad=True) if h0 else None
    w = torch.randn(3, 6, 7, **D)
    results = {}
    for scan in (True, False):
        monkeypatch.setattr(recurrent, "use_relu_scan", lambda device, scan=scan: scan)
        leaves = list(rnn.parameters()) + [y] + ([state] if h0 else [])
        for p in leaves:
            p.grad = None
        out = run_rnn(rnn, y, state)
        assert ("ReluRNNScanBackward" in node_names(out)) == scan
        ((out * w).sum() + out.pow(2).sum()).backward()
        results[scan] = [out.detach()] + [p.grad.clone() for p in leaves]
    for a, b in zip(results[True], results[False]):
        torch.testing.assert_close(a, b, **TIGHT)


def test_run_rnn_on_a_non_cpu_device_calls_the_module():
    """On the ``meta`` device (no data, like CUDA not a CPU) a ReLU RNN goes through the module itself."""
    rnn = make_rnn("rnn", 5, 7).to("meta")
    calls = []
    rnn.register_forward_hook(lambda module, args, out: calls.append(args[0].device.type))
    out = run_rnn(rnn, torch.empty(3, 6, 5, device="meta"))
    assert calls == ["meta"] and out.shape == (3, 6, 7) and out.device.type == "meta"


@pytest.mark.parametrize("rnn_type", ["gru", "lstm", "rnn"])
def test_sequence_encoder_backward_summarises_the_suffix_of_each_real_sequence(rnn_type):
    """h_t of the backward encoder equals the RNN run by hand over the reversed real steps y_{L-1} .. y_t."""
    torch.manual_seed(0)
    enc = SequenceEncoder(4, 6, rnn_type, "backward").double()
    lengths = torch.tensor([5, 3, 1])
    y = torch.randn(3, 5, 4, **D)
    h = enc(y, lengths)  # (B, T, 6)
    for b, L in enumerate(lengths.tolist()):
        ref = enc.rnn(y[b:b + 1, :L].flip(1))[0].flip(1)[0]  # (L, 6)
        torch.testing.assert_close(h[b, :L], ref, **TIGHT)
