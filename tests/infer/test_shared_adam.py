"""dvae.infer.optim.SharedAdam (the CUDA optimiser: one fused Adam over every parameter) on the CPU: the
updates of Pyro's per-parameter Adam, only the parameters of the update stepped, checkpoints that load
either way, and the learning-rate changes of fault recovery applied once."""

import copy

import numpy as np
import pyro
import pytest
import torch

from bench.host_reads import HostReads, optimizer_counters
from dvae.data import collate
from dvae.infer import DynamicalELBO
from dvae.infer.optim import SharedAdam, make_adam
from dvae.infer.svi import ClippedSVI
from dvae.infer.trainer import TrainConfig, Trainer
from dvae.models import ModelConfig, build_model


def _setup(optim, seed=0):
    pyro.clear_param_store()
    torch.manual_seed(seed)
    model = build_model(ModelConfig("dmm", x_dim=3, z_dim=2, rnn_dim=8, transition_dim=8, emission_dim=8))
    svi = ClippedSVI(*model.programs(vectorized=True), optim, DynamicalELBO(), clip_norm=10.0)
    return model, svi


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    return collate([torch.randn(n, 3, generator=g) for n in (5, 3, 4)])


def _run(svi, updates, first=0):
    for k in range(first, first + updates):
        pyro.set_rng_seed(100 + k)
        svi.step(_batch(k), 1.0)


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("fused", [False, True])
def test_shared_adam_makes_the_updates_of_pyros_per_parameter_adam(fused):
    m1, s1 = _setup(pyro.optim.Adam({"lr": 1e-2}))
    _run(s1, 5)
    m2, s2 = _setup(SharedAdam({"lr": 1e-2}, fused=fused))
    _run(s2, 5)
    a, b = _params(m1), _params(m2)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert len(s2.optim.shared.param_groups) == 1  # one group: one kernel over all


def test_only_the_parameters_of_the_update_are_stepped():
    pyro.clear_param_store()
    p = pyro.param("p", torch.ones(3)).unconstrained()
    q = pyro.param("q", torch.ones(2)).unconstrained()
    opt = SharedAdam({"lr": 0.1})
    p.grad, q.grad = torch.ones(3), torch.ones(2)
    opt([p, q])
    q_before = q.detach().clone()
    p.grad, q.grad = torch.ones(3), torch.ones(2)
    opt([p])  # q is outside this update: not stepped, its gradient left as it was
    assert torch.equal(q.detach(), q_before) and torch.equal(q.grad, torch.ones(2))
    assert opt.shared.state[p]["step"].item() == 2 and opt.shared.state[q]["step"].item() == 1


@pytest.mark.parametrize("direction", ["pyro->shared", "shared->pyro"])
def test_checkpoints_load_either_way_and_continue_the_same(direction):
    first, second = (pyro.optim.Adam, SharedAdam) if direction == "pyro->shared" else (SharedAdam, pyro.optim.Adam)
    model, svi = _setup(first({"lr": 1e-2}))
    _run(svi, 3)
    state = copy.deepcopy(svi.optim.get_state())
    torch.save(state, "/dev/null")  # plain tensors and containers
    params = _params(model)
    _run(svi, 3, first=3)
    expected = _params(model)

    model2, svi2 = _setup(second({"lr": 1e-2}))
    model2.load_state_dict(params)
    svi2.optim.set_state(state)
    _run(svi2, 3, first=3)
    for k, v in _params(model2).items():
        torch.testing.assert_close(v, expected[k], rtol=1e-5, atol=1e-6)
    names = set(state)
    assert names and all(set(sd["state"][0]) >= {"step", "exp_avg", "exp_avg_sq"} for sd in state.values())
    assert all(sd["state"][0]["step"].device.type == "cpu" for sd in svi2.optim.get_state().values()), names


def test_fault_recovery_lowers_the_shared_rate_once():
    torch.manual_seed(0)
    model = build_model(ModelConfig("dmm", x_dim=2, z_dim=2, rnn_dim=8, transition_dim=8, emission_dim=8))
    g = np.random.default_rng(0)
    xs = [g.standard_normal((6, 2)).astype(np.float32) for _ in range(8)]
    t = Trainer(model, TrainConfig(epochs=1, batch_size=4, patience=0, lr=0.02), (xs, None), (xs, None))
    t.optim = t.svi.optim = SharedAdam({"lr": 0.02}, fused=True)
    t.train_epoch()
    t._take_snapshot()
    t._recover()
    assert t.optim.shared.param_groups[0]["lr"] == pytest.approx(0.01)
    assert t.state["lr_scale"] == 0.5


def test_a_fused_update_reads_no_step_counter_on_the_host():
    model, svi = _setup(SharedAdam({"lr": 1e-2}, fused=True))
    _run(svi, 1)
    assert optimizer_counters(svi.optim) == []  # fused: the counters live with the parameters
    batch = _batch(1)
    with HostReads() as h:
        svi.step(batch, 1.0)
    assert h.reads <= 1 and h.host_reads == 0, h.where


def test_make_adam_is_pyros_on_the_cpu_and_shared_fused_on_cuda():
    cpu = make_adam({"lr": 1e-3}, "cpu")
    assert not isinstance(cpu, SharedAdam) and cpu.pt_optim_constructor is torch.optim.Adam
    opt = make_adam({"lr": 1e-3}, torch.device("cuda", 0))  # built lazily: no CUDA call yet
    assert isinstance(opt, SharedAdam) and opt.fused
