"""KVAE, the Kalman variational autoencoder (Fraccaro, Kamronn, Paquet and Winther 2017), with controls.

Two layers of latents: per-frame codes a_t, and the state s_t of a linear-Gaussian system over them
(the paper's z_t; here s_t, since the contract's ``"z"`` is the code a_t, what the guide draws)::

    s_0 ~ N(m0, P0)
    alpha_t = softmax(W h_t),  h_t = f(h_{t-1}, a_{t-1})    mixture weights from an RNN over a_{<t} (h_0 learned)
    (A_t, B_t, C_t) = sum_k alpha_t[k] (A_k, B_k, C_k)      K learned systems, mixed
    s_t = A_t s_{t-1} + B_t u_{t-1} + w_t,  w_t ~ N(0, Q)   t >= 1
    a_t = C_t s_t + v_t,                    v_t ~ N(0, R)
    x_t ~ Emitter(a_t)                                       p(x_t | a_t): Gaussian, Bernoulli or categorical

Given a_{<t}, the matrices up to step t are known, so s is integrated out exactly by the Kalman filter:
p(a | u) = prod_t p(a_t | a_{<t}, u_{<t}) with p(a_t | a_{<t}, u) = N(C_t m_{t|t-1}, C_t P_{t|t-1} C_t^T + R)
(the prediction-error decomposition along a; :func:`kalman_path`). Q, R, P0 are learned (Cholesky
factors, plus 1e-4 I).

Guide: q(a_t | x_t) = N(Encoder(x_t)), one frame at a time (the paper's recognition network), so
q(a | x) = prod_t q(a_t | x_t). On images (``ModelConfig.frame_shape``) the encoder reads each frame
through a conv net (``FrameEncoder``) and the emitter is a transposed-conv net (``ConvEmitter``), as the
pixel DMM's. The objective (per the paper, docs/maths.md "KVAE") is

    E_q(a | x)[ sum_t log p(x_t | a_t) - log q(a | x) + log p(a | u) ]

with log p(a | u) exact at the drawn a; each step's KL column is the one-draw estimate
log q(a_t | x_t) - log p(a_t | a_{<t}, u) (no closed form between a diagonal and the Kalman predictive).
The posterior of s given a draw of a is the Rauch-Tung-Striebel smoother over the mixed matrices
(:func:`kalman_smooth`; ``encode`` returns it).

The contract of :class:`~dvae.models.base.DynamicalVAE`: the state holds the RNN state ``"rec"``
(h_t), the Kalman belief of s_t (``"mean"`` (n, s_dim), ``"cov"`` (n, s_dim, s_dim)), step t's C_t
(``"C"``) and predictive (``"a_loc"``, ``"a_tril"``), and the code ``"z"`` = a_t. ``initial_state``
gives (m0, P0) and p(a_0); ``transition_step`` runs h_t = f(h_{t-1}, a_{t-1}), mixes (A_t, B_t, C_t)
and predicts s_t, giving p(a_t | a_{<t}, u_{<t}) (x_{t-1} is not read); ``with_latent`` updates the
belief with a_t (the Kalman update); ``emission`` is p(x_t | a_t); ``filter_step`` is the guide's
q(a_t | x_t). So ``generate``, ``predict``, the world model and the particle filter (over a, each
particle carrying its own Kalman belief) run unchanged.

Per-step and time-vectorized programs: ``model``/``guide`` have one site per step (the model's a_t a
``MultivariateNormal``); the vectorized ``"z"`` path is scored by :class:`KalmanPath` (the RNN over the
path in one multi-step call, the filter step by step) against the guide's :class:`FramePath` (one
encoder call); both guides draw the same normals in the same order.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn
from pyro import poutine

from dvae.data.batch import SequenceBatch
from dvae.models.base import DynamicalVAE, ModelConfig, observation_dist, repeat_batch
from dvae.models.paths import FlowPath, FlowStep, PriorPath
from dvae.models.state import State
from dvae.nn import ConvEmitter, Emitter, FrameEncoder, Recurrence, StepPosterior

JITTER = 1e-4


def _chol(M: torch.Tensor) -> torch.Tensor:
    """The Cholesky factor of a covariance built positive definite (symmetrised; no host read)."""
    return torch.linalg.cholesky_ex(0.5 * (M + M.transpose(-1, -2))).L


def _mix(alpha: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """sum_k alpha[..., k] M[k]: weights alpha (..., K) over K matrices M (K, p, q) -> (..., p, q)."""
    return torch.einsum("...k,kij->...ij", alpha, M)


def _mv(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Batched matrix-vector product: (..., p, q) @ (..., q) -> (..., p)."""
    return (M @ v[..., None])[..., 0]


