"""Checks shared by the tests of the families written on the state-space contract (STORN, SRNN, RSSM):
the by-hand densities of a hand computation, and the consumers of the contract run against the
contract stepped by hand."""

import math

import numpy as np
import pyro
import torch
from pyro import poutine

from dvae.data import Normalizer, collate
from dvae.infer import elbo_terms
from dvae.infer.smc import model_particle_filter
from dvae.models import ModelConfig, build_model
from dvae.world_model import WorldModel

B, T, X, U, Z = 2, 3, 2, 1, 2  # the tiny case of the hand computations


def tiny(family, u_dim=U, dtype=torch.float64, **kw):
    torch.manual_seed(0)
    m = build_model(ModelConfig(family, x_dim=X, u_dim=u_dim, z_dim=Z, rnn_dim=5, transition_dim=6,
                                emission_dim=7, **kw))
    return m.to(dtype)


def tiny_batch(u_dim=U, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(T, X, generator=g, dtype=dtype) for _ in range(B)]
    us = [torch.randn(T, u_dim, generator=g, dtype=dtype) for _ in range(B)] if u_dim else None
    return collate(xs, us)


def normal_log_pdf(v, loc, scale):
    """log N(v; loc, diag(scale^2)) summed over the last dim, written out."""
    return (-0.5 * ((v - loc) / scale) ** 2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)).sum(-1)


def normal_kl(mq, sq, mp, sp):
    """KL(N(mq, sq^2) || N(mp, sp^2)) summed over the last dim, written out."""
    return (torch.log(sp / sq) + (sq ** 2 + (mq - mp) ** 2) / (2 * sp ** 2) - 0.5).sum(-1)


def draws(seed, shape, dtype=torch.float64):
    """The standard normals a guide draws at each step under ``seed``, one (B, z_dim) block a step."""
    pyro.set_rng_seed(seed)
    return [torch.empty(shape, dtype=dtype).normal_() for _ in range(T)]


def assert_elbo_matches(m, batch, seed, log_lik, kl, log_prior):
    """The per-step programs' ELBO terms and the model trace's latent log densities equal the hand
    computation: ``log_lik``, ``kl``, ``log_prior`` lists of T tensors (B,)."""
    pyro.set_rng_seed(seed)
    terms = elbo_terms(m.model, m.guide, batch)
    torch.testing.assert_close(terms["log_lik"], torch.stack(log_lik, 1), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(terms["kl"], torch.stack(kl, 1), rtol=1e-10, atol=1e-10)
    pyro.set_rng_seed(seed)
    guide_trace = poutine.trace(m.guide).get_trace(batch)
    model_trace = poutine.trace(poutine.replay(m.model, trace=guide_trace)).get_trace(batch)
    for t in range(T):
        torch.testing.assert_close(model_trace.nodes[f"z_{t}"]["fn"].log_prob(guide_trace.nodes[f"z_{t}"]["value"]),
                                   log_prior[t], rtol=1e-10, atol=1e-10)
    assert all(torch.isfinite(v).all() for v in terms.values())


def check_generate_is_the_contract_by_hand(m, u_dim=U, steps=5, n=3):
    """``generate`` under a seed equals the contract run step by step by hand under the same seed."""
    u = torch.randn(steps, u_dim, dtype=torch.float64) if u_dim else None
    pyro.set_rng_seed(4)
    g = m.generate(steps, u=u, num_samples=n)
    pyro.set_rng_seed(4)
    with torch.no_grad():
        state, p = m.initial_state(n)
        xs, zs = [], []
        for t in range(steps):
            if t:
                state, p = m.transition_step(state, xs[-1], None if u is None else u[t - 1].expand(n, u_dim))
            state = m.with_latent(state, p.sample())
            xs.append(m.emission(state).sample()), zs.append(state["z"])
    torch.testing.assert_close(g["x"], torch.stack(xs, 1), rtol=0, atol=0)
    torch.testing.assert_close(g["z"], torch.stack(zs, 1), rtol=0, atol=0)


def check_one_particle_filter_is_the_prior_path_by_hand(m, batch):
    """With one particle (never resampled) the filter's log Z is sum_t log p(x_t | s_t) along one draw of
    the model's own dynamics given the observed x: the contract stepped by hand with the same seed."""
    pyro.set_rng_seed(6)
    got = model_particle_filter(m, batch, 1)
    pyro.set_rng_seed(6)
    with torch.no_grad():
        state, p = m.initial_state(batch.batch_size)
        state = m.with_latent(state, p.sample())
        want = m.emission(state).log_prob(batch.x[:, 0])
        for t in range(1, batch.num_steps):
            state, p = m.transition_step(state, batch.x[:, t - 1], batch.step_u(t - 1))
            state = m.with_latent(state, p.sample())
            want = want + torch.where(batch.mask[:, t], m.emission(state).log_prob(batch.x[:, t]), 0.0)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    many = model_particle_filter(m, batch, 200)
    assert many.shape == (batch.batch_size,) and torch.isfinite(many).all()


def check_predict_and_world_model_run(m, u_dim=U):
    """Open-loop prediction and the world model run through the contract, with the shapes they promise,
    and a world model reset on a history starts where ``posterior_last`` leaves it."""
    m = m.float()
    batch = tiny_batch(u_dim, torch.float32)
    u_future = torch.randn(B, 4, u_dim) if u_dim else None
    p = m.predict(batch, u_future, horizon=4, num_samples=6)
    assert p["x"].shape == (6, B, 4, X) and p["z"].shape == (6, B, 4, Z) and torch.isfinite(p["x_mean"]).all()
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((8, X)).astype(np.float32)]
    us = [rng.standard_normal((8, u_dim)).astype(np.float32)] if u_dim else None
    world = WorldModel(m, Normalizer.fit(xs, us))
    first = world.reset(xs[0][:5], None if us is None else us[0][:4], num_samples=3)
    assert first.shape == (3, X)
    nxt = world.step(torch.zeros(3, u_dim) if u_dim else None)
    assert nxt.shape == (3, X) and torch.isfinite(nxt).all()
