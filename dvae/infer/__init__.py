"""Inference: the dynamical ELBO, annealing and free bits, importance-weighted bounds, the trainer."""

from dvae.infer.elbo import DynamicalELBO, elbo_terms, iw_bound

__all__ = ["DynamicalELBO", "elbo_terms", "iw_bound"]
