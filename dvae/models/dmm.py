"""The Deep Markov Model / Deep Kalman Filter with controls (Krishnan et al. 2015, 2017).

Generative story, for each sequence::

    z_0 ~ N(loc_0, scale_0)                          learned initial state
    z_t ~ N(Transition(z_{t-1}, u_{t-1}))            t = 1 .. T-1
    x_t ~ Emitter(z_t)                               Gaussian (learned diagonal scale) or Bernoulli

On images (``ModelConfig.frame_shape``), the emitter is a transposed-conv net over the frame and
the guide reads every frame through a conv net first (the pixel DMM).

Guide (structured, "DKS"): a backward RNN reads (x_t, u_t) from the end, giving h_t, a summary of
x_{t:T}; q(z_t | z_{t-1}, h_t) is the Combiner. The mean-field variant drops z_{t-1}. With
``bidirectional=True`` a forward RNN runs beside the backward one and the combiner reads both states,
[h_fwd_t, h_back_t], a summary of the whole sequence: q(z_t | z_{t-1}, x_{1:T}) (the "ST-R" guide of
Krishnan et al. 2017 takes the same inputs).

Two more guides on the same model (``ModelConfig.guide``):

- ``ltr`` (left to right, filtering): a forward RNN reads [x_t, u_{t-1}] (u_{-1} = 0), so h_t
  summarises x_{0:t} and u_{0:t-1}, and the combiner gives q(z_t | z_{t-1}, x_{0:t}, u_{0:t-1}). The
  step sees the controls up to u_{t-1}, the last one that enters p(z_t | z_{t-1}, u_{t-1}), and none
  after: u_t only drives z_{t+1}, and x_{t+1:T}, which would make it informative, is not read. This is
  the guide a filter is (it ignores the future observations that the true posterior conditions on).
- ``iaf`` (a normalizing-flow guide, the IAF variant of Pyro's DMM example): each step's posterior is
  the DKS combiner's diagonal Gaussian pushed through ``num_iafs`` affine autoregressive transforms
  (Pyro's ``AffineAutoregressive`` over an ``AutoRegressiveNN`` of hidden size ``iaf_dim``, the same
  transforms at every step): z_t = f(x), x ~ N(Combiner(z_{t-1}, h_t)), with
  log q(z_t | .) = log N(x; .) - log |det df/dx|. The KL of a step has no closed form: the ELBO takes
  the one-draw estimate log q(z_t | .) - log p(z_t | .) (``dvae.infer.elbo.site_kl_steps``), in both
  the per-step program (:class:`~dvae.models.paths.FlowStep` sites) and the vectorized one
  (a :class:`~dvae.models.paths.FlowPath`).

Conditional DMM (``c_dim`` > 0): a per-sequence condition c (a one-hot label or any vector) enters
the dynamics and the guide, not the emitter::

    z_0 ~ N(InitialState(c))                         p(z_0 | c)
    z_t ~ N(Transition(z_{t-1}, [u_{t-1}, c]))       p(z_t | z_{t-1}, u_{t-1}, c)
    x_t ~ Emitter(z_t)                               unchanged: z_t is the whole state, as with controls
    guide: the RNN reads [x_t, u_t, c], so the combiner's h_t carries c.

c enters where the controls do (the transition) and sets the initial state, so generating with
another c changes the latent trajectory, and the emitter stays the one map from state to
observation.

The family states its dynamics once, as the contract of :class:`~dvae.models.base.DynamicalVAE`:
``initial_state`` (p(z_0 | c)), ``transition_step`` (p(z_t | z_{t-1}, u_{t-1}, c)) and ``emission``
(p(x_t | z_t)), with ``prior_path`` the transition applied along a whole path in one batched call. The
per-step model, prediction, the world model and the particle filter are written over those; the
guide (DKS, mean field, ltr, iaf) is the DMM's own.

Two forms of the same program (see ``dvae.models.base``): ``model``/``guide`` with a site per step,
and ``model_vectorized``/``guide_vectorized`` with the path as one site ``"z"`` (B, T, z_dim) and the
observations as one site ``"x"`` (B, T, x_dim). In the vectorized guide only the combiner runs step
by step (z_t needs z_{t-1}); the model computes the transition of every step in one batched call on
the replayed path, and the emitter of every step in another.
"""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

