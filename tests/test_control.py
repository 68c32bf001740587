import torch

from dvae.control import Planner, PlannerConfig


def quadratic_returns(target):
    def returns(actions):  # (N, H, 1): best is the target sequence
        return -((actions - target) ** 2).sum((1, 2))
    return returns


def test_cem_and_mppi_find_the_best_action_sequence():
    target = torch.linspace(-0.8, 0.8, 6)[:, None]  # (H, 1)
    for kind in ("cem", "mppi"):
        p = Planner(kind, [-1.0], [1.0], PlannerConfig(horizon=6, num_samples=300, iterations=8),
                    generator=torch.Generator().manual_seed(0))
        first = p.act(quadratic_returns(target))
        assert abs(first.item() - target[0].item()) < 0.15, (kind, first)
        assert (p.mean[:4] - target[1:5]).abs().max() < 0.3  # the plan is shifted for the next step


def test_planner_respects_bounds_and_seed():
    outs = []
    for _ in range(2):
        p = Planner("cem", [-2.0], [2.0], PlannerConfig(horizon=4, num_samples=50, iterations=2),
                    generator=torch.Generator().manual_seed(3))
        outs.append(p.act(lambda a: a.sum((1, 2))))  # wants +inf: clipped at the bound
    assert torch.equal(outs[0], outs[1]) and outs[0].item() <= 2.0 and outs[0].item() > 1.0
