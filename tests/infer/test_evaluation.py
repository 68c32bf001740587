"""Evaluation inside training: validation scores the program form the trainer trains, with the bound
of the per-step programs.

The vectorized programs draw the same latent path as the per-step ones under the same seed, so the
validation figures of a vectorized trainer must equal :func:`evaluate` of the per-step programs up to
float rounding (float64: a missing term, a leaked padded step or a wrong log-Jacobian could not hide).
"""

import math

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger

from dvae.data import collate
from dvae.infer.evaluation import evaluate
from dvae.infer.trainer import TrainConfig, Trainer
from tests.infer.test_vectorized import C_DIM, VARIANTS, tiny

X_DIM, U_DIM = 3, 2
LOG_STD = np.array([0.3, -0.2, 0.5])  # (x_dim,): per-dimension log std of a standardisation
LENGTHS = (7, 5, 3, 6, 1)


def split(seed, missing=False):
    """(xs, us, cs): ragged float64 sequences; ``missing``: about a fifth of the entries NaN."""
    rng = np.random.default_rng(seed)
    xs = [rng.normal(size=(n, X_DIM)) for n in LENGTHS]
    if missing:
        for x in xs:
            x[rng.random(x.shape) < 0.2] = np.nan
    us = [rng.normal(size=(n, U_DIM)) for n in LENGTHS]
    cs = rng.normal(size=(len(LENGTHS), C_DIM))  # (N, C_DIM): read only by a conditional model
    return xs, us, cs


def trainer(m, vectorized=True, missing=False):
    config = TrainConfig(epochs=1, batch_size=2, eval_batch_size=2, vectorized=vectorized, seed=0)
    return Trainer(m, config, split(1, missing), split(2, missing), log_det_per_step=float(LOG_STD.sum()),
                   x_log_std=LOG_STD)


@pytest.mark.parametrize("family, guide", VARIANTS + [("lgssm", "dks")])
@pytest.mark.parametrize("missing", [False, True])
def test_validation_of_a_vectorized_trainer_equals_the_per_step_bound(family, guide, missing):
    m = tiny(family, U_DIM, guide, missing=missing)
    t = trainer(m, vectorized=True, missing=missing)
    pyro.set_rng_seed(11)
    got = t.validate()
    xs, us, cs = split(2, missing)
    pyro.set_rng_seed(11)
    want = evaluate(m, xs, us, float(LOG_STD.sum()), batch_size=2, cs=cs, x_log_std=LOG_STD, vectorized=False)
    assert got.keys() == want.keys()
    assert got["num_steps"] == want["num_steps"] == sum(LENGTHS)
    assert got["num_sequences"] == want["num_sequences"] == len(LENGTHS)
    for key in ("neg_elbo_per_step", "recon_per_step", "kl_per_step"):
        assert math.isfinite(want[key])
        assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-9), key


class SiteNames(Messenger):
    """Records the name of every sample site that runs under it."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def _postprocess_message(self, msg):
        if msg["type"] == "sample":
            self.names.add(msg["name"])


def site_names(m, vectorized):
    """The sample sites of one run of the guide and the model replayed on it, in the given form, on a ragged batch."""
    model, guide = m.programs(vectorized=vectorized)
    batch = collate([torch.from_numpy(x) for x in split(2)[0]], [torch.from_numpy(u) for u in split(2)[1]])
    with SiteNames() as seen:
        guide_trace = poutine.trace(guide).get_trace(batch, 1.0)
        poutine.replay(model, trace=guide_trace)(batch, 1.0)
    return seen.names


@pytest.mark.parametrize("family", ["dmm", "vrnn", "vrae", "vae", "storn", "srnn", "rssm", "kvae",
                                    pytest.param("dsae", marks=pytest.mark.slow)])  # dsae: 4 s on a shared core
def test_a_vectorized_trainer_runs_no_per_step_program(family):
    """Training, validation and the latent diagnostics of a vectorized trainer: every sample site that
    runs is one of the vectorized programs' (the per-step programs have sites z_t or x_t of their own)."""
    m = tiny(family, U_DIM, "dks")
    per_step_only = site_names(m, False) - site_names(m, True)
    assert per_step_only  # the per-step programs are told apart by their sites
    with SiteNames() as seen:
        rows = trainer(m, vectorized=True).fit(progress=False)
    assert len(rows) == 1 and math.isfinite(rows[0]["valid_neg_elbo_per_step"])
    assert seen.names and not seen.names & per_step_only
