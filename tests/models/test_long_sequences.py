"""A training update is linear in the sequence length T: no step of any program indexes a whole path.

``h[:, t]`` on a tensor that needs a gradient puts a ``SelectBackward0`` in the graph whose backward
fills a zero tensor of the whole (B, T, ...) input, once per step: a backward quadratic in T. It made
the KVAE's update on MuseData's longest rolls (4273 steps) take minutes and run out of 24 GB. The
programs take per-step views by ``unbind(1)`` instead (one backward for all steps). The oracle is the
graph itself, not a timing: walk the ELBO's autograd graph and list every select along the time
axis of a tensor of T steps.
"""

import pytest
import torch

from dvae.data.batch import SequenceBatch
from dvae.infer.objectives import make_objective
from dvae.models import MODELS, ModelConfig, build_model
from dvae.models.kvae import kalman_path

T = 7  # a length no other dimension here has


def time_selects(loss: torch.Tensor, num_steps: int):
    """The input sizes of every select along dim >= 1 of size ``num_steps`` in ``loss``'s backward graph."""
    seen, found, stack = set(), [], [loss.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if type(fn).__name__ == "SelectBackward0":
            sizes, dim = tuple(fn._saved_self_sym_sizes), fn._saved_dim
            if dim >= 1 and sizes[dim] == num_steps:
                found.append(sizes)
        stack.extend(f for f, _ in fn.next_functions)
    return found


@pytest.mark.parametrize("vectorized", [True, False], ids=["vectorized", "per-step"])
@pytest.mark.parametrize("family", sorted(MODELS))
def test_no_program_selects_one_step_of_a_whole_path_in_its_backward(family, vectorized):
    torch.manual_seed(0)
    B = 3
    model = build_model(ModelConfig(model=family, x_dim=5, u_dim=2, z_dim=3, likelihood="gaussian"))
    batch = SequenceBatch(torch.randn(B, T, 5), torch.randn(B, T, 2), torch.ones(B, T, dtype=torch.bool),
                          torch.full((B,), T))
    program, guide = model.programs(vectorized=vectorized)
    loss = make_objective("elbo").differentiable_loss(program, guide, batch, 1.0)
    assert time_selects(loss, T) == [], f"{family}: per-step selects of whole-path tensors in the backward"


def test_the_walk_finds_a_per_step_select_where_there_is_one():
    """The oracle can fail: indexing a path step by step is what it reports."""
    h = torch.randn(2, T, 4, requires_grad=True)
    loss = sum(h[:, t].sum() for t in range(T))
    assert time_selects(loss, T) == [(2, T, 4)] * T


def test_the_kalman_filter_backward_has_no_per_step_select():
    torch.manual_seed(1)
    B, s, a_dim = 2, 3, 2
    A = torch.randn(B, T, s, s, requires_grad=True)
    C = torch.randn(B, T, a_dim, s, requires_grad=True)
    a = torch.randn(B, T, a_dim, requires_grad=True)
    drive = torch.randn(B, T, s, requires_grad=True)
    log_p, _, _ = kalman_path(a, A * 0.3, C, torch.eye(s), torch.eye(a_dim), torch.zeros(s), torch.eye(s), drive,
                              torch.ones(B, T, dtype=torch.bool))
    assert time_selects(log_p.sum(), T) == []