def _gaussian_log_prob(value, loc, L):
    """log N(value; loc, L L^T) (..., d) -> (...), through the Cholesky factor L (..., d, d)."""
    y = torch.linalg.solve_triangular(L, (value - loc)[..., None], upper=False)[..., 0]  # L^{-1} (value - loc)
    log_det = torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    return -0.5 * (y * y).sum(-1) - log_det - 0.5 * value.shape[-1] * math.log(2 * math.pi)


# --- the Kalman filter over time-varying matrices (plain torch) --------------------------------------
def kalman_predictive(m, P, C, R):
    """p(a_t | a_{<t}) = N(C m, C P C^T + R): loc (n, a) and the Cholesky factor of its covariance (n, a, a)."""
    return _mv(C, m), _chol(C @ P @ C.transpose(-1, -2) + R)


def kalman_update(m, P, C, R, a, loc, L):
    """The belief of s_t after observing a_t (n, a), from the prediction (m, P) and its predictive
    (loc, L): gain K = P C^T S^{-1}, covariance in Joseph form."""
    K = torch.cholesky_solve(C @ P, L).transpose(-1, -2)  # (n, s, a): P C^T S^{-1}, S = L L^T symmetric
    I = torch.eye(m.shape[-1], dtype=m.dtype, device=m.device)
    IKC = I - K @ C
    return m + _mv(K, a - loc), IKC @ P @ IKC.transpose(-1, -2) + K @ R @ K.transpose(-1, -2)


def kalman_predict(m, P, A, Q, drive=None):
    """The belief of s_t from that of s_{t-1}: (A m + drive, A P A^T + Q); ``drive`` = B_t u_{t-1} (n, s) or None."""
    m = _mv(A, m) + (0.0 if drive is None else drive)
    return m, A @ P @ A.transpose(-1, -2) + Q


def kalman_path(a, A, C, Q, R, m0, P0, drive=None, mask=None, moments=True):
    """The Kalman filter along a path of codes: a (B, T, a_dim); A (B, T, s, s) (A[:, 0] unused), C
    (B, T, a, s), Q (s, s), R (a, a), m0 (s,), P0 (s, s), drive (B, T, s) = B_t u_{t-1} (drive[:, 0]
    unused) or None; mask (B, T) or None. A and C may also be functions of t giving A_t (B, s, s) and C_t
    (B, a, s), so that no (B, T, s, s) tensor is made (the KVAE mixes its matrices step by step when it
    only scores a path). ``moments=False``: the moments are not kept (None, None), so that without a
    gradient the memory does not grow with T.

    Returns log p(a_t | a_{<t}, u) (B, T) (zero on padded steps), and the predicted and filtered
    moments of every step, lists of (m (B, s), P (B, s, s)). On padded steps (trailing) the belief is
    frozen at the last real step's filtered one: neither predicted nor updated, so no real step depends
    on them, and hundreds of padded steps of a learned A_t with a spectral radius above 1 cannot grow it
    to inf (whose NaN reached the gradient through ``torch.where`` and stopped KVAE training on
    Nottingham). :func:`kalman_smooth` takes the same mask."""
    Bsz, T = a.shape[:2]
    m, P = m0.expand(Bsz, -1), P0.expand(Bsz, -1, -1)  # (B, s), (B, s, s)
    # per-step views by unbind, not A[:, t]: each indexing's backward fills a zero tensor of the whole
    # (B, T, ...) input, which made a backward pass quadratic in T
    A_at = A if callable(A) else A.unbind(1).__getitem__  # t -> A_t (B, s, s)
    C_at = C if callable(C) else C.unbind(1).__getitem__  # t -> C_t (B, a, s)
    a_t = a.unbind(1)  # T tensors (B, a)
    drive_t = (None,) * T if drive is None else drive.unbind(1)  # T tensors (B, s) or None
    log_p, pred, filt = [], [], []
    for t in range(T):
        keep = None if mask is None else mask[:, t, None]  # (B, 1): a real step
        if t > 0:
            m_new, P_new = kalman_predict(m, P, A_at(t), Q, drive_t[t])
            m, P = (m_new, P_new) if keep is None else (torch.where(keep, m_new, m), torch.where(keep[..., None], P_new, P))
        if moments:
            pred.append((m, P))
        C_t = C_at(t)
        loc, L = kalman_predictive(m, P, C_t, R)
        log_p.append(_gaussian_log_prob(a_t[t], loc, L))  # (B,)
        m_new, P_new = kalman_update(m, P, C_t, R, a_t[t], loc, L)
        m, P = (m_new, P_new) if keep is None else (torch.where(keep, m_new, m), torch.where(keep[..., None], P_new, P))
        if moments:
            filt.append((m, P))
    log_p = torch.stack(log_p, 1)  # (B, T)
    if mask is not None:
        log_p = torch.where(mask, log_p, log_p.new_zeros(()))
    return (log_p, pred, filt) if moments else (log_p, None, None)


