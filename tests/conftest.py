import json

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


def write_random_walks(directory, episodes: int = 12, steps: int = 9, **extra):
    """``directory/traj.npz``, seeded: ``obs`` (episodes, steps, 2) Gaussian random walks, ``actions``
    (episodes, steps - 1, 1) Gaussian noise, and any ``extra`` arrays beside them (e.g. ``labels``).
    Returns its path (the command line's tiny data of the end-to-end tests)."""
    g = np.random.default_rng(0)
    obs = np.cumsum(g.standard_normal((episodes, steps, 2)), axis=1).astype(np.float32)  # (N, T+1, 2)
    actions = g.standard_normal((episodes, steps - 1, 1)).astype(np.float32)  # (N, T, 1)
    np.savez(directory / "traj.npz", obs=obs, actions=actions, **extra)
    return directory / "traj.npz"


def run_cli(capsys, *args):
    """Run the ``dvae`` command line in this process: (exit status, its JSON output or None, stderr)."""
    from dvae.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err