from dvae.data.batch import SequenceBatch
from dvae.models.base import DynamicalVAE, ModelConfig, append_condition, observation_dist
from dvae.models.state import State
from dvae.models.paths import FlowPath, FlowStep, GuidePath, PriorPath
from dvae.nn import MIN_SCALE, Combiner, ConvEmitter, Emitter, FrameEncoder, GatedTransition, InitialState, SequenceEncoder


class DMM(DynamicalVAE):
    name = "dmm"
    sample_broadcast = True  # its per-step programs broadcast over sample dims left of (B, ...)
    guides = ("dks", "mean_field", "ltr", "iaf")
    conditional = True
    bidirectional_encoder = True
    tmc_guides = ("mean_field",)  # the dks guide's q(z_t | z_{t-1}, .) makes TMC's pairwise weights not a bound
    frames = True  # conv nets on image frames (ModelConfig.frame_shape): the pixel DMM

    @classmethod
    def default_bidirectional(cls, config: ModelConfig) -> bool:
        """On, but for the filtering guide ltr: the combiner reading the forward RNN's state beside the backward
        one's left the default DMM 0.02 nats per step above the exact NLL of the linear-Gaussian system after
        180 CPU s, against 0.11 with the backward RNN alone (docs/performance.md, "The DMM's guide")."""
        return config.guide != "ltr"

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        c = config
        if c.guide not in self.guides:
            raise ValueError(f"unknown DMM guide {c.guide!r} (choose dks, mean_field, ltr or iaf)")
        if c.guide == "ltr" and c.bidirectional:
            raise ValueError("the ltr guide is the filtering guide (a forward RNN): it cannot be bidirectional")
        if c.num_iafs and c.guide != "iaf":
            raise ValueError(f"num_iafs = {c.num_iafs} is for the iaf guide (guide is {c.guide!r})")
        self.initial = InitialState(c.z_dim, c.c_dim)                          # p(z_0 | c)
        self.transition = GatedTransition(c.z_dim, c.u_dim + c.c_dim, c.transition_dim)  # p(z_t | z_{t-1}, u_{t-1}, c)
        if c.frame_shape:  # images: conv nets on the frames
            if c.missing:
                raise ValueError("the pixel DMM (frame_shape) does not take missing-data mode")
            if c.x_dim != c.frame_shape[0] * c.frame_shape[1]:
                raise ValueError(f"frame_shape {c.frame_shape} does not match x_dim {c.x_dim}")
            self.emitter = ConvEmitter(c.z_dim, c.frame_shape, c.emission_dim, c.likelihood, scale=c.emission_scale)  # p(x_t | z_t)
            self.frame_encoder = FrameEncoder(c.frame_shape, c.emission_dim)  # features of x_t for the guide
            read_dim = c.emission_dim
        else:
            self.emitter = Emitter(c.z_dim, c.x_dim, c.emission_dim, c.likelihood, c.emission_scale)  # p(x_t | z_t)
            self.frame_encoder = None
            read_dim = self.x_in_dim  # x, or [x, obs_mask] in missing-data mode
        direction = "forward" if c.guide == "ltr" else ("bidirectional" if c.bidirectional else "backward")
        self.encoder = SequenceEncoder(read_dim + c.u_dim + c.c_dim, c.rnn_dim, c.rnn_type, direction)  # h_t
        self.combiner = Combiner(c.z_dim, self.encoder.out_dim, mean_field=c.guide == "mean_field")  # q(z_t | z_{t-1}, h_t)
        self.z_q_0 = torch.nn.Parameter(torch.zeros(c.z_dim))  # the guide's z_{-1}
        self.iafs = torch.nn.ModuleList()  # the flow on each step's posterior (guide iaf)
        if c.guide == "iaf":
            from pyro.distributions.transforms import AffineAutoregressive
            from pyro.nn import AutoRegressiveNN

            self.iafs.extend(AffineAutoregressive(AutoRegressiveNN(c.z_dim, [c.iaf_dim]))
                             for _ in range(c.num_iafs or 1))

    @staticmethod
    def _drive(u, c):
        """The transition's input beside z_{t-1} at one step: [u_{t-1}, c] (B, u_dim + c_dim), or None."""
        if c is None or u is None:
            return u if c is None else c
        return torch.cat([u, c], -1)  # (B, u_dim + c_dim)

    # --- the contract: the dynamics, stated once -----------------------------------------------------
    def initial_state(self, n: int, c=None):
        """p(z_0 | c): N(InitialState(c)); the state carries c for the transitions."""
        loc, scale = self.initial(n, c)  # (n, z_dim) each
        return {"c": c}, dist.Normal(loc, scale).to_event(1)

    def transition_step(self, state: State, x, u=None, obs_mask=None):
        """p(z_t | z_{t-1}, u_{t-1}, c): N(Transition(z_{t-1}, [u_{t-1}, c])); x_{t-1} is not read."""
        c = state.get("c")
        loc, scale = self.transition(state["z"], self._drive(u, c))  # (n, z_dim) each
        return {"c": c}, dist.Normal(loc, scale).to_event(1)

    def emission(self, state: State, obs_mask=None):
        """p(x_t | z_t)."""
        return observation_dist(self.emitter(state["z"]), self.config.likelihood, obs_mask)

    def _encoder_input(self, batch: SequenceBatch):
        """[x_t, u_t, c] at every step, frames through the frame encoder: (B, T, x_dim | emission_dim + u_dim + c_dim).
        The ltr guide reads [x_t, u_{t-1}, c] instead (u_{-1} = 0): its step t sees no control after u_{t-1}."""
        u = batch.u
        if u is not None and self.config.guide == "ltr":
            u = torch.cat([torch.zeros_like(u[:, :1]), u[:, :-1]], 1)  # (B, T, u_dim): u_{t-1} at step t
        if self.frame_encoder is None:
            y = self.x_input(batch.x, batch.obs_mask)  # (B, T, x_in_dim)
        else:
            y = self.frame_encoder(batch.x)  # (B, T, emission_dim)
        y = y if u is None else torch.cat([y, u], -1)  # (B, T, x_in_dim | emission_dim + u_dim)
        return append_condition(y, self.condition(batch))

    def guide(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """q(z | x, u). Returns the sampled latent path (B, T, z_dim)."""
        pyro.module("dmm", self)
        B, T = batch.batch_size, batch.num_steps
        h = self.encoder(self._encoder_input(batch), batch.lengths)  # (B, T, rnn_dim or 2 rnn_dim)
        h_t = h.unbind(1)  # T tensors (B, rnn_dim): unbind, not h[:, t] (a backward linear in T)
        z, zs = self.z_q_0.expand(B, -1), []
        with pyro.plate("sequences", B, dim=-1):
            for t in pyro.markov(range(T)):
                loc, scale = self.combiner(z, h_t[t])  # (B, z_dim) each
                if self.iafs:  # z_t = f(x), x ~ N(loc, scale): a flow step, no closed-form KL
                    q_t = FlowStep.draw(loc, scale, self.iafs)
                else:
                    q_t = dist.Normal(loc, scale).to_event(1)
                with poutine.scale(scale=annealing_factor):
                    z = pyro.sample(f"z_{t}", q_t.mask(batch.mask[:, t]))
                zs.append(z)
        return torch.stack(torch.broadcast_tensors(*zs), -2)  # (B, T, z_dim); (..., B, T, z_dim) under sample dims (TMC)

    # --- the same densities along a whole path (the time-vectorized program) -------------------------
    def prior_path(self, batch: SequenceBatch) -> PriorPath:
        """p(z | u, c) over the path: the transition of every step in one batched call at a given path;
        sampled step by step through the contract when the program runs unconditioned."""
        B, T, c = batch.batch_size, batch.num_steps, self.condition(batch)

        def params(z):  # loc, scale (B, T, z_dim) of p(z_t | z_{t-1}, u_{t-1}, c) for every t
            loc_0, scale_0 = self.initial(B, c)  # (B, z_dim)
            if T == 1:
                return loc_0[:, None], scale_0[:, None]
            drive = None if batch.u is None else batch.u[:, :-1]  # (B, T-1, u_dim)
            if c is not None:  # [u_{t-1}, c] at every step
                drive = append_condition(z.new_zeros(B, T - 1, 0) if drive is None else drive, c)
            loc, scale = self.transition(z[:, :-1], drive)  # (B, T-1, z_dim)
            return torch.cat([loc_0[:, None], loc], 1), torch.cat([scale_0[:, None], scale], 1)

        def step(t, z_prev):  # step t's parameters, for sampling
            _, p = self.initial_state(B, c) if t == 0 else self.transition_step({"z": z_prev, "c": c}, None,
                                                                                batch.step_u(t - 1))
            return p.base_dist.loc, p.base_dist.scale

        return PriorPath(params, (B, T, self.config.z_dim), batch.mask, step=step)

    def emission_path(self, batch: SequenceBatch, z):
        """p(x_t | z_t) of every step: batch (B, T)."""
        return observation_dist(self.emitter(z), self.config.likelihood, batch.obs_mask)

    def posterior_path(self, batch: SequenceBatch):
        """The guide's path: a :class:`GuidePath` (dks, mean_field, ltr) or a :class:`FlowPath` (iaf)."""
        if self.iafs:
            return self.flow_path(batch)
        loc, scale, path = self.guide_path(batch)
        return GuidePath(loc, scale, path, batch.mask)

    def guide_path(self, batch: SequenceBatch):
        """Draw a path from q(z | x, u), plain torch: (loc, scale, path), each (B, T, z_dim).

        Draws the same normals in the same order as :meth:`guide` (one (B, z_dim) block per step); the
        combiner's loop over steps is one fused autograd node (:meth:`Combiner.scan`).
        """
        if self.iafs:
            raise ValueError("the iaf guide's path is not Gaussian: use flow_path")
        B, T = batch.batch_size, batch.num_steps
        h = self.encoder(self._encoder_input(batch), batch.lengths)  # (B, T, rnn_dim or 2 rnn_dim)
        eps = h.new_empty(T, B, self.config.z_dim)
        for t in range(T):  # as Normal.rsample at each step of the per-step guide
            eps[t].normal_()
        return self.combiner.scan(self.z_q_0.expand(B, -1), h, eps)

    def flow_path(self, batch: SequenceBatch) -> FlowPath:
        """The iaf guide's path, drawn step by step as :meth:`guide` draws it (the same normals in the same
        order, the combiner and the flow at each step), plain torch: a :class:`FlowPath`."""
        B, T = batch.batch_size, batch.num_steps
        h = self.encoder(self._encoder_input(batch), batch.lengths)  # (B, T, rnn_dim or 2 rnn_dim)
        z, steps = self.z_q_0.expand(B, -1), []
        for h_t in h.unbind(1):  # (B, rnn_dim) per step: unbind, not h[:, t] (a backward linear in T)
            loc, scale = self.combiner(z, h_t)  # (B, z_dim) each
            step = FlowStep.draw(loc, scale, self.iafs)
            z = step.value
            steps.append(step)
        stack = lambda name: torch.stack([getattr(s, name) for s in steps], 1)  # noqa: E731 (B, T, z_dim) | (B, T)
        return FlowPath(stack("loc"), stack("scale"), stack("base"), stack("value"), stack("log_det"), batch.mask,
                        self.iafs)


# --- a DMM that is a linear-Gaussian system exactly (an oracle for its bounds) ---------------------------
def _softplus_inverse(v: np.ndarray) -> np.ndarray:
    return v + np.log(-np.expm1(-v))


def linear_gaussian_dmm(params, emission_dim: int = 0, transition_dim: int = 8, rnn_dim: int = 8):
    """A DMM whose generative networks compute the linear-Gaussian system ``params`` exactly, so its
    exact log p(x | u) is :func:`dvae.eval.exact.kalman_log_likelihood`: an oracle for its ELBO, IW bounds and
    particle filter (its guide is left at its random initialisation: the bounds hold for any guide).

    ``params``: the seven arrays (A, B, C, Q, R, m0, P0) (``dvae.eval.exact.LGSSMParams`` or any tuple
    of them in this order). Q, R and P0 must be diagonal (the DMM's scales are per dimension). The transition's gate is shut
    (sigmoid(-60) ~ 1e-26, times a proposed mean held at exactly 0), so its mean is the linear part
    A z + B u; its scale sqrt(diag Q) comes from the bias alone. The emitter's ReLU MLP passes
    (relu(z), relu(-z)) through its two hidden layers and its output layer recombines them, C (relu(z)
    - relu(-z)) = C z, exactly. Returns the model (float32, CPU)."""
    A, B, C, Q, R, m0, P0 = (np.asarray(a, dtype=np.float64) for a in params)
    for name, M in (("Q", Q), ("R", R), ("P0", P0)):
        if not np.allclose(M, np.diag(np.diag(M))):
            raise ValueError(f"linear_gaussian_dmm needs a diagonal {name}")
    z_dim, x_dim, u_dim = A.shape[0], C.shape[0], B.shape[1]
    emission_dim = emission_dim or 2 * z_dim
    if emission_dim < 2 * z_dim:
        raise ValueError(f"emission_dim must be at least 2 z_dim = {2 * z_dim}")

    def raw_scale(var):  # positive(raw) = softplus(raw) + MIN_SCALE = sqrt(var)
        return torch.tensor(_softplus_inverse(np.sqrt(np.diag(var)) - MIN_SCALE), dtype=torch.float32)

    def t(a):
        return torch.tensor(a, dtype=torch.float32)

    model = DMM(ModelConfig(DMM.name, x_dim=x_dim, u_dim=u_dim, z_dim=z_dim, rnn_dim=rnn_dim,
                            transition_dim=transition_dim, emission_dim=emission_dim))
    with torch.no_grad():
        model.initial.loc.copy_(t(m0))
        model.initial.raw_scale.copy_(raw_scale(P0))
        tr = model.transition
        tr.gate[-1].weight.zero_(), tr.gate[-1].bias.fill_(-60.0)  # gate shut
        tr.proposed_mean[-1].weight.zero_(), tr.proposed_mean[-1].bias.zero_()  # proposed mean 0
        tr.linear_loc.weight.copy_(t(np.concatenate([A, B], 1))), tr.linear_loc.bias.zero_()  # A z + B u
        tr.scale.weight.zero_(), tr.scale.bias.copy_(raw_scale(Q))
        net = model.emitter.net  # Linear, ReLU, Linear, ReLU, Linear
        split = np.zeros((emission_dim, z_dim))
        split[:z_dim], split[z_dim:2 * z_dim] = np.eye(z_dim), -np.eye(z_dim)  # (relu(z), relu(-z))
        net[0].weight.copy_(t(split)), net[0].bias.zero_()
        keep = np.zeros((emission_dim, emission_dim))
        keep[:2 * z_dim, :2 * z_dim] = np.eye(2 * z_dim)
        net[2].weight.copy_(t(keep)), net[2].bias.zero_()
        out = np.zeros((x_dim, emission_dim))
        out[:, :z_dim], out[:, z_dim:2 * z_dim] = C, -C  # C relu(z) - C relu(-z) = C z
        net[4].weight.copy_(t(out)), net[4].bias.zero_()
        model.emitter.raw_scale.copy_(raw_scale(R))
    return model