def kalman_smooth(A, pred, filt, mask=None):
    """Rauch-Tung-Striebel smoothed marginals of s given the whole path: loc (B, T, s), cov (B, T, s, s),
    from :func:`kalman_path`'s moments (with the same ``mask`` (B, T) or None) and the transition matrices
    A (B, T, s, s) (A[:, t] takes s_{t-1} to s_t). A padded step, whose belief the filter froze, is the
    identity transition without noise: the smoothed marginals of the real steps ignore it."""
    ms, Ps = [filt[-1][0]], [filt[-1][1]]
    A_t = A.unbind(1)  # T tensors (B, s, s): unbind, not A[:, t] (see kalman_path)
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    for t in range(len(filt) - 2, -1, -1):
        mf, Pf = filt[t]
        mp, Pp = pred[t + 1]
        A_next = A_t[t + 1] if mask is None else torch.where(mask[:, t + 1, None, None], A_t[t + 1], eye)  # (B, s, s)
        G = torch.linalg.solve(Pp, A_next @ Pf).transpose(-1, -2)  # (B, s, s): Pf A^T Pp^{-1}
        ms.insert(0, mf + _mv(G, ms[0] - mp))
        Ps.insert(0, Pf + G @ (Ps[0] - Pp) @ G.transpose(-1, -2))
    return torch.stack(ms, 1), torch.stack(Ps, 1)


# --- the path distributions of the vectorized programs ------------------------------------------------
class FramePath(FlowPath):
    """q(a | x) = prod_t N(a_t; loc_t, scale_t) with loc_t, scale_t read from x_t alone: a flow path with
    no transforms (``base`` = ``path``, log-determinant 0), so that the ELBO takes each step's one-draw
    KL estimate log q(a_t | x_t) - log p(a_t | a_{<t}, u) against :class:`KalmanPath` (which has no
    closed-form KL from a diagonal Gaussian). Holds its draw."""

    def __init__(self, loc, scale, path, mask=None):
        super().__init__(loc, scale, path, path, torch.zeros_like(path[..., 0]), mask, ())


class KalmanPath(PriorPath):
    """p(a | u) = prod_t p(a_t | a_{<t}, u_{<t}), the mixture of linear-Gaussian systems with s integrated
    out: ``step_log_prob`` runs the mixture weights' RNN over the path (one multi-step call) and the
    Kalman filter (:func:`kalman_path`). Not Gaussian per step in the diagonal sense (``params`` is
    refused); drawn by the per-step program (``generate``)."""

    def __init__(self, model: "KVAE", batch: SequenceBatch):
        self.model, self.batch = model, batch
        super().__init__(self._refuse, (batch.batch_size, batch.num_steps, model.config.z_dim), batch.mask)

    @staticmethod
    def _refuse(value):
        raise TypeError("the KVAE prior's steps are Kalman predictives, not diagonal Gaussians")

    def step_log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.model.path_log_prob(self.batch, value, moments=False)[0]  # (B, T)

    def rsample(self, sample_shape=torch.Size()):
        raise NotImplementedError("the KVAE prior path is scored, not sampled: generate runs the per-step program")


