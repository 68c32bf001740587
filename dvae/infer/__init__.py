"""Inference: the dynamical ELBO, annealing and free bits, importance-weighted bounds, evaluation, the trainer.

``DynamicalELBO`` scores both forms of every model's program (``model``/``guide`` with a site per
step, ``model_vectorized``/``guide_vectorized`` with the path as one site); ``direct_loss`` is the same
ELBO written in plain torch (the reference for tests and benchmarks).
"""

from dvae.infer.diagnostics import CollapseMonitor, PosteriorCollapseWarning, active_units, latent_report
from dvae.infer.direct import direct_loss
from dvae.infer.elbo import DynamicalELBO, elbo, elbo_terms, iw_bound, site_kl_steps

__all__ = ["DynamicalELBO", "elbo", "elbo_terms", "iw_bound", "site_kl_steps", "direct_loss", "CollapseMonitor",
           "PosteriorCollapseWarning", "active_units", "latent_report"]
