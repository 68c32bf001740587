"""The path distributions keep every tensor on their own device: a site masked out entirely
(``poutine.mask(mask=False)``) gets its all-false mask built there, not on the CPU. The ``meta``
device stands in for a GPU (tensors with a shape and a device, no data): mixing it with a CPU tensor
fails as mixing CUDA and CPU tensors does."""

import torch
from pyro.distributions import MaskedDistribution, Normal

from dvae.models.paths import GuidePath, as_path, observation_path, observed_step_log_prob

META = torch.device("meta")


def test_a_path_masked_out_entirely_gets_its_mask_on_the_paths_device():
    loc = torch.zeros(2, 5, 3, device=META)  # (B, T, d)
    path = GuidePath(loc, torch.ones_like(loc), loc, mask=torch.ones(2, 5, dtype=torch.bool, device=META))
    inner, mask = as_path(MaskedDistribution(path, False))  # (path.mask is its step mask, not the method)
    assert inner is path
    assert mask.device == META and mask.shape == (2,) and mask.dtype == torch.bool
    inner, mask = as_path(MaskedDistribution(MaskedDistribution(path, torch.ones(2, dtype=torch.bool, device=META)), False))
    assert mask.device == META and mask.shape == (2,)


def test_an_observation_site_masked_out_entirely_scores_on_its_device():
    x_dist = Normal(torch.zeros(2, 5, 3, device=META), torch.ones(2, 5, 3, device=META), validate_args=False)
    steps = torch.ones(2, 5, dtype=torch.bool, device=META)  # (B, T)
    site = observation_path(x_dist.to_event(1), steps).mask(False)
    lp = observed_step_log_prob(site, torch.zeros(2, 5, 3, device=META))
    assert lp.device == META and lp.shape == (2, 5)


def test_on_the_cpu_a_site_masked_out_entirely_scores_zero():
    x_dist = Normal(torch.zeros(2, 4, 3), torch.ones(2, 4, 3), validate_args=False)
    site = observation_path(x_dist.to_event(1), torch.ones(2, 4, dtype=torch.bool)).mask(False)
    lp = observed_step_log_prob(site, torch.randn(2, 4, 3))
    assert torch.equal(lp, torch.zeros(2, 4))
