"""The linear-Gaussian state-space model with controls: the exact baseline of the model zoo.

    z_0 ~ N(m0, P0)
    z_t = A z_{t-1} + B u_{t-1} + w_t,   w_t ~ N(0, Q)
    x_t = C z_t + v_t,                   v_t ~ N(0, R)

The latents are integrated out exactly by Kalman filtering, so the Pyro program has no latent site:
it is the prediction-error decomposition of the marginal,

    x_t ~ N(C m_{t|t-1}, C P_{t|t-1} C^T + R)      then the filter is updated with x_t,

which both scores observed data exactly (log p(x | u) = sum_t log p(x_t | x_{<t}, u)) and, run
unconditioned, samples the marginal exactly. Its "ELBO" is the exact log-likelihood, so fitting it by
SVI is maximum likelihood, and ``dvae eval`` reports it as ``nll_exact_per_step``. ``encode`` gives
the Rauch-Tung-Striebel smoothed marginals of z. Covariances are parameterised by Cholesky factors.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn

from dvae.data.batch import SequenceBatch
from dvae.models.base import DynamicalVAE, ModelConfig

JITTER = 1e-4


def _covariance(raw_tril: torch.Tensor) -> torch.Tensor:
    """A positive-definite matrix L L^T + jitter I from an unconstrained square matrix."""
    L = torch.tril(raw_tril, -1) + torch.diag_embed(nn.functional.softplus(torch.diagonal(raw_tril)))
    return L @ L.T + JITTER * torch.eye(len(L), device=L.device, dtype=L.dtype)


class LGSSM(DynamicalVAE):
    name = "lgssm"
    exact = True  # its bound is the exact log-likelihood

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        c = config
        if c.likelihood != "gaussian":
            raise ValueError("the lgssm model needs continuous data (Gaussian observations)")
        z, x = c.z_dim, c.x_dim
        self.A = nn.Parameter(0.9 * torch.eye(z))
        self.B = nn.Parameter(torch.zeros(z, c.u_dim))
        self.C = nn.Parameter(torch.randn(x, z) / z ** 0.5)
        inv_sp = lambda v: torch.log(torch.expm1(torch.tensor(v)))  # softplus^{-1}
        self.raw_Q = nn.Parameter(torch.eye(z) * inv_sp(0.3))
        self.raw_R = nn.Parameter(torch.eye(x) * inv_sp(0.5))
        self.raw_P0 = nn.Parameter(torch.eye(z) * inv_sp(1.0))
        self.m0 = nn.Parameter(torch.zeros(z))

    def params(self):
        """(A, B, C, Q, R, m0, P0) as tensors."""
        return self.A, self.B, self.C, _covariance(self.raw_Q), _covariance(self.raw_R), self.m0, _covariance(self.raw_P0)

    # --- the filter --------------------------------------------------------------------------------
    def _predict_state(self, m, P, u_prev, params):
        """One step of the latent dynamics: (B, z), (B, z, z) -> the prior of the next state."""
        A, Bm, _, Q, *_ = params
        m = m @ A.T + (u_prev @ Bm.T if u_prev is not None else 0.0)
        return m, A @ P @ A.T + Q

    @staticmethod
    def _observe(m, P, params):
        """The predictive of x_t: mean (B, x), covariance (B, x, x), and the gain (B, z, x)."""
        _, _, C, _, R, _, _ = params
        S = C @ P @ C.T + R
        S = 0.5 * (S + S.transpose(-1, -2))
        K = torch.linalg.solve(S, C @ P).transpose(-1, -2)  # P C^T S^{-1}: S symmetric
        return m @ C.T, S, K

    @staticmethod
    def _update(m, P, K, x, x_mean, observed, params):
        """The filter update with x_t where ``observed`` (B,); unobserved steps keep the prediction."""
        _, _, C, _, R, _, _ = params
        I = torch.eye(m.shape[-1], device=m.device, dtype=m.dtype)
        m_new = m + ((x - x_mean)[:, None, :] @ K.transpose(-1, -2))[:, 0]
        IKC = I - K @ C
        P_new = IKC @ P @ IKC.transpose(-1, -2) + K @ R @ K.transpose(-1, -2)  # Joseph form
        keep = observed[:, None]
        return torch.where(keep, m_new, m), torch.where(keep[..., None], P_new, P)

    def model(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """p(x | u) exactly: x_t from its one-step predictive, then the Kalman update.
        Returns the filtered means (B, T, z_dim)."""
        pyro.module("lgssm", self)
        params = self.params()
        Bsz, T = batch.batch_size, batch.num_steps
        m = self.m0.expand(Bsz, -1)  # (B, z_dim)
        P = params[-1].expand(Bsz, -1, -1)  # (B, z_dim, z_dim)
        means = []
        with pyro.plate("sequences", Bsz, dim=-1):
            for t in pyro.markov(range(T)):
                if t > 0:
                    m, P = self._predict_state(m, P, self._u(batch, t - 1), params)
                x_mean, S, K = self._observe(m, P, params)
                x = pyro.sample(f"x_{t}", dist.MultivariateNormal(x_mean, S).mask(batch.mask[:, t]),
                                obs=batch.x[:, t])
                m, P = self._update(m, P, K, x, x_mean, batch.mask[:, t], params)
                means.append(m)
        return torch.stack(means, 1)  # (B, T, z_dim)

    def guide(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """No latent sites: the model integrates z out exactly."""
        pyro.module("lgssm", self)

    # the per-step program is already the fast one: one filter step per time step, no latent sites
    model_vectorized = model
    guide_vectorized = guide

    @torch.no_grad()
    def smooth(self, batch: SequenceBatch):
        """Rauch-Tung-Striebel smoothed marginals of z: loc (B, T, z), cov (B, T, z, z).
        Padded steps are treated as unobserved, which leaves the real steps' marginals unchanged."""
        params = self.params()
        Bsz, T = batch.batch_size, batch.num_steps
        m, P = self.m0.expand(Bsz, -1), params[-1].expand(Bsz, -1, -1)
        filt, pred = [], []
        for t in range(T):
            if t > 0:
                m, P = self._predict_state(m, P, self._u(batch, t - 1), params)
            pred.append((m, P))
            x_mean, S, K = self._observe(m, P, params)
            m, P = self._update(m, P, K, batch.x[:, t], x_mean, batch.mask[:, t], params)
            filt.append((m, P))
        A = params[0]
        ms, Ps = [filt[-1][0]], [filt[-1][1]]
        for t in range(T - 2, -1, -1):
            mf, Pf = filt[t]
            mp, Pp = pred[t + 1]
            G = torch.linalg.solve(Pp, A @ Pf).transpose(-1, -2)  # Pf A^T Pp^{-1}
            ms.insert(0, mf + ((ms[0] - mp)[:, None, :] @ G.transpose(-1, -2))[:, 0])
            Ps.insert(0, Pf + G @ (Ps[0] - Pp) @ G.transpose(-1, -2))
        return torch.stack(ms, 1), torch.stack(Ps, 1)

    @torch.no_grad()
    def encode(self, batch: SequenceBatch, num_samples: int = 1):
        """Samples of each z_t from its smoothed marginal (S, B, T, z_dim), with ``loc`` and ``cov``."""
        loc, cov = self.smooth(self._check(batch))
        cov = 0.5 * (cov + cov.transpose(-1, -2))
        z = dist.MultivariateNormal(loc, cov).sample((num_samples,))
        return {"z": z, "loc": loc, "cov": cov}

    @torch.no_grad()
    def reconstruct(self, batch: SequenceBatch, num_samples: int = 16):
        """C z under smoothed samples of z: ``{"x_mean": (S, B, T, x_dim)}``."""
        return {"x_mean": self.encode(batch, num_samples)["z"] @ self.C.T}

    def _predict_samples(self, context: SequenceBatch, u_future, horizon: int):
        params = self.params()
        A, Bm, C, Q, R, _, _ = params
        loc, cov = self.smooth(context)
        N = context.batch_size
        last = (context.lengths - 1).clamp(min=0)
        rows = torch.arange(N, device=loc.device)
        cov_last = cov[rows, last]
        z = dist.MultivariateNormal(loc[rows, last], 0.5 * (cov_last + cov_last.transpose(-1, -2))).sample()
        noise_z, noise_x = dist.MultivariateNormal(torch.zeros_like(z), Q), None
        xs, means, zs = [], [], []
        for k in range(horizon):
            z = z @ A.T + (u_future[:, k] @ Bm.T if u_future is not None else 0.0) + noise_z.sample()
            x_mean = z @ C.T
            noise_x = noise_x or dist.MultivariateNormal(torch.zeros_like(x_mean), R)
            xs.append(x_mean + noise_x.sample()), means.append(x_mean), zs.append(z)
        return {"x": torch.stack(xs, 1), "x_mean": torch.stack(means, 1), "z": torch.stack(zs, 1)}  # (N, H, .)
