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

Two programs compute the same log p(x | u): the per-step ``model`` (one site ``x_t`` per step, the
filter step by step; what ``generate`` runs unconditioned) and ``model_vectorized`` (training by
default, ``evaluate(vectorized=True)``), ONE site ``"x"`` scored by ``pyro.distributions.GaussianHMM``
(:meth:`LGSSM.marginal`), a parallel scan over time (the only loop over steps left is the controls'
deterministic response, one small matmul per step). Every batch takes the
GaussianHMM path in the vectorized program: padded steps and missing entries become observations
without information (see :meth:`LGSSM.marginal`), so no case falls back to the step-by-step filter.

Missing entries (a batch's ``obs_mask``) are handled exactly: the filter conditions on the observed
entries only and the score is the marginal density of the observed entries
(``_observation_matrices``), so ``impute`` gives the Kalman smoother's posterior mean and variance of
the missing entries.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn

from dvae.data.batch import SequenceBatch
from dvae.models.base import DynamicalVAE, ModelConfig, fill_imputed

JITTER = 1e-4


def _cholesky(M: torch.Tensor) -> torch.Tensor:
    """The Cholesky factor of a covariance this model built positive definite, without the error check
    that reads the result back to the host (``cholesky_ex``)."""
    return torch.linalg.cholesky_ex(M).L


class KalmanMarginal(dist.GaussianHMM):
    """The LGSSM's p(x_{0:T-1} | u) (see :meth:`LGSSM.marginal`): Pyro's GaussianHMM of x - ``offset``
    (the observations' mean given the controls, (B, T, x_dim)), with the per-step terms
    log p(x_t | x_{<t}, u) (B, T) that ``dvae.infer.elbo_terms`` reports, from ``step_log_prob`` (the
    step-by-step filter): GaussianHMM scores the whole path at once."""

    def __init__(self, *args, offset: torch.Tensor, step_log_prob=None, **kwargs):
        super().__init__(*args, duration=offset.shape[-2], **kwargs)
        self.offset = offset
        self._step_log_prob = step_log_prob

    def expand(self, batch_shape, _instance=None):
        new = super().expand(batch_shape, self._get_checked_instance(KalmanMarginal, _instance))
        new.offset = self.offset.expand(new.batch_shape + new.event_shape)
        new._step_log_prob = self._step_log_prob
        return new

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return super().log_prob(value - self.offset)  # (B,)

    def rsample(self, sample_shape=torch.Size()):
        return super().rsample(sample_shape) + self.offset

    def step_log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log p(x_t | x_{<t}, u) of every step (B, T), zero on padded steps; sums to ``log_prob(value)``."""
        if self._step_log_prob is None or value.shape[:-2] != self.offset.shape[:-2]:
            raise NotImplementedError("KalmanMarginal gives per-step terms only at its own batch shape")
        return self._step_log_prob(value)


def _covariance(raw_tril: torch.Tensor) -> torch.Tensor:
    """A positive-definite matrix L L^T + jitter I from an unconstrained square matrix."""
    L = torch.tril(raw_tril, -1) + torch.diag_embed(nn.functional.softplus(torch.diagonal(raw_tril)))
    return L @ L.T + JITTER * torch.eye(len(L), device=L.device, dtype=L.dtype)


class LGSSM(DynamicalVAE):
    name = "lgssm"
    sample_broadcast = True  # its per-step programs broadcast over sample dims left of (B, ...)
    state_scale = False  # its observation noise is the system's R
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
    # Two exact computations of log p(x | u), measured equal (tests/models/test_lgssm.py):
    # - the time-vectorized program (training, and evaluation with ``vectorized=True``) scores the whole
    #   batch as ONE site through ``pyro.distributions.GaussianHMM`` (:meth:`marginal`), a parallel scan
    #   over time;
    # - the per-step program, the smoother and the per-step terms run the filter below step by step
    #   (``_forward``): generation (the program run unconditioned) needs one site per step.
    # Neither checks a factorisation's success (``cholesky_ex``, no per-step host sync): a covariance that
    # is not positive definite gives a non-finite score, which the trainer treats as a faulty update.
    def _predict_state(self, m, P, u_prev, params):
        """One step of the latent dynamics: (B, z), (B, z, z) -> the prior of the next state."""
        A, Bm, _, Q, *_ = params
        m = m @ A.T + (u_prev @ Bm.T if u_prev is not None else 0.0)
        return m, A @ P @ A.T + Q

    @staticmethod
    def _observation_matrices(params, obs_mask):
        """C and R, or with ``obs_mask`` (..., x) bool their versions (..., x, z), (..., x, x) that see only
        the observed entries: the rows of C of a missing entry are zero, and its block of R is decoupled
        with variance 1 / (2 pi). A missing entry, held at 0 in x, is then N(0; 0, 1 / (2 pi)), whose log
        density is exactly 0: the density of the zero-filled x is the marginal density of the observed
        entries, and the gain gives the missing entries no weight (the exact conditional)."""
        _, _, C, _, R, _, _ = params
        if obs_mask is None:
            return C, R
        o = obs_mask.to(C.dtype)  # (..., x)
        C_o = o[..., None] * C  # (..., x, z)
        R_o = o[..., None] * R * o[..., None, :] + torch.diag_embed((1 - o) / (2 * math.pi))  # (..., x, x)
        return C_o, R_o

    @staticmethod
    def _observe(m, P, params, obs_mask=None):
        """The predictive of x_t: mean (B, x), the Cholesky factor of its covariance (B, x, x), and the
        gain (B, z, x); with ``obs_mask`` (B, x), of the observed entries (see ``_observation_matrices``)."""
        C, R = LGSSM._observation_matrices(params, obs_mask)
        S = C @ P @ C.transpose(-1, -2) + R
        L = _cholesky(0.5 * (S + S.transpose(-1, -2)))  # (B, x, x)
        K = torch.cholesky_solve(C @ P, L).transpose(-1, -2)  # P C^T S^{-1}: S symmetric
        x_mean = m @ C.T if C.dim() == 2 else (m[..., None, :] @ C.transpose(-1, -2))[..., 0, :]  # (B, x)
        return x_mean, L, K

    @staticmethod
    def _update(m, P, K, x, x_mean, observed, params, obs_mask=None):
        """The filter update with x_t where ``observed`` (B,); unobserved steps keep the prediction."""
        C, R = LGSSM._observation_matrices(params, obs_mask)
        I = torch.eye(m.shape[-1], device=m.device, dtype=m.dtype)
        m_new = m + ((x - x_mean)[:, None, :] @ K.transpose(-1, -2))[:, 0]
        IKC = I - K @ C
        P_new = IKC @ P @ IKC.transpose(-1, -2) + K @ R @ K.transpose(-1, -2)  # Joseph form
        keep = observed[:, None]
        return torch.where(keep, m_new, m), torch.where(keep[..., None], P_new, P)

    def _forward(self, batch: SequenceBatch, params, sample=None, log_probs: bool = False):
        """The Kalman filter over ``batch``, step by step. ``sample(t, predictive)`` (the per-step program's
        site) returns the x_t (B, x) to update with, observed or drawn; without it the filter reads
        ``batch.x``. Returns the predicted and the filtered moments of every step, two lists of
        (m (B, z), P (B, z, z)), and with ``log_probs`` log p(x_t | x_{<t}, u) (B, T), zero on padded
        steps (else None)."""
        Bsz, T = batch.batch_size, batch.num_steps
        m, P = params[5].expand(Bsz, -1), params[6].expand(Bsz, -1, -1)  # (B, z), (B, z, z)
        pred, filt, log_p = [], [], []
        for t in (pyro.markov(range(T)) if sample is not None else range(T)):
            if t > 0:
                m, P = self._predict_state(m, P, batch.step_u(t - 1), params)
            pred.append((m, P))
            obs_mask_t = batch.step_obs_mask(t)
            x_mean, L, K = self._observe(m, P, params, obs_mask_t)
            x = batch.x[:, t]
            if sample is not None or log_probs:
                predictive = dist.MultivariateNormal(x_mean, scale_tril=L).mask(batch.mask[:, t])
                x = x if sample is None else sample(t, predictive)
                if log_probs:
                    log_p.append(predictive.log_prob(x))  # (B,)
            m, P = self._update(m, P, K, x, x_mean, batch.mask[:, t], params, obs_mask_t)
            filt.append((m, P))
        return pred, filt, (torch.stack(log_p, 1) if log_probs else None)

    def model(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """p(x | u) exactly, one site per step: x_t from its one-step predictive, then the Kalman update.
        Returns the filtered means (B, T, z_dim)."""
        pyro.module("lgssm", self)
        with pyro.plate("sequences", batch.batch_size, dim=-1):
            def site(t, predictive):
                return pyro.sample(f"x_{t}", predictive, obs=batch.x[:, t])
            _, filt, _ = self._forward(batch, self.params(), sample=site)
        return torch.stack([m for m, _ in filt], 1)  # (B, T, z_dim)

    def guide(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """No latent sites: the model integrates z out exactly."""
        pyro.module("lgssm", self)

    def marginal(self, batch: SequenceBatch) -> "KalmanMarginal":
        """p(x_{0:T-1} | u) of every sequence as one :class:`KalmanMarginal` (a ``GaussianHMM`` with an
        observation offset; batch shape (B,), event shape (T, x_dim)), to score ``batch.x`` with every
        entry that is not observed (padding, missing) set to 0 (as ``model_vectorized`` does).

        The controls move the state's mean only: z_t = d_t + e_t with the deterministic response
        d_0 = m0, d_t = A d_{t-1} + B u_{t-1} (B, T, z) (one small matmul per step) and the zero-mean
        e_0 ~ N(0, P0), e_t = A e_{t-1} + w_t, so x_t - C d_t = C e_t + v_t is a homogeneous
        GaussianHMM over e, whose transition factors are shared by the batch. GaussianHMM's chain
        e_t = e_{t-1} M_t + w_t starts before the first step, so step 0 draws e_0 ~ N(0, P0) from
        nothing (M_0 = 0: the dummy state before it integrates to 1). Padded steps and missing entries
        are observations that carry no information: the rows of C of every entry not observed are zero
        and its noise is N(0, 1 / (2 pi)), at the value 0 (``_observation_matrices``; the offset is 0
        there too), so each contributes log 1 = 0 to the density and nothing to the state, exactly the
        per-step program's masked sites and skipped updates."""
        A, Bm, C, Q, R, m0, P0 = params = self.params()
        Bsz, T, z = batch.batch_size, batch.num_steps, A.shape[0]
        drive = None if batch.u is None else batch.u[:, :-1] @ Bm.T  # (B, T - 1, z): B u_{t-1}
        d = [m0 if drive is None else m0.expand(Bsz, z)]
        for t in range(1, T):
            d.append(d[-1] @ A.T + (0.0 if drive is None else drive[:, t - 1]))
        d = torch.stack(d, -2)  # (T, z) or (B, T, z): E[z_t | u]
        observed = self._observed_entries(batch)  # (B, T, x)
        offset = torch.where(observed, d @ C.T, C.new_zeros(()))  # (B, T, x): E[x_t | u] where observed
        M = torch.cat([torch.zeros_like(A)[None], A.T.expand(T - 1, z, z)], 0)  # (T, z, z): (old, new)
        noise_tril = torch.cat([_cholesky(P0)[None], _cholesky(Q).expand(T - 1, z, z)], 0)  # (T, z, z)
        C_o, R_o = self._observation_matrices(params, observed)  # (B, T, x, z), (B, T, x, x)
        zeros = m0.new_zeros(())
        return KalmanMarginal(
            dist.MultivariateNormal(zeros.expand(z), scale_tril=torch.eye(z, dtype=A.dtype, device=A.device)),
            M, dist.MultivariateNormal(zeros.expand(T, z), scale_tril=noise_tril),
            C_o.transpose(-1, -2), dist.MultivariateNormal(zeros.expand_as(offset), scale_tril=_cholesky(R_o)),
            offset=offset, step_log_prob=lambda x: self._forward(batch._replace(x=x), params, log_probs=True)[2])

    @staticmethod
    def _observed_entries(batch: SequenceBatch) -> torch.Tensor:
        """(B, T, x) bool: the entries that are observed, on real steps."""
        real = batch.mask[..., None].expand_as(batch.x)
        return real if batch.obs_mask is None else real & batch.obs_mask

    def _zero_filled(self, batch: SequenceBatch) -> torch.Tensor:
        """x (B, T, x_dim) with every entry that is not observed (padding, missing) at 0, as
        :meth:`marginal` scores it."""
        return torch.where(self._observed_entries(batch), batch.x, batch.x.new_zeros(()))

    def model_vectorized(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """The same p(x | u) as ONE site ``"x"`` (event shape (T, x_dim)), scored by GaussianHMM
        (:meth:`marginal`)."""
        pyro.module("lgssm", self)
        with pyro.plate("sequences", batch.batch_size, dim=-1):
            pyro.sample("x", self.marginal(batch), obs=self._zero_filled(batch))

    guide_vectorized = guide

    @torch.no_grad()
    def smooth(self, batch: SequenceBatch):
        """Rauch-Tung-Striebel smoothed marginals of z: loc (B, T, z), cov (B, T, z, z).
        Padded steps are treated as unobserved, which leaves the real steps' marginals unchanged."""
        params = self.params()
        pred, filt, _ = self._forward(batch, params)
        A = params[0]
        ms, Ps = [filt[-1][0]], [filt[-1][1]]
        for t in range(batch.num_steps - 2, -1, -1):
            mf, Pf = filt[t]
            mp, Pp = pred[t + 1]
            G = torch.linalg.solve_ex(Pp, A @ Pf).result.transpose(-1, -2)  # Pf A^T Pp^{-1}
            ms.insert(0, mf + ((ms[0] - mp)[:, None, :] @ G.transpose(-1, -2))[:, 0])
            Ps.insert(0, Pf + G @ (Ps[0] - Pp) @ G.transpose(-1, -2))
        return torch.stack(ms, 1), torch.stack(Ps, 1)

    @torch.no_grad()
    def impute(self, batch: SequenceBatch, num_samples: int = 0):
        """The missing entries, exactly: their conditional mean and variance given every observed entry.

        With (m_t, P_t) the RTS marginal of z_t, x_t = C z_t + v_t, and the observed entries o of the
        same step informing the missing ones m through the noise (R need not be diagonal):
        E[x_m] = C_m m_t + J (x_o - C_o m_t) and Var = (C_m - J C_o) P_t (.)^T + R_mm - J R_om with
        J = R_mo R_oo^{-1}. ``lo``/``hi``: the 5% / 95% quantiles. At observed entries ``mean`` is
        C m_t (variance C P_t C^T + R). ``num_samples`` is unused (nothing is sampled)."""
        batch = self.check_batch(batch)
        loc, cov = self.smooth(batch)  # (B, T, z), (B, T, z, z)
        _, _, C, _, R, _, _ = self.params()
        o = torch.ones_like(batch.x) if batch.obs_mask is None else batch.obs_mask.to(batch.x.dtype)  # (B, T, x)
        R_o = o[..., :, None] * R * o[..., None, :] + torch.diag_embed(1 - o)  # R_oo, identity on the missing
        J = (R * o[..., None, :]) @ torch.linalg.inv(R_o) * o[..., None, :]  # (B, T, x, x): R_.o R_oo^{-1}
        J = J * (1 - o)[..., :, None]  # rows of the missing entries only
        H = (torch.eye(len(R), dtype=R.dtype, device=R.device) - J) @ C  # (B, T, x, z)
        mean = (H @ loc[..., None])[..., 0] + (J @ batch.x[..., None])[..., 0]  # (B, T, x)
        var = torch.diagonal(H @ cov @ H.transpose(-1, -2) + R - J @ R, dim1=-2, dim2=-1)
        sd = var.clamp(min=0).sqrt()
        z90 = 1.6448536269514722  # the 95% quantile of N(0, 1)
        return fill_imputed(batch, mean, mean - z90 * sd, mean + z90 * sd)

    @torch.no_grad()
    def set_params(self, A, B, C, Q, R, m0, P0) -> "LGSSM":
        """Set the parameters to given matrices (array-likes, e.g. a known system's): returns self.
        Q, R and P0 must exceed the jitter (1e-4 I) that the parameterisation adds."""
        like = dict(dtype=self.A.dtype, device=self.A.device)

        def raw(M):
            M = torch.as_tensor(M, **like)
            M = M - JITTER * torch.eye(len(M), **like)
            L = torch.linalg.cholesky(M)
            d = torch.diagonal(L)
            return torch.tril(L, -1) + torch.diag(d + torch.log(-torch.expm1(-d)))  # softplus^{-1} on the diagonal
        for name, value in (("A", A), ("B", B), ("C", C), ("m0", m0)):
            getattr(self, name).copy_(torch.as_tensor(value, **like).reshape(getattr(self, name).shape))
        self.raw_Q.copy_(raw(Q)), self.raw_R.copy_(raw(R)), self.raw_P0.copy_(raw(P0))
        return self

    @torch.no_grad()
    def encode(self, batch: SequenceBatch, num_samples: int = 1):
        """Samples of each z_t from its smoothed marginal (S, B, T, z_dim), with ``loc`` and ``cov``."""
        loc, cov = self.smooth(self.check_batch(batch))
        cov = 0.5 * (cov + cov.transpose(-1, -2))
        z = dist.MultivariateNormal(loc, cov).sample((num_samples,))
        return {"z": z, "loc": loc, "cov": cov}

    @torch.no_grad()
    def reconstruct(self, batch: SequenceBatch, num_samples: int = 16):
        """C z under smoothed samples of z: ``{"x_mean": (S, B, T, x_dim)}``."""
        return {"x_mean": self.encode(batch, num_samples)["z"] @ self.C.T}

    # --- the contract: the same system, step by step (prediction, the world model, the particle filter) --
    def initial_state(self, n: int, c=None):
        """p(z_0) = N(m0, P0); the state is z_t alone."""
        *_, m0, P0 = self.params()
        return {}, dist.MultivariateNormal(m0.expand(n, -1), scale_tril=_cholesky(P0))

    def transition_step(self, state, x, u=None, obs_mask=None):
        """p(z_t | z_{t-1}, u_{t-1}) = N(A z_{t-1} + B u_{t-1}, Q)."""
        A, Bm, _, Q, *_ = self.params()
        loc = state["z"] @ A.T + (u @ Bm.T if u is not None else 0.0)  # (n, z_dim)
        return {}, dist.MultivariateNormal(loc, scale_tril=_cholesky(Q))

    def emission(self, state, obs_mask=None):
        """p(x_t | z_t) = N(C z_t, R); with ``obs_mask`` (n, x_dim) the density of the observed entries
        (missing entries, held at 0, score exactly 0: ``_observation_matrices``)."""
        C, R = self._observation_matrices(self.params(), obs_mask)
        z = state["z"]
        loc = z @ C.T if C.dim() == 2 else (C @ z[..., None])[..., 0]  # (n, x_dim)
        return dist.MultivariateNormal(loc, scale_tril=_cholesky(R))

    @torch.no_grad()
    def posterior_last(self, batch: SequenceBatch):
        """z at each sequence's last real step drawn from its smoothed (there: filtered) marginal, exactly."""
        batch = self.check_batch(batch)
        loc, cov = self.smooth(batch)  # (B, T, z), (B, T, z, z)
        rows, last = torch.arange(batch.batch_size, device=loc.device), (batch.lengths - 1).clamp(min=0)
        cov_last = cov[rows, last]
        z = dist.MultivariateNormal(loc[rows, last], 0.5 * (cov_last + cov_last.transpose(-1, -2))).sample()
        return {"z": z}, batch.x[rows, last]
