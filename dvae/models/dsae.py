"""DSAE, the disentangled sequential autoencoder (Li and Mandt 2018), in the DVAE review's form, with
controls and conditioning.

A static code v per sequence and dynamic latents z_t with a recurrent prior (h_0 learned)::

    v ~ N(0, I)                                       one per sequence (v_dim: ModelConfig.v_dim, 0: z_dim)
    h_t = f(h_{t-1}, [z_{t-1}, u_{t-1}])              t >= 1: the prior's recurrence (GRU, LSTM or ReLU cell)
    z_t ~ N(Prior([h_t, c]))                          p(z_t | z_{<t}, u_{<t}, c)
    x_t ~ Emitter([z_t, v, c])                        p(x_t | z_t, v, c): Gaussian, Bernoulli or categorical

The prior of z does not read v: the static code carries what stays fixed along a sequence, the dynamic
latents what moves. c (``c_dim`` > 0) is a per-sequence condition, read by the prior's head, the
emitter and both guides; p(v) does not depend on it (as the conditional VRAE's code).

Guide (the review's form, ``q(v | x) q(z | x, v)``)::

    q(v | x, u, c)           = N(HeadV(e)),    e the bidirectional RNN's summary of [x_t, u_t, c]
                                               (forward state at the last real step, backward at step 0)
    q(z_t | x, u, v, c)      = N(HeadZ(g_t)),  g_t a bidirectional RNN over [x_t, u_t, v, c]

so q(z_t | x_{0:T-1}, u, v, c): the z_t are independent given (x, v) (they do not read z_{<t}), every
step's parameters come from one RNN call, and each step's KL is taken in closed form against
p(z_t | z_{<t}) at the drawn path. The review's code follows the bidirectional RNN with a forward RNN;
here a head reads it directly (docs/maths.md, "Where each guide departs").

**The contract.** v is a deterministic part of the state, from the first step on: the state holds v,
c, the prior's recurrence h_t (``"rec"``) and z_t. ``initial_state`` draws v ~ N(0, I) itself (a
world model reset on the prior, the particle filter: v is then one more part of each particle) and
gives h_0 and p(z_0 | h_0, c); ``transition_step`` runs h_t = f(h_{t-1}, [z_{t-1}, u_{t-1}]) (x_{t-1}
is not read: the model never reads its observations) and gives p(z_t | h_t, c); ``emission`` is
p(x_t | z_t, v, c). The Pyro programs draw v as a site ``"v"`` of its own (the VRAE's code, for the
ELBO its own KL column) and then start the contract from it; :meth:`posterior_last` (prediction, the
world model's reset on a history) starts from the guide's v, not the prior's.

Programs: per-step (sites ``v``, ``z_0 .. z_{T-1}``, ``x_0 .. x_{T-1}``) and time-vectorized (sites
``v``, ``z`` (B,) x (T, z_dim), ``x``): the guide's parameters are one RNN call and one head call each,
the prior's h along a path one multi-step RNN call over the known [z_{t-1}, u_{t-1}], the prior's head
and the emitter one batched call each. Both guides draw v, then the z_t, with the same normals in the
same order. For the plain-torch loss, ``posterior_path`` returns the z path with its v attached
(:class:`CodedPath`, whose KL against the prior path is the joint KL of (v, z)), and ``emission_path``
finds that v beside the path.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch.distributions import kl_divergence, register_kl
from torch.utils.weak import WeakTensorKeyDictionary

from dvae.data.batch import SequenceBatch
from dvae.models.base import DynamicalVAE, ModelConfig, append_condition, observation_dist, repeat_batch
from dvae.models.paths import GuidePath, PriorPath, observation_path, steps_kl
from dvae.models.state import State
from dvae.nn import Emitter, GaussianHead, Recurrence, SequenceEncoder

# path drawn by DSAE.posterior_path -> (model, v (B, v_dim)); an entry dies with its path
_GUIDE_V = WeakTensorKeyDictionary()


class CodedPath(GuidePath):
    """A guide's z path drawn together with a sequence code v: q(v) q(z | v, .). As a GuidePath it is
    the z path (``rsample`` returns it; the ELBO's per-step KL columns are the z steps'); ``q_v`` is
    q(v) (batch (B,), event (v_dim,)) and ``v`` its draw. ``kl_divergence`` against a :class:`PriorPath`
    is the joint KL(q(v) || N(0, I)) + sum_t KL_t (B,), what the plain-torch loss takes."""

    def __init__(self, path: GuidePath, q_v, v):
        super().__init__(path.loc, path.scale, path.path, path.mask)
        self.q_v, self.v = q_v, v

    def expand(self, batch_shape, _instance=None):
        if torch.Size(batch_shape) == self.batch_shape:
            return self
        raise NotImplementedError("CodedPath cannot change its batch shape")


@register_kl(CodedPath, PriorPath)
def _kl_coded_prior(q, p):
    loc = torch.zeros_like(q.v)
    return kl_divergence(q.q_v, dist.Normal(loc, torch.ones_like(loc)).to_event(1)) + steps_kl(q, p).sum(-1)


class DSAE(DynamicalVAE):
    name = "dsae"
    conditional = True
    sequence_code = "v"

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        c = config
        if c.v_dim < 0:
            raise ValueError(f"v_dim must be >= 0 (0: the same as z_dim), got {c.v_dim}")
        self.v_dim = c.v_dim or c.z_dim
        self.recurrence = Recurrence(c.rnn_type, c.z_dim + c.u_dim, c.rnn_dim)  # h_t
        self.prior = GaussianHead(c.rnn_dim + c.c_dim, c.transition_dim, c.z_dim)  # p(z_t | h_t, c)
        self.emitter = Emitter(c.z_dim + self.v_dim + c.c_dim, c.x_dim, c.emission_dim, c.likelihood,
                               c.emission_scale)  # p(x_t | z_t, v, c)
        enc_in = self.x_in_dim + c.u_dim + c.c_dim
        self.v_encoder = SequenceEncoder(enc_in, c.rnn_dim, c.rnn_type, "bidirectional")  # e
        self.v_posterior = GaussianHead(self.v_encoder.out_dim, c.transition_dim, self.v_dim)  # q(v | e)
        self.z_encoder = SequenceEncoder(enc_in + self.v_dim, c.rnn_dim, c.rnn_type, "bidirectional")  # g_t
        self.z_posterior = GaussianHead(self.z_encoder.out_dim, c.transition_dim, c.z_dim)  # q(z_t | g_t)

    # --- the contract: the dynamics, stated once -------------------------------------------------------
    def code_prior(self, n: int):
        """p(v) = N(0, I): batch (n,), event (v_dim,)."""
        loc = torch.zeros(n, self.v_dim, **self.tensor_kind)  # (n, v_dim)
        return dist.Normal(loc, torch.ones_like(loc)).to_event(1)

    def _prior_dist(self, rec, c):
        h = Recurrence.output(rec)  # (n, rnn_dim)
        loc, scale = self.prior(h if c is None else torch.cat([h, c], -1))
        return dist.Normal(loc, scale).to_event(1)

    def start(self, v, c=None):
        """The state before step 0 given the code v (n, v_dim) and c (n, c_dim) or None, and p(z_0 | h_0, c)."""
        rec = self.recurrence.initial(v.shape[0])
        return {"v": v, "c": c, "rec": rec}, self._prior_dist(rec, c)

    def initial_state(self, n: int, c=None):
        """v ~ N(0, I) drawn here; h_0 learned; p(z_0 | h_0, c)."""
        return self.start(self.code_prior(n).sample(), c)

    def transition_step(self, state: State, x, u=None, obs_mask=None):
        """h_t = f(h_{t-1}, [z_{t-1}, u_{t-1}]); p(z_t | h_t, c). x_{t-1} is not read; v and c carry over."""
        inp = state["z"] if u is None else torch.cat([state["z"], u], -1)  # (n, z_dim + u_dim)
        rec = self.recurrence(inp, state["rec"])
        return {"v": state["v"], "c": state["c"], "rec": rec}, self._prior_dist(rec, state["c"])

    def emission(self, state: State, obs_mask=None):
        """p(x_t | z_t, v, c)."""
        parts = [state["z"], state["v"]] + ([] if state["c"] is None else [state["c"]])
        return observation_dist(self.emitter(torch.cat(parts, -1)), self.config.likelihood, obs_mask)

    # --- the guide: q(v | x, u, c) q(z | x, u, v, c) --------------------------------------------------------
    def code_params(self, batch: SequenceBatch):
        """loc, scale (B, v_dim) of q(v | x, u, c)."""
        y = append_condition(self.encoder_input(batch), self.condition(batch))  # (B, T, enc_in)
        return self.v_posterior(self.v_encoder.final(y, batch.lengths))

    def code_posterior(self, batch: SequenceBatch):
        """q(v | x, u, c) of the sequence code ``"v"``: :meth:`code_params`."""
        return self.code_params(batch)

    def dynamic_params(self, batch: SequenceBatch, v):
        """loc, scale (B, T, z_dim) of q(z_t | x, u, v, c), given the code v (B, v_dim)."""
        y = append_condition(self.encoder_input(batch), self.condition(batch))  # (B, T, enc_in)
        y = torch.cat([y, v[:, None].expand(y.shape[0], y.shape[1], v.shape[-1])], -1)  # (B, T, enc_in + v_dim)
        return self.z_posterior(self.z_encoder(y, batch.lengths))

    def guide(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """q(v, z | x, u, c): the site ``v``, then one site per step. Returns the z path (B, T, z_dim)."""
        pyro.module(self.name, self)
        loc_v, scale_v = self.code_params(batch)
        zs = []
        with pyro.plate("sequences", batch.batch_size, dim=-1):
            with poutine.scale(scale=annealing_factor):
                v = pyro.sample("v", dist.Normal(loc_v, scale_v).to_event(1))  # (B, v_dim)
            loc, scale = self.dynamic_params(batch, v)  # (B, T, z_dim) each
            loc_t, scale_t = loc.unbind(1), scale.unbind(1)  # T tensors (B, z_dim): unbind, not loc[:, t]
            for t in pyro.markov(range(batch.num_steps)):
                q = dist.Normal(loc_t[t], scale_t[t]).to_event(1)
                with poutine.scale(scale=annealing_factor):
                    zs.append(pyro.sample(f"z_{t}", q.mask(batch.mask[:, t])))  # (B, z_dim)
        return torch.stack(zs, 1)

    def _z_path(self, batch: SequenceBatch, v) -> GuidePath:
        """q(z | x, u, v, c) drawn along the path: the normals the per-step guide draws, a (B, z_dim) block a step."""
        loc, scale = self.dynamic_params(batch, v)
        eps = torch.stack([torch.empty_like(loc[:, t]).normal_() for t in range(batch.num_steps)], 1)
        return GuidePath(loc, scale, loc + eps * scale, batch.mask)  # path (B, T, z_dim)

    def guide_vectorized(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """q(v, z | x, u, c): the site ``v``, then the z path as one site. Returns the path (B, T, z_dim)."""
        pyro.module(self.name, self)
        loc_v, scale_v = self.code_params(batch)
        with pyro.plate("sequences", batch.batch_size, dim=-1):
            with poutine.scale(scale=annealing_factor):
                v = pyro.sample("v", dist.Normal(loc_v, scale_v).to_event(1))  # (B, v_dim)
                return pyro.sample("z", self._z_path(batch, v))

    # --- the model ---------------------------------------------------------------------------------------
    def program_start(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """The per-step model's start: the site ``v`` (B, v_dim), then the contract's state from it; the
        steps are the base class's ``model``, p(x, v, z | u, c)."""
        with poutine.scale(scale=annealing_factor):
            v = pyro.sample("v", self.code_prior(batch.batch_size))  # (B, v_dim)
        return self.start(v, self.condition(batch))

    def model_vectorized(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """p(x, v, z | u, c) with the z path and the observations as one site each. Returns the path."""
        pyro.module(self.name, self)
        with pyro.plate("sequences", batch.batch_size, dim=-1):
            with poutine.scale(scale=annealing_factor):
                v = pyro.sample("v", self.code_prior(batch.batch_size))  # (B, v_dim)
                z = pyro.sample("z", self.prior_path(batch))  # (B, T, z_dim)
            pyro.sample("x", observation_path(self._emission_path(batch, z, v), batch.mask), obs=batch.x)
        return z

    # --- the same densities along a whole path ------------------------------------------------------------
    def prior_path(self, batch: SequenceBatch) -> PriorPath:
        """p(z_t | h_t, c) of every step at a given path: h one multi-step RNN call over [z_{t-1}, u_{t-1}]."""
        B, T = batch.batch_size, batch.num_steps
        c = self.condition(batch)

        def params(z):
            rec = self.recurrence.initial(B)
            h = Recurrence.output(rec)[:, None]  # (B, 1, rnn_dim): h_0
            if T > 1:
                inp = z[:, :-1] if batch.u is None else torch.cat([z[:, :-1], batch.u[:, :-1]], -1)  # (B, T-1, .)
                h = torch.cat([h, self.recurrence.scan(inp, rec)], 1)  # (B, T, rnn_dim)
            return self.prior(append_condition(h, c))

        return PriorPath(params, (B, T, self.config.z_dim), batch.mask)

    def _emission_path(self, batch: SequenceBatch, z, v):
        """p(x_t | z_t, v, c) of every step along the path z (B, T, z_dim) with the code v (B, v_dim): batch (B, T)."""
        features = torch.cat([z, v[:, None].expand(z.shape[0], z.shape[1], v.shape[-1])], -1)
        features = append_condition(features, self.condition(batch))  # (B, T, z_dim + v_dim + c_dim)
        return observation_dist(self.emitter(features), self.config.likelihood, batch.obs_mask)

    def posterior_path(self, batch: SequenceBatch) -> CodedPath:
        """v ~ q(v | x, u, c), then the z path from q(z | x, u, v, c), as :meth:`guide_vectorized` draws them;
        the path carries its v (for :meth:`emission_path` and the joint KL)."""
        loc_v, scale_v = self.code_params(batch)
        q_v = dist.Normal(loc_v, scale_v).to_event(1)
        v = q_v.rsample()  # (B, v_dim)
        path = CodedPath(self._z_path(batch, v), q_v, v)
        _GUIDE_V[path.path] = (self, v)
        return path

    def emission_path(self, batch: SequenceBatch, z):
        """p(x_t | z_t, v, c) of every step along a path drawn by :meth:`posterior_path` (the code v is the
        one drawn with it): batch (B, T)."""
        hit = _GUIDE_V.get(z)
        if hit is None or hit[0] is not self:
            raise ValueError("the DSAE's emission needs the sequence code v as well as z: pass a path drawn by "
                             "posterior_path (or use the Pyro programs, which draw v as their site 'v')")
        return self._emission_path(batch, z, hit[1])

    # --- states and samples over the contract --------------------------------------------------------------
    def _posterior_draw(self, batch: SequenceBatch):
        """One draw (v (B, v_dim), z (B, T, z_dim)) from the guide."""
        trace = poutine.trace(self.guide).get_trace(batch)
        return trace.nodes["v"]["value"], trace.nodes["_RETURN"]["value"]

    @torch.no_grad()
    def posterior_last(self, batch: SequenceBatch):
        """The state at each sequence's last real step, (v, z) drawn from the guide given the batch (the
        prior's recurrence rebuilt along z by the contract), and that step's observation."""
        batch = self.check_batch(batch)
        v, z = self._posterior_draw(batch)
        state, _ = self.start(v, self.condition(batch))
        return self.state_along(batch, state, z)

    @torch.no_grad()
    def encode(self, batch: SequenceBatch, num_samples: int = 1):
        """Posterior samples: ``{"z": (S, B, T, z_dim), "v": (S, B, v_dim)}``."""
        batch = self.check_batch(batch)
        v, z = self._posterior_draw(repeat_batch(batch, num_samples))  # (S * B, ...)
        B = batch.batch_size
        return {"z": z.reshape((num_samples, B) + z.shape[1:]), "v": v.reshape(num_samples, B, -1)}