class KVAE(DynamicalVAE):
    name = "kvae"
    default_lr = 3e-3
    frames = True  # conv nets on image frames (ModelConfig.frame_shape), as in the paper

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        c = config
        K, s, a = c.kvae_components, c.kvae_state_dim or 2 * c.z_dim, c.z_dim
        if K < 1 or s < 1:
            raise ValueError(f"kvae needs kvae_components >= 1 and kvae_state_dim >= 0 (0: 2 z_dim), "
                             f"got {c.kvae_components} and {c.kvae_state_dim}")
        self.s_dim, self.K = s, K
        if c.frame_shape:  # images: conv nets on the frames (the paper's recognition and generative networks)
            if c.missing:
                raise ValueError("the KVAE on frames (frame_shape) does not take missing-data mode")
            if c.x_dim != c.frame_shape[0] * c.frame_shape[1]:
                raise ValueError(f"frame_shape {c.frame_shape} does not match x_dim {c.x_dim}")
            self.frame_encoder = FrameEncoder(c.frame_shape, c.emission_dim)  # features of x_t
            self.emitter = ConvEmitter(a, c.frame_shape, c.emission_dim, c.likelihood, scale=c.emission_scale)
        else:
            self.frame_encoder = None
            self.emitter = Emitter(a, c.x_dim, c.emission_dim, c.likelihood, c.emission_scale)  # p(x_t | a_t)
        features = c.emission_dim if c.frame_shape else self.x_in_dim  # what the recognition MLP reads
        self.encoder = StepPosterior(features, c.emission_dim, a)  # q(a_t | x_t)
        self.weights_rnn = Recurrence(c.rnn_type, a, c.rnn_dim)  # h_t over a_{<t}
        self.weights = nn.Linear(c.rnn_dim, K)  # alpha_t = softmax(W h_t)
        self.A = nn.Parameter(torch.eye(s).repeat(K, 1, 1))  # (K, s, s), the paper's identity start
        self.B = nn.Parameter(0.05 * torch.randn(K, s, c.u_dim))  # (K, s, u)
        self.C = nn.Parameter(0.05 * torch.randn(K, a, s) + torch.eye(a, s))  # (K, a, s)
        inv_sp = lambda v: math.log(math.expm1(v))  # noqa: E731  softplus^{-1} (no tensor: builds on the meta device)
        self.raw_Q = nn.Parameter(torch.eye(s) * inv_sp(0.3))
        self.raw_R = nn.Parameter(torch.eye(a) * inv_sp(0.3))
        self.raw_P0 = nn.Parameter(torch.eye(s) * inv_sp(1.0))
        self.m0 = nn.Parameter(torch.zeros(s))

    # --- the linear-Gaussian part ------------------------------------------------------------------
    @staticmethod
    def _covariance(raw: torch.Tensor) -> torch.Tensor:
        L = torch.tril(raw, -1) + torch.diag_embed(nn.functional.softplus(torch.diagonal(raw)))
        return L @ L.T + JITTER * torch.eye(len(L), dtype=L.dtype, device=L.device)

    def noise(self):
        """(Q, R, m0, P0) as tensors."""
        return self._covariance(self.raw_Q), self._covariance(self.raw_R), self.m0, self._covariance(self.raw_P0)

    def mixture_weights(self, h: torch.Tensor) -> torch.Tensor:
        """alpha (..., K) = softmax(W h) from the RNN output h (..., rnn_dim)."""
        return torch.softmax(self.weights(h), -1)

    def mixture(self, h: torch.Tensor):
        """alpha (..., K) from the RNN output h (..., rnn_dim), and the mixed (A, B, C) (..., s, s),
        (..., s, u), (..., a, s)."""
        alpha = self.mixture_weights(h)
        return alpha, _mix(alpha, self.A), _mix(alpha, self.B), _mix(alpha, self.C)

    @torch.no_grad()
    def set_system(self, A, B, C, Q, R, m0, P0) -> "KVAE":
        """Set every one of the K systems to the same matrices (array-likes), and Q, R, m0, P0 (which must
        exceed the 1e-4 I jitter): with K = 1, or K equal systems, the exact LGSSM. Returns self."""
        like = dict(dtype=self.A.dtype, device=self.A.device)

        def raw(M):
            M = torch.as_tensor(M, **like)
            L = torch.linalg.cholesky(M - JITTER * torch.eye(len(M), **like))
            d = torch.diagonal(L)
            return torch.tril(L, -1) + torch.diag(d + torch.log(-torch.expm1(-d)))  # softplus^{-1} on the diagonal
        for name, value in (("A", A), ("B", B), ("C", C)):
            p = getattr(self, name)
            p.copy_(torch.as_tensor(value, **like).reshape(p.shape[1:]).expand_as(p))
        self.m0.copy_(torch.as_tensor(m0, **like))
        self.raw_Q.copy_(raw(Q)), self.raw_R.copy_(raw(R)), self.raw_P0.copy_(raw(P0))
        return self

    def path_log_prob(self, batch: SequenceBatch, a: torch.Tensor, moments: bool = True):
        """Along a path of codes a (B, T, a_dim): log p(a_t | a_{<t}, u) (B, T) (zero on padding), and
        (A_t (B, T, s, s), predicted and filtered moments) for the smoother, or None with ``moments=False``:
        then the matrices are mixed step by step and no moment is kept, so that memory without a gradient
        does not grow with T (an evaluation's K = 10 draws of 64 MuseData rolls of 4273 steps would need
        11 GB for each (B, T, s, s) tensor). The RNN over a_{<t} is one multi-step call; the filter runs
        step by step."""
        rec = self.weights_rnn.initial(batch.batch_size)
        h = Recurrence.output(rec)[:, None]  # (B, 1, rnn_dim): h_0
        if batch.num_steps > 1:
            h = torch.cat([h, self.weights_rnn.scan(a[:, :-1], rec)], 1)  # (B, T, rnn_dim)
        alpha = self.mixture_weights(h)  # (B, T, K)
        drive = None
        if batch.u is not None:  # B_t u_{t-1}: (B, T - 1, s), then step 0's zeros
            drive = _mv(_mix(alpha[:, 1:], self.B), batch.u[:, :-1])
            drive = torch.cat([torch.zeros_like(drive[:, :1]), drive], 1)  # (B, T, s)
        Q, R, m0, P0 = self.noise()
        if not moments:
            alpha_t = alpha.unbind(1)  # T tensors (B, K)
            A_at = lambda t: _mix(alpha_t[t], self.A)  # noqa: E731  (B, s, s)
            C_at = lambda t: _mix(alpha_t[t], self.C)  # noqa: E731  (B, a, s)
            return kalman_path(a, A_at, C_at, Q, R, m0, P0, drive, batch.mask, moments=False)[0], None
        A, C = _mix(alpha, self.A), _mix(alpha, self.C)  # (B, T, s, s), (B, T, a, s)
        log_p, pred, filt = kalman_path(a, A, C, Q, R, m0, P0, drive, batch.mask)
        return log_p, (A, pred, filt)

    def recognition(self, x: torch.Tensor, obs_mask=None):
        """loc, scale (..., z_dim) of q(a_t | x_t) from frames x (..., x_dim): an MLP, or on images a conv
        net first."""
        return self.encoder(self.x_input(x, obs_mask) if self.frame_encoder is None else self.frame_encoder(x))

    # --- the contract: the dynamics, stated once -----------------------------------------------------
    def _step_state(self, rec, m, P, C, R):
        """The state of a step before a_t, from h_t, the predicted belief (m (n, s), P (n, s, s)) and C_t
        (n, a, s), with the predictive p(a_t | a_{<t}, u) (kept for the update: ``"a_loc"``, ``"a_tril"``)."""
        loc, L = kalman_predictive(m, P, C, R)  # (n, a), (n, a, a)
        state = {"rec": rec, "mean": m, "cov": P, "C": C, "a_loc": loc, "a_tril": L}
        return state, dist.MultivariateNormal(loc, scale_tril=L)

    def initial_state(self, n: int, c=None):
        """h_0 learned, s_0 ~ N(m0, P0); p(a_0) = N(C_0 m0, C_0 P0 C_0^T + R)."""
        _, R, m0, P0 = self.noise()
        rec = self.weights_rnn.initial(n)
        C = _mix(self.mixture_weights(Recurrence.output(rec)), self.C)  # (n, a, s)
        return self._step_state(rec, m0.expand(n, -1), P0.expand(n, -1, -1), C, R)

    def transition_step(self, state: State, x, u=None, obs_mask=None):
        """h_t = f(h_{t-1}, a_{t-1}); (A_t, B_t, C_t) mixed by alpha_t; the belief of s_t predicted;
        p(a_t | a_{<t}, u_{<t}). x_{t-1} is not read."""
        Q, R, _, _ = self.noise()
        rec = self.weights_rnn(state["z"], state["rec"])
        _, A, Bm, C = self.mixture(Recurrence.output(rec))  # (n, s, s), (n, s, u), (n, a, s)
        m, P = kalman_predict(state["mean"], state["cov"], A, Q, None if u is None else _mv(Bm, u))
        return self._step_state(rec, m, P, C, R)

    def with_latent(self, state: State, z) -> State:
        """The Kalman update of the belief of s_t with the code a_t = z."""
        _, R, _, _ = self.noise()
        m, P = kalman_update(state["mean"], state["cov"], state["C"], R, z, state["a_loc"], state["a_tril"])
        return {**state, "mean": m, "cov": P, "z": z}

    def emission(self, state: State, obs_mask=None):
        """p(x_t | a_t)."""
        return observation_dist(self.emitter(state["z"]), self.config.likelihood, obs_mask)

    def filter_step(self, state: State, x, obs_mask=None):
        """The guide's q(a_t | x_t) (the state is not read)."""
        loc, scale = self.recognition(x, obs_mask)
        return dist.Normal(loc, scale).to_event(1)

    # --- the guide: q(a_t | x_t), all frames in one call -----------------------------------------------
    def guide(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """q(a | x) = prod_t q(a_t | x_t), one site per step. Returns the sampled codes (B, T, z_dim).

        Each step's Gaussian is a :class:`~dvae.models.paths.FlowStep` with no transforms (the per-step twin
        of :class:`FramePath`): its KL from the Kalman predictive p(a_t | a_{<t}, u) has no closed form
        (Pyro's diagonal-to-full one is not taken), so both forms take the one-draw estimate."""
        pyro.module(self.name, self)
        loc, scale = self.recognition(batch.x, batch.obs_mask)  # (B, T, z_dim) each
        loc_t, scale_t = loc.unbind(1), scale.unbind(1)  # T tensors (B, z_dim): unbind, not loc[:, t]
        zs = []
        with pyro.plate("sequences", batch.batch_size, dim=-1):
            for t in pyro.markov(range(batch.num_steps)):
                q = FlowStep.draw(loc_t[t], scale_t[t], ())  # N(loc, scale), holding its draw
                with poutine.scale(scale=annealing_factor):
                    zs.append(pyro.sample(f"z_{t}", q.mask(batch.mask[:, t])))  # (B, z_dim)
        return torch.stack(zs, 1)

    # --- the same densities along a whole path (the time-vectorized program) -------------------------
    def posterior_path(self, batch: SequenceBatch) -> FramePath:
        """The guide's path: the same normals in the same order as :meth:`guide` (a (B, z_dim) block a step)."""
        loc, scale = self.recognition(batch.x, batch.obs_mask)
        eps = torch.stack([torch.empty_like(loc[:, t]).normal_() for t in range(batch.num_steps)], 1)
        return FramePath(loc, scale, loc + eps * scale, batch.mask)  # path (B, T, z_dim)

    def prior_path(self, batch: SequenceBatch) -> KalmanPath:
        """p(a | u) by the Kalman filter along the path it scores."""
        return KalmanPath(self, batch)

    def emission_path(self, batch: SequenceBatch, z):
        """p(x_t | a_t) of every step: batch (B, T)."""
        return observation_dist(self.emitter(z), self.config.likelihood, batch.obs_mask)

    # --- the posterior of s ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, batch: SequenceBatch, num_samples: int = 1):
        """Codes from the guide, ``"z"`` (S, B, T, z_dim), and the smoothed posterior of the state s given
        each draw, p(s_t | a, u): ``"state_loc"`` (S, B, T, s_dim), ``"state_cov"`` (S, B, T, s_dim, s_dim)."""
        batch = self.check_batch(batch)
        rep = repeat_batch(batch, num_samples)
        a = self.guide(rep)  # (S * B, T, z_dim)
        _, (A, pred, filt) = self.path_log_prob(rep, a)
        loc, cov = kalman_smooth(A, pred, filt, rep.mask)
        out = {"z": a, "state_loc": loc, "state_cov": cov}
        return {k: v.reshape((num_samples, batch.batch_size) + v.shape[1:]) for k, v in out.items()}
