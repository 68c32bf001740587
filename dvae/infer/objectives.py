"""Training objectives by name: the per-step dynamical ELBO and the importance-weighted bound (IWAE).

The trainer (:class:`dvae.infer.trainer.Trainer`) maximises, for each batch, a bound divided by the
batch's number of real (unpadded) steps N:

- ``elbo``: :class:`~dvae.infer.elbo.DynamicalELBO` (each step's KL in closed form given the sampled
  z_{t-1}), with KL annealing, free bits and beta; the programs run under ``poutine.scale(1 / N)``,
  which is exact here because the ELBO is a sum of log densities. ``train_samples`` K > 1 averages K
  independent draws of it (``num_particles``).
- ``iwae``: :class:`IWAEObjective`, the K-sample importance-weighted bound (Burda et al. 2016) of each
  sequence b,

      IWAE_K(x_b) = log (1/K) sum_k p(x_b, z_bk) / q(z_bk | x_b),   z_bk ~ q(z | x_b) (reparameterized),

  summed over the batch and divided by N: -(1/N) sum_b IWAE_K(x_b) is the loss. A log-mean-exp is
  not linear in a scale of its log densities, so the programs run unscaled and the 1/N is applied to
  the bound (the ELBO's ``poutine.scale`` would give log mean_k w_k^(1/N), another objective). KL
  annealing, free bits and beta do not apply (they act on a KL term the bound does not have); K = 1
  is the one-draw ELBO log p(x, z) - log q(z | x) (``Trace_ELBO``'s estimate, the KL sampled, not in
  closed form). The gradient is autograd of the bound: sum_k w~_k grad log w_k with normalised
  weights w~_k, the reparameterized IWAE gradient.

Validation and every reported bound stay the plain ELBO (``dvae.infer.evaluation``) whatever the
objective, so runs with either objective are compared on the same scale.
"""

from __future__ import annotations

import math
from typing import Callable, Dict

import torch

from dvae.infer.elbo import DynamicalELBO, importance_terms

OBJECTIVES = ("elbo", "iwae")
"""The objective names the trainer knows (``TrainConfig.objective``, ``dvae train --objective``)."""


class IWAEObjective:
    """The K-sample importance-weighted bound as a training loss, with the interface the trainer's SVI
    step uses (``loss_and_grads``, ``last_term_tensors``).

    :meth:`loss_and_grads` takes programs called as ``program(batch, annealing_factor, scale)`` (the
    trainer's), runs them with annealing 1 and scale 1 on the batch repeated K times, and returns (and
    backpropagates) ``-scale * sum_b IWAE_K(x_b)``, a detached 0-dim tensor. After each call
    :attr:`last_term_tensors` holds the plain ELBO terms of the K draws, averaged over the draws and
    summed over the batch: ``log_lik`` (sum of log p(x_t | z_t)) and ``kl`` (log q(z | x) - log p(z),
    the one-draw KL estimate), for logging.
    """

    def __init__(self, num_samples: int = 1):
        if not (isinstance(num_samples, int) and not isinstance(num_samples, bool) and num_samples >= 1):
            raise ValueError(f"the IWAE objective needs an integer number of samples >= 1, got {num_samples!r}")
        self.num_samples = num_samples
        self.last_term_tensors: Dict[str, torch.Tensor] = {}

    @property
    def last_terms(self) -> Dict[str, float]:
        return {key: float(value) for key, value in self.last_term_tensors.items()}

    def bound(self, model: Callable, guide: Callable, batch, *args) -> torch.Tensor:
        """IWAE_K of each sequence (B,), differentiable; the programs called as ``program(batch, *args)``
        (unscaled programs for the bound itself)."""
        terms = importance_terms(model, guide, batch, self.num_samples, *args)  # (K, B) each
        log_w = terms["log_lik"] + terms["log_prior"] - terms["log_q"]  # (K, B)
        self.last_term_tensors = {"log_lik": terms["log_lik"].detach().mean(0).sum(),
                                  "kl": (terms["log_q"] - terms["log_prior"]).detach().mean(0).sum()}
        return torch.logsumexp(log_w, 0) - math.log(self.num_samples)  # (B,)

    @torch.no_grad()
    def loss(self, model: Callable, guide: Callable, batch, annealing_factor: float = 1.0,
             scale: float = 1.0) -> float:
        """``-scale * sum_b IWAE_K(x_b)`` without gradients (as :meth:`loss_and_grads`)."""
        return float(-scale * self.bound(model, guide, batch, 1.0, 1.0).sum())

    __call__ = loss

    def loss_and_grads(self, model: Callable, guide: Callable, batch, annealing_factor: float = 1.0,
                       scale: float = 1.0) -> torch.Tensor:
        """Backpropagate the gradient of ``-scale * sum_b IWAE_K(x_b)`` and return it (detached). The
        trainer passes ``scale`` = 1 / (real steps of the batch); ``annealing_factor`` is ignored (no
        annealing: the programs run with 1)."""
        loss = -scale * self.bound(model, guide, batch, 1.0, 1.0).sum()
        if loss.requires_grad:
            loss.backward()
        return loss.detach()


def make_objective(name: str, train_samples: int = 1, free_bits: float = 0.0, beta: float = 1.0):
    """The loss object of objective ``name`` (``OBJECTIVES``) for the trainer's SVI step."""
    if name == "elbo":
        return DynamicalELBO(num_particles=train_samples, free_bits=free_bits, beta=beta)
    if name == "iwae":
        if free_bits or beta != 1.0:
            raise ValueError(f"the iwae objective takes no free bits or beta (got free_bits {free_bits}, beta {beta})")
        return IWAEObjective(train_samples)
    raise ValueError(f"unknown objective {name!r} (choose {' or '.join(OBJECTIVES)})")
