"""Model-predictive control: the cross-entropy method (CEM) and MPPI over action sequences.

A planner needs only ``returns(actions) -> (N,)``: the total reward of N candidate action sequences
``actions`` (N, H, u_dim), from imagined rollouts of a learned model or from a simulator's batched
dynamics. At every real step it refines a distribution over sequences and returns the first action
of its mean; the rest of the mean warm-starts the next step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class PlannerConfig:
    """Settings of CEM and MPPI."""

    horizon: int = 25
    """Planning horizon H (steps)."""
    num_samples: int = 400
    """Candidate sequences per iteration."""
    iterations: int = 5
    """Refinement iterations per real step."""
    elite_frac: float = 0.1
    """CEM: fraction of candidates kept as elites."""
    temperature: float = 0.1
    """MPPI: lambda of the exponential weights (in units of the returns' standard deviation)."""
    momentum: float = 0.1
    """CEM: weight of the old mean and std in each update."""
    init_std: float = 0.5
    """Initial standard deviation, as a fraction of the action range."""


class Planner:
    """CEM or MPPI over a box of actions ``[low, high]`` (u_dim,)."""

    def __init__(self, kind: str, low, high, config: PlannerConfig = PlannerConfig(), device="cpu",
                 generator: torch.Generator | None = None):
        if kind not in ("cem", "mppi"):
            raise ValueError(f"unknown planner {kind!r} (choose cem or mppi)")
        self.kind, self.config, self.device = kind, config, torch.device(device)
        self.low = torch.as_tensor(low, dtype=torch.float32, device=self.device).reshape(-1)
        self.high = torch.as_tensor(high, dtype=torch.float32, device=self.device).reshape(-1)
        self.generator = generator
        self.reset()

    def reset(self) -> None:
        H, u_dim = self.config.horizon, self.low.shape[0]
        self.mean = ((self.low + self.high) / 2).expand(H, u_dim).clone()  # (H, u_dim)

    def _noise(self, shape):
        return torch.randn(shape, generator=self.generator, device="cpu").to(self.device)

    @torch.no_grad()
    def act(self, returns: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Plan from the current state (which ``returns`` closes over); returns the action (u_dim,)."""
        c = self.config
        span = self.high - self.low
        mean = self.mean
        std = (c.init_std * span).expand_as(mean).clone()  # (H, u_dim)
        for _ in range(c.iterations):
            actions = (mean + std * self._noise((c.num_samples,) + mean.shape)).clamp(self.low, self.high)  # (N, H, u)
            r = returns(actions)  # (N,)
            if self.kind == "cem":
                k = max(2, int(c.elite_frac * c.num_samples))
                elites = actions[r.topk(k).indices]  # (k, H, u)
                mean = c.momentum * mean + (1 - c.momentum) * elites.mean(0)
                std = c.momentum * std + (1 - c.momentum) * elites.std(0)
            else:
                w = torch.softmax((r - r.max()) / (c.temperature * r.std().clamp(min=1e-6)), 0)  # (N,)
                mean = (w[:, None, None] * actions).sum(0)
        first = mean[0].clone()
        self.mean = torch.cat([mean[1:], mean[-1:]], 0)  # shift for the next step
        return first
