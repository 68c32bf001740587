import numpy as np
import pyro
import pytest
import torch

from dvae.data import collate


@pytest.fixture(autouse=True)
def _seed_and_clear():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    np.random.seed(0)
    yield


def make_batch(lengths=(7, 5, 3), x_dim=3, u_dim=2, seed=0):
    """A padded SequenceBatch of random sequences (u=None when u_dim == 0)."""
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(L, x_dim, generator=g) for L in lengths]
    us = [torch.randn(L, u_dim, generator=g) for L in lengths] if u_dim else None
    return collate(xs, us)
