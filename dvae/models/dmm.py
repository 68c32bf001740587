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

Two forms of the same program (see ``dvae.models.base``): ``model``/``guide`` with a site per step,
and ``model_vectorized``/``guide_vectorized`` with the path as one site ``"z"`` (B, T, z_dim) and the
observations as one site ``"x"`` (B, T, x_dim). In the vectorized guide only the combiner runs step
by step (z_t needs z_{t-1}); the model computes the transition of every step in one batched call on
the replayed path, and the emitter of every step in another.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

from dvae.data.batch import SequenceBatch
from dvae.models.base import DynamicalVAE, ModelConfig, append_condition, observation_dist
from dvae.models.paths import FlowPath, FlowStep, GuidePath, PriorPath, observation_path
from dvae.nn import Combiner, ConvEmitter, Emitter, FrameEncoder, GatedTransition, InitialState, SequenceEncoder


class DMM(DynamicalVAE):
    name = "dmm"

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        c = config
        if c.guide not in ("dks", "mean_field", "ltr", "iaf"):
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
            self.emitter = ConvEmitter(c.z_dim, c.frame_shape, c.emission_dim, c.likelihood)  # p(x_t | z_t)
            self.frame_encoder = FrameEncoder(c.frame_shape, c.emission_dim)  # features of x_t for the guide
            read_dim = c.emission_dim
        else:
            self.emitter = Emitter(c.z_dim, c.x_dim, c.emission_dim, c.likelihood)  # p(x_t | z_t)
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

    def _prior(self, t: int, z_prev, batch: SequenceBatch):
        if t == 0:
            return self.initial(batch.batch_size, self._c(batch))
        return self.transition(z_prev, self._drive(self._u(batch, t - 1), self._c(batch)))

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
        return append_condition(y, self._c(batch))

    def model(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """p(x, z | u). Returns the latent path (B, T, z_dim)."""
        pyro.module("dmm", self)
        B, T = batch.batch_size, batch.num_steps
        z, zs = None, []
        with pyro.plate("sequences", B, dim=-1):
            for t in pyro.markov(range(T)):
                m = batch.mask[:, t]  # (B,)
                loc, scale = self._prior(t, z, batch)  # (B, z_dim) each
                with poutine.scale(scale=annealing_factor):
                    z = pyro.sample(f"z_{t}", dist.Normal(loc, scale).to_event(1).mask(m))  # (B, z_dim)
                pyro.sample(f"x_{t}", observation_dist(self.emitter(z), self.config.likelihood,
                                                       self._obs_mask(batch, t)).mask(m), obs=batch.x[:, t])
                zs.append(z)
        return torch.stack(torch.broadcast_tensors(*zs), -2)  # (B, T, z_dim); (..., B, T, z_dim) under sample dims (TMC)

    def guide(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """q(z | x, u). Returns the sampled latent path (B, T, z_dim)."""
        pyro.module("dmm", self)
        B, T = batch.batch_size, batch.num_steps
        h = self.encoder(self._encoder_input(batch), batch.lengths)  # (B, T, rnn_dim or 2 rnn_dim)
        z, zs = self.z_q_0.expand(B, -1), []
        with pyro.plate("sequences", B, dim=-1):
            for t in pyro.markov(range(T)):
                loc, scale = self.combiner(z, h[:, t])  # (B, z_dim) each
                if self.iafs:  # z_t = f(x), x ~ N(loc, scale): a flow step, no closed-form KL
                    q_t = FlowStep.draw(loc, scale, self.iafs)
                else:
                    q_t = dist.Normal(loc, scale).to_event(1)
                with poutine.scale(scale=annealing_factor):
                    z = pyro.sample(f"z_{t}", q_t.mask(batch.mask[:, t]))
                zs.append(z)
        return torch.stack(torch.broadcast_tensors(*zs), -2)  # (B, T, z_dim); (..., B, T, z_dim) under sample dims (TMC)

    # --- the time-vectorized program ---------------------------------------------------------------
    def _prior_params(self, z, batch: SequenceBatch):
        """loc, scale (B, T, z_dim) of p(z_t | z_{t-1}, u_{t-1}) for every t at once, given the path z."""
        B = batch.batch_size
        loc_0, scale_0 = self.initial(B, self._c(batch))  # (B, z_dim)
        if batch.num_steps == 1:
            return loc_0[:, None], scale_0[:, None]
        drive, c = (None if batch.u is None else batch.u[:, :-1]), self._c(batch)  # (B, T-1, u_dim), (B, c_dim)
        if c is not None:  # [u_{t-1}, c] at every step
            drive = append_condition(z.new_zeros(B, batch.num_steps - 1, 0) if drive is None else drive, c)
        loc, scale = self.transition(z[:, :-1], drive)  # (B, T-1, z_dim)
        return torch.cat([loc_0[:, None], loc], 1), torch.cat([scale_0[:, None], scale], 1)

    def model_vectorized(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """p(x, z | u) with the path as one site. Returns the latent path (B, T, z_dim)."""
        pyro.module("dmm", self)
        B, T, z_dim = batch.batch_size, batch.num_steps, self.config.z_dim
        prior = PriorPath(lambda z: self._prior_params(z, batch), (B, T, z_dim), batch.mask,
                          step=lambda t, z_prev: self._prior(t, z_prev, batch))
        with pyro.plate("sequences", B, dim=-1):
            with poutine.scale(scale=annealing_factor):
                z = pyro.sample("z", prior)  # (B, T, z_dim)
            x_dist = observation_dist(self.emitter(z), self.config.likelihood, batch.obs_mask)  # batch (B, T)
            pyro.sample("x", observation_path(x_dist, batch.mask), obs=batch.x)
        return z

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
        for t in range(T):
            loc, scale = self.combiner(z, h[:, t])  # (B, z_dim) each
            step = FlowStep.draw(loc, scale, self.iafs)
            z = step.value
            steps.append(step)
        stack = lambda name: torch.stack([getattr(s, name) for s in steps], 1)  # noqa: E731 (B, T, z_dim) | (B, T)
        return FlowPath(stack("loc"), stack("scale"), stack("base"), stack("value"), stack("log_det"), batch.mask,
                        self.iafs)

    def guide_vectorized(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """q(z | x, u) with the path as one site. Returns the sampled latent path (B, T, z_dim)."""
        pyro.module("dmm", self)
        if self.iafs:
            q = self.flow_path(batch)
        else:
            loc, scale, path = self.guide_path(batch)
            q = GuidePath(loc, scale, path, batch.mask)
        with pyro.plate("sequences", batch.batch_size, dim=-1):
            with poutine.scale(scale=annealing_factor):
                return pyro.sample("z", q)

    def _predict_samples(self, context: SequenceBatch, u_future, horizon: int):
        z_path = self.guide(context)  # (N, C, z_dim)
        N = context.batch_size
        z = z_path[torch.arange(N, device=z_path.device), (context.lengths - 1).clamp(min=0)]  # (N, z_dim)
        xs, means, zs = [], [], []
        for k in range(horizon):
            loc, scale = self.transition(z, self._drive(None if u_future is None else u_future[:, k], self._c(context)))
            z = dist.Normal(loc, scale).sample()  # (N, z_dim)
            x_dist = observation_dist(self.emitter(z), self.config.likelihood)
            xs.append(x_dist.sample())
            means.append(x_dist.mean)
            zs.append(z)
        return {"x": torch.stack(xs, 1), "x_mean": torch.stack(means, 1), "z": torch.stack(zs, 1)}  # (N, H, .)
